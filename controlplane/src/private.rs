//! Owner-only directories and files, for everything that holds a secret: the store (signing
//! and CA keys), a worker's identity and kept keys, the CLI's auth token.
//!
//! Sluice creates them 0700 / 0600 whatever the umask, and refuses to start on one that group
//! or others can read or write: anyone who reads the store can forge authorization tokens the
//! workers admit, and anyone who writes the directory can swap the files.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Bits that must be clear on a private directory or file.
const GROUP_OR_OTHER: u32 = 0o077;

/// Why a private path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// Group or others have access.
    #[error(
        "{what} {path} is open to other users (mode {mode:04o}) and holds secrets; \
         run `chmod {want:o} {path}` (and check who read it), then start again"
    )]
    Exposed {
        what: &'static str,
        path: String,
        mode: u32,
        want: u32,
    },
    /// A path that must be a directory is not one.
    #[error("{what} {path} is not a directory")]
    NotADirectory { what: &'static str, path: String },
    /// The file system refused.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PrivateError + 'a {
    move |source| PrivateError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Refuses `mode` when group or others have any access to it.
fn check_mode(what: &'static str, path: &Path, mode: u32, want: u32) -> Result<(), PrivateError> {
    if mode & GROUP_OR_OTHER != 0 {
        return Err(PrivateError::Exposed {
            what,
            path: path.display().to_string(),
            mode: mode & 0o7777,
            want,
        });
    }
    Ok(())
}

/// Creates `dir` (and missing parents) owner-only, or checks that an existing one is.
/// Parents that already exist are left as they are; a new parent is also made 0700.
pub fn ensure_dir(dir: &Path, what: &'static str) -> Result<(), PrivateError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(PrivateError::NotADirectory {
            what,
            path: dir.display().to_string(),
        }),
        Ok(m) => check_mode(what, dir, m.mode(), 0o700),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(what, dir)),
        Err(e) => Err(io_err(what, dir)(e)),
    }
}

/// Checks that `file`, if it exists, is owner-only. Returns whether it exists.
pub fn check_file(file: &Path, what: &'static str) -> Result<bool, PrivateError> {
    match std::fs::metadata(file) {
        Ok(m) => check_mode(what, file, m.mode(), 0o600).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(what, file)(e)),
    }
}

/// Opens a new file for writing, owner-only from its first byte (`O_EXCL`; the mode is set
/// again in case the umask took bits the creation asked for, which only narrows it).
pub fn create_new(file: &Path, what: &'static str) -> Result<std::fs::File, PrivateError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(io_err(what, file))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(what, file))?;
    Ok(f)
}

/// Writes `bytes` to `dir/name` atomically (a 0600 temporary file, fsync, rename), creating
/// `dir` owner-only if it is missing; `dir_what` and `what` name them in errors.
pub fn write_atomic(
    dir: &Path,
    dir_what: &'static str,
    name: &str,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), PrivateError> {
    use std::io::Write;
    ensure_dir(dir, dir_what)?;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = create_new(&tmp, what)?;
    f.write_all(bytes).map_err(io_err(what, &tmp))?;
    f.sync_all().map_err(io_err(what, &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(what, &path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn new_directories_and_files_are_owner_only_and_open_ones_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        ensure_dir(&dir, "the data directory").unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        write_atomic(&dir, "the data directory", "k", b"secret", "the key file").unwrap();
        assert_eq!(mode(&dir.join("k")), 0o600);
        assert!(check_file(&dir.join("k"), "the key file").unwrap());
        assert!(!check_file(&dir.join("absent"), "the key file").unwrap());

        std::fs::set_permissions(dir.join("k"), std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_file(&dir.join("k"), "the key file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_dir(&dir, "the data directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mode 0755") && e.contains("chmod 700"), "{e}");
        let e = ensure_dir(&dir.join("k"), "the data directory")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
