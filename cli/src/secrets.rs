//! Secret references (`env://VAR`, `file://PATH`) and the stored auth token.

use std::path::PathBuf;

use anyhow::{bail, Context};

/// Resolves `env://VAR`, `file://PATH` or a literal value.
pub fn resolve(value: &str, what: &str) -> anyhow::Result<String> {
    if let Some(var) = value.strip_prefix("env://") {
        return std::env::var(var).with_context(|| {
            format!("{what} refers to environment variable {var}, which is not set (or not UTF-8)")
        });
    }
    if let Some(path) = value.strip_prefix("file://") {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("{what} refers to file {path}, which could not be read"))?;
        return Ok(s.trim_end_matches(['\r', '\n']).to_owned());
    }
    Ok(value.to_owned())
}

/// [`resolve`] for a secret a server reads from its configuration: a `file://` reference must
/// be owner-only, as the server's own secret files are.
pub fn resolve_private(value: &str, what: &'static str) -> anyhow::Result<String> {
    if let Some(path) = value.strip_prefix("file://") {
        sluice_controlplane::private::check_file(std::path::Path::new(path), what)?;
    }
    resolve(value, what)
}

/// Resolves a secret flag, or asks for it on the terminal (hidden) when it was not given.
pub fn secret_or_prompt(value: Option<&str>, flag: &str, prompt: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    match value {
        Some(v) => resolve(v, flag),
        None => {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "no {flag} given and standard input is not a terminal to prompt on: pass {flag} env://VAR or {flag} file://PATH"
                );
            }
            rpassword::prompt_password(prompt).with_context(|| format!("while reading {flag}"))
        }
    }
}

fn token_path() -> anyhow::Result<PathBuf> {
    let dir = dirs::config_dir()
        .context("cannot find a config directory to keep the token in; set HOME or pass -token")?;
    Ok(dir.join("sluice").join("token"))
}

/// Stores the auth token in a file readable only by the user.
pub fn store_token(token: &str) -> anyhow::Result<PathBuf> {
    let path = token_path()?;
    let dir = path.parent().expect("token path has a parent");
    sluice_controlplane::private::write_atomic(
        dir,
        "the directory of the stored token",
        "token",
        token.as_bytes(),
        "the stored token",
    )?;
    Ok(path)
}

/// The token to use: `-token`/`SLUICE_TOKEN` if given, else the stored one.
pub fn token(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = flag {
        return resolve(t, "-token");
    }
    let path = token_path()?;
    sluice_controlplane::private::check_file(&path, "the stored token")?;
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "not authenticated: run `sluice authenticate password -login-name NAME` first, or pass -token"
        ),
        Err(e) => Err(e).with_context(|| format!("while reading the stored token {}", path.display())),
    }
}

/// Removes the stored auth token, if any.
pub fn forget_token() -> anyhow::Result<()> {
    let path = token_path()?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("while removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
