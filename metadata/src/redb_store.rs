//! The embedded backend: one redb file, one table of byte keys and byte values.
//!
//! Namespace changes commit with redb's non-durable commits (visible at once, crash-consistent)
//! and [`KvStore::persist`] makes them durable with one fsync; callers that need durability
//! (fsync, the end of an upload) ask for [`Durability::Durable`].

use crate::{Durability, Entries, KvRead, KvStore, KvTxn, MetaError, Result, UpdateFn, ViewFn};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("spoolfs");

pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

fn io<E: std::fmt::Display>(e: E) -> MetaError {
    MetaError::Io(e.to_string())
}

impl RedbStore {
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            return Err(MetaError::Io(format!(
                "directory {} does not exist",
                parent.display()
            )));
        }
        let db = match redb::Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(MetaError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => {
                return Err(MetaError::Corrupt(format!("{}: {m}", path.display())));
            }
            Err(e) => return Err(MetaError::Io(format!("{}: {e}", path.display()))),
        };
        // Make sure the table exists so read transactions never see "no such table".
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(TABLE).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
        })
    }
}

struct ReadTable<T>(T);

/// A table in a write transaction: reads go through [`ReadTable`]'s implementation.
type WriteTable<'t> = ReadTable<redb::Table<'t, &'static [u8], &'static [u8]>>;

/// Reads shared by read-only and write transactions (a write transaction's table is readable
/// too, and sees the transaction's own writes).
fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    Ok(table.get(key).map_err(io)?.map(|v| v.value().to_vec()))
}

fn scan_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: &[u8],
    end: &[u8],
    limit: usize,
    backwards: bool,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if start >= end {
        return Ok(Vec::new());
    }
    let range = table.range(start..end).map_err(io)?;
    let items: Box<dyn Iterator<Item = _>> = if backwards {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    let mut out = Vec::new();
    for item in items.take(limit) {
        let (k, v) = item.map_err(io)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> KvRead for ReadTable<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        get_in(&self.0, key)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        scan_in(&self.0, start, end, limit, false)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        scan_in(&self.0, start, end, limit, true)
    }
}

impl KvTxn for WriteTable<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.0.insert(key, value).map_err(io)?;
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key).map_err(io)?;
        Ok(())
    }
}

impl KvStore for RedbStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(TABLE).map_err(io)?;
        f(&ReadTable(table))
    }

    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(match durability {
            Durability::Visible => redb::Durability::None,
            Durability::Durable => redb::Durability::Immediate,
        })
        .map_err(io)?;
        {
            let mut table: WriteTable = ReadTable(txn.open_table(TABLE).map_err(io)?);
            if let Err(e) = f(&mut table) {
                drop(table);
                txn.abort().map_err(io)?;
                return Err(e);
            }
        }
        txn.commit().map_err(io)?;
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        // An empty durable commit flushes every earlier non-durable one.
        let txn = self.db.begin_write().map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("redb://{}", self.path.display())
    }
}
