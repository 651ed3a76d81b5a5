//! The writes a transaction keeps to itself until it commits.

use crate::{KvRead, KvTxn, Result};
use std::collections::BTreeMap;

/// Each key's buffered change: its new value, or `None` for a delete.
pub(crate) type WriteSet = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A transaction that keeps its writes in a [`WriteSet`] until it commits: its puts and
/// deletes only record them there.
pub(crate) trait BuffersWrites: KvRead {
    fn write_set(&mut self) -> &mut WriteSet;
}

impl<T: BuffersWrites> KvTxn for T {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write_set().insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.write_set().insert(key.to_vec(), None);
        Ok(())
    }
}
