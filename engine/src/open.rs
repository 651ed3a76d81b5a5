//! Open files: the table of open and pinned inodes (each with its [`FileState`], shared by
//! the write path, which fills it, and the read path, which reads through it) and the table
//! of file handles. An inode whose last name goes while it is open stays here until its last
//! close, which deletes it.

use crate::types::Ino;
use crate::write::FileState;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shards of the inode table: writers of different files never meet on one lock.
pub(crate) const OPEN_SHARDS: usize = 64;

struct OpenInode {
    /// Handles and temporary users of this entry; it leaves the table at zero.
    pins: u64,
    /// Open handles only (an inode with nlink 0 is deleted when this reaches zero).
    handles: u64,
    /// Its last name went while handles were open: the last close deletes it.
    unlinked: bool,
    state: Arc<RwLock<FileState>>,
}

struct Handle {
    ino: Ino,
    /// Opened for writing (such a file is never served by passthrough).
    writing: bool,
    /// Where its reader is, for readahead.
    stream: crate::readahead::Stream,
}

pub(crate) struct OpenFiles {
    /// Open and pinned inodes, sharded by inode number.
    inodes: Vec<Mutex<HashMap<Ino, OpenInode>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
}

impl Default for OpenFiles {
    fn default() -> Self {
        OpenFiles {
            inodes: (0..OPEN_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl OpenFiles {
    fn shard(&self, ino: Ino) -> &Mutex<HashMap<Ino, OpenInode>> {
        &self.inodes[(ino as usize) % OPEN_SHARDS]
    }

    /// Keeps `ino` in the table (as an open handle if `handle`) and returns its state.
    pub(crate) fn pin(&self, ino: Ino, handle: bool) -> Arc<RwLock<FileState>> {
        let mut open = self.shard(ino).lock();
        let entry = open.entry(ino).or_insert_with(|| OpenInode {
            pins: 0,
            handles: 0,
            unlinked: false,
            state: Arc::new(RwLock::new(FileState::default())),
        });
        entry.pins += 1;
        if handle {
            entry.handles += 1;
        }
        entry.state.clone()
    }

    /// Drops a pin; returns true if it was the last open handle of an inode whose last name
    /// went while it was open (see [`Self::keep_unlinked`]): the caller deletes it.
    pub(crate) fn unpin(&self, ino: Ino, handle: bool) -> bool {
        let mut open = self.shard(ino).lock();
        let Some(entry) = open.get_mut(&ino) else {
            return false;
        };
        entry.pins -= 1;
        let mut last_handle = false;
        if handle {
            entry.handles -= 1;
            last_handle = entry.handles == 0 && entry.unlinked;
        }
        if entry.pins == 0 {
            open.remove(&ino);
        }
        last_handle
    }

    /// Whether `ino`, losing its last name, has open handles; if so its last close will
    /// delete it. Checked and marked under the table's lock, so that a close either comes
    /// before (and the caller deletes the inode now) or sees the mark.
    pub(crate) fn keep_unlinked(&self, ino: Ino) -> bool {
        let mut open = self.shard(ino).lock();
        match open.get_mut(&ino) {
            Some(o) if o.handles > 0 => {
                o.unlinked = true;
                true
            }
            _ => false,
        }
    }

    /// Whether `ino` has open handles here.
    pub(crate) fn has_handles(&self, ino: Ino) -> bool {
        self.shard(ino)
            .lock()
            .get(&ino)
            .is_some_and(|o| o.handles > 0)
    }

    /// The state of `ino` if it is in the table.
    pub(crate) fn state_of(&self, ino: Ino) -> Option<Arc<RwLock<FileState>>> {
        self.shard(ino).lock().get(&ino).map(|o| o.state.clone())
    }

    /// Every inode in the table now.
    pub(crate) fn inodes(&self) -> Vec<Ino> {
        self.inodes
            .iter()
            .flat_map(|s| s.lock().keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// A new handle number (file and directory handles share the numbering).
    pub(crate) fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a new file handle of `ino`.
    pub(crate) fn new_handle(&self, ino: Ino, writing: bool) -> u64 {
        let fh = self.next_fh();
        self.handles.lock().insert(
            fh,
            Handle {
                ino,
                writing,
                stream: Default::default(),
            },
        );
        fh
    }

    /// Whether handle `fh` was opened for writing.
    pub(crate) fn is_writing(&self, fh: u64) -> bool {
        self.handles.lock().get(&fh).is_some_and(|h| h.writing)
    }

    /// Whether any handle has `ino` open for writing.
    pub(crate) fn has_writer(&self, ino: Ino) -> bool {
        self.handles
            .lock()
            .values()
            .any(|h| h.ino == ino && h.writing)
    }

    /// Forgets handle `fh`; false if it is not a handle of `ino`.
    pub(crate) fn remove_handle(&self, ino: Ino, fh: u64) -> bool {
        let known = self.handles.lock().remove(&fh);
        known.is_some_and(|h| h.ino == ino)
    }

    /// A read of `len` bytes at `offset` through handle `fh`: whether it continues a
    /// sequential stream (see [`crate::readahead::Stream::advance`]).
    pub(crate) fn advance_stream(&self, fh: u64, offset: u64, len: u64) -> bool {
        self.handles
            .lock()
            .get_mut(&fh)
            .is_some_and(|h| h.stream.advance(offset, len))
    }

    /// Open file handles.
    pub(crate) fn handle_count(&self) -> usize {
        self.handles.lock().len()
    }
}
