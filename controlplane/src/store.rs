//! Durable storage behind a small trait, so a PostgreSQL backend can replace redb later.
//!
//! The controller keeps its working set in memory and writes every change through
//! [`Store::commit`]; a change is acknowledged only after its transaction is durable. The redb
//! implementation coalesces concurrent commits into one transaction (group commit): one
//! fsync'd commit per record manages ~2,000/s here, while thousands of records share one
//! commit for about the cost of one.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

/// The tables the controller keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Sessions by id, without their connections.
    Sessions,
    /// A session's connections, each by `session id/index` (index zero-padded, so a session's
    /// connections load in the order they opened). A connection's event writes only its own
    /// record, not the session with every connection it ever had.
    Connections,
    /// Auth tokens by id.
    AuthTokens,
    /// Configuration resources (scopes, users, accounts, hosts, targets…) by id.
    Resources,
    /// Controller keys and certificates by name.
    Meta,
}

impl Table {
    const ALL: [Table; 5] = [
        Table::Sessions,
        Table::Connections,
        Table::AuthTokens,
        Table::Resources,
        Table::Meta,
    ];

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Sessions => "sessions",
            Table::Connections => "connections",
            Table::AuthTokens => "auth_tokens",
            Table::Resources => "resources",
            Table::Meta => "meta",
        })
    }
}

/// One write of a commit.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace.
    Put(Table, String, Vec<u8>),
    /// Delete if present.
    Delete(Table, String),
}

/// A storage failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened.
    #[error("could not open the database at {path}: {source}")]
    Open {
        /// Its path.
        path: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file exists but is empty: not a store, and opening it would start afresh.
    #[error(
        "the store {path} is empty (0 bytes): it is not a Sluice store, and starting on it would \
         replace the signing keys, the cluster CA and every resource; restore it from a backup, \
         or remove it to start with nothing"
    )]
    Empty {
        /// Its path.
        path: String,
    },
    /// The file is open to other users, or cannot be checked.
    #[error(transparent)]
    Exposed(#[from] crate::private::PrivateError),
    /// A read or write failed.
    #[error("database {0}")]
    Io(String),
    /// The store has shut down.
    #[error("the store is closed")]
    Closed,
}

/// Called once a commit is durable, or failed.
pub type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Durable key-value storage of JSON records.
pub trait Store: Send + Sync {
    /// Every record of `table`.
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies `writes` atomically and durably, then calls `done`. Commits are applied in the
    /// order this is called.
    fn commit(&self, writes: Vec<Write>, done: Done);
}

/// [`Store`] on a redb file, with a writer thread that groups concurrent commits.
pub struct RedbStore {
    db: std::sync::Arc<Database>,
    tx: Option<mpsc::Sender<(Vec<Write>, Done)>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Most commits one transaction takes; bounds the latency a commit adds to those behind it.
const MAX_GROUP: usize = 4096;

impl RedbStore {
    /// Opens the database file at `path`, or creates it (0600) when it is absent. An existing
    /// file must be owner-only and not empty: a truncated store is refused, never re-initialised.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: redb::DatabaseError| StoreError::Open {
            path: path.display().to_string(),
            source: Box::new(e),
        };
        let db = if crate::private::check_file(path, "the store")? {
            let len = std::fs::metadata(path).map_err(io)?.len();
            if len == 0 {
                return Err(StoreError::Empty {
                    path: path.display().to_string(),
                });
            }
            let db = Database::open(path).map_err(open_err)?;
            // A store written before a table existed gets it now.
            create_tables(&db)?;
            db
        } else {
            // Built under another name and renamed once its tables exist, so a crash part-way
            // leaves no file rather than an empty one (which the next start would refuse).
            let fresh = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&fresh);
            let file = crate::private::create_new(&fresh, "the store")?;
            let backend = redb::backends::FileBackend::new(file).map_err(open_err)?;
            let db = Database::builder()
                .create_with_backend(backend)
                .map_err(open_err)?;
            create_tables(&db)?;
            std::fs::rename(&fresh, path).map_err(io)?;
            db
        };
        let db = std::sync::Arc::new(db);
        let (tx, rx) = mpsc::channel::<(Vec<Write>, Done)>();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || writer_loop(&writer_db, &rx))
            .map_err(io)?;
        Ok(Self {
            db,
            tx: Some(tx),
            writer: Some(writer),
        })
    }
}

/// Opens every table once, so reads find them on a new store.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(io)?;
    for t in Table::ALL {
        txn.open_table(t.def()).map_err(io)?;
    }
    txn.commit().map_err(io)
}

fn apply(db: &Database, batch: &[(Vec<Write>, Done)]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(io)?;
    txn.set_durability(Durability::Immediate).map_err(io)?;
    {
        let mut tables = Vec::new();
        for t in Table::ALL {
            tables.push((t, txn.open_table(t.def()).map_err(io)?));
        }
        for (writes, _) in batch {
            for w in writes {
                let (table, key) = match w {
                    Write::Put(t, k, _) | Write::Delete(t, k) => (*t, k),
                };
                let (_, tbl) = tables
                    .iter_mut()
                    .find(|(t, _)| *t == table)
                    .expect("every table is open");
                match w {
                    Write::Put(_, _, v) => {
                        tbl.insert(key.as_str(), v.as_slice()).map_err(io)?;
                    }
                    Write::Delete(..) => {
                        tbl.remove(key.as_str()).map_err(io)?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(io)
}

fn writer_loop(db: &Database, rx: &mpsc::Receiver<(Vec<Write>, Done)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let result = apply(db, &batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, commits = batch.len(), "store commit failed");
        }
        for (_, done) in batch {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Io(e.to_string())),
            });
        }
    }
}

impl Store for RedbStore {
    fn load(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let tbl = txn.open_table(table.def()).map_err(io)?;
        let mut out = Vec::new();
        for row in tbl.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, writes: Vec<Write>, done: Done) {
        match &self.tx {
            Some(tx) => {
                if let Err(mpsc::SendError((_, done))) = tx.send((writes, done)) {
                    done(Err(StoreError::Closed));
                }
            }
            None => done(Err(StoreError::Closed)),
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued, then exit.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn commit_sync(store: &RedbStore, writes: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        store.commit(writes, Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap()
    }

    #[test]
    fn commits_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            commit_sync(
                &store,
                vec![Write::Put(Table::Sessions, "s_1".into(), b"one".to_vec())],
            )
            .unwrap();
            commit_sync(
                &store,
                vec![Write::Put(Table::Sessions, "s_1".into(), b"two".to_vec())],
            )
            .unwrap();
            commit_sync(
                &store,
                vec![Write::Put(Table::Sessions, "s_2".into(), b"x".to_vec())],
            )
            .unwrap();
            commit_sync(&store, vec![Write::Delete(Table::Sessions, "s_2".into())]).unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.load(Table::Sessions).unwrap(),
            vec![("s_1".into(), b"two".to_vec())]
        );
        assert!(store.load(Table::Meta).unwrap().is_empty());
    }

    #[test]
    fn a_new_store_is_owner_only_and_an_empty_or_exposed_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(RedbStore::open(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("s.redb.new").exists());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = RedbStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("open to other users") && e.contains("chmod 600"),
            "{e}"
        );

        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = RedbStore::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("is empty (0 bytes)") && e.contains("backup"),
            "{e}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");
    }

    #[test]
    fn concurrent_commits_are_all_acknowledged_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..50 {
                        let key = format!("s_{t}_{i}");
                        commit_sync(
                            &store,
                            vec![Write::Put(Table::Sessions, key, vec![t as u8])],
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.load(Table::Sessions).unwrap().len(), 400);
    }
}
