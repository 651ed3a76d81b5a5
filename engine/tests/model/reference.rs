//! The reference model: an in-memory file system with Linux semantics (sparse contents,
//! inodes with links, the checks of rename).

use super::*;

pub(crate) const PAGE: u64 = 4096;

/// Sparse file contents: 4 KiB pages, absent pages are zeros; bytes past `size` are zero.
#[derive(Default)]
pub(crate) struct Content {
    pub(crate) size: u64,
    pub(crate) pages: BTreeMap<u64, Vec<u8>>,
}

impl Content {
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = off;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / PAGE;
            let in_page = (pos % PAGE) as usize;
            let n = rest.len().min(PAGE as usize - in_page);
            let page = self
                .pages
                .entry(idx)
                .or_insert_with(|| vec![0; PAGE as usize]);
            page[in_page..in_page + n].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
        self.size = self.size.max(off + data.len() as u64);
    }

    pub(crate) fn read(&self, off: u64, len: u64) -> Vec<u8> {
        if off >= self.size || len == 0 {
            return Vec::new();
        }
        let end = (off + len).min(self.size);
        let mut out = vec![0u8; (end - off) as usize];
        for (&idx, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let start = idx * PAGE;
            let s = start.max(off);
            let e = (start + PAGE).min(end);
            out[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&page[(s - start) as usize..(e - start) as usize]);
        }
        out
    }

    pub(crate) fn set_size(&mut self, new: u64) {
        if new < self.size {
            drop(self.pages.split_off(&new.div_ceil(PAGE)));
            if !new.is_multiple_of(PAGE)
                && let Some(page) = self.pages.get_mut(&(new / PAGE))
            {
                page[(new % PAGE) as usize..].fill(0);
            }
        }
        self.size = new;
    }

    /// Zeroes `[off, off+len)` within the size.
    pub(crate) fn zero(&mut self, off: u64, len: u64) {
        let end = (off + len).min(self.size);
        if off >= end {
            return;
        }
        for (&idx, page) in self.pages.range_mut(off / PAGE..=(end - 1) / PAGE) {
            let start = idx * PAGE;
            let s = start.max(off);
            let e = (start + PAGE).min(end);
            page[(s - start) as usize..(e - start) as usize].fill(0);
        }
    }
}

pub(crate) type MId = usize;
pub(crate) const MROOT: MId = 0;

pub(crate) struct MNode {
    pub(crate) kind: FileKind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Directory entries naming this node (non-directories).
    pub(crate) links: u32,
    pub(crate) data: Content,
    pub(crate) target: Vec<u8>,
    pub(crate) entries: BTreeMap<Vec<u8>, MId>,
    /// Parent of a directory.
    pub(crate) parent: MId,
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Open handles.
    pub(crate) open: u32,
}

impl MNode {
    pub(crate) fn new(kind: FileKind, perm: u16) -> MNode {
        MNode {
            kind,
            perm,
            uid: 0,
            gid: 0,
            links: 1,
            data: Content::default(),
            target: Vec::new(),
            entries: BTreeMap::new(),
            parent: MROOT,
            xattrs: BTreeMap::new(),
            open: 0,
        }
    }
}

pub(crate) struct Model {
    pub(crate) nodes: HashMap<MId, MNode>,
    pub(crate) next: MId,
}

impl Model {
    /// Every node reachable from the root with its path, in path order (the root first).
    pub(crate) fn paths(&self) -> Vec<(Vec<Name>, MId)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), MROOT)];
        while let Some((path, id)) = stack.pop() {
            for (name, &child) in self.node(id).entries.iter().rev() {
                let mut p = path.clone();
                p.push(name_of(name));
                stack.push((p, child));
            }
            out.push((path, id));
        }
        out
    }

    pub(crate) fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(MROOT, MNode::new(FileKind::Dir, 0o755));
        Model { nodes, next: 1 }
    }

    pub(crate) fn node(&self, id: MId) -> &MNode {
        &self.nodes[&id]
    }

    pub(crate) fn node_mut(&mut self, id: MId) -> &mut MNode {
        self.nodes.get_mut(&id).expect("live model node")
    }

    pub(crate) fn kind(&self, id: MId) -> FileKind {
        self.node(id).kind
    }

    pub(crate) fn child(&self, dir: MId, name: &[u8]) -> Option<MId> {
        self.node(dir).entries.get(name).copied()
    }

    pub(crate) fn nlink(&self, id: MId) -> u32 {
        let n = self.node(id);
        if n.kind == FileKind::Dir {
            2 + n
                .entries
                .values()
                .filter(|c| self.kind(**c) == FileKind::Dir)
                .count() as u32
        } else {
            n.links
        }
    }

    /// The node a path names (symlinks are not followed: the harness only walks directories).
    pub(crate) fn resolve(&self, path: &[Vec<u8>]) -> Result<MId, i32> {
        let mut cur = MROOT;
        for name in path {
            if self.kind(cur) != FileKind::Dir {
                return Err(libc::ENOTDIR);
            }
            if name.len() > NAME_MAX {
                return Err(libc::ENAMETOOLONG);
            }
            cur = self.child(cur, name).ok_or(libc::ENOENT)?;
        }
        Ok(cur)
    }

    /// The directory holding the last component of `path`, and that component.
    pub(crate) fn resolve_parent(&self, path: &[Vec<u8>]) -> Option<(MId, Vec<u8>)> {
        let (last, prefix) = path.split_last()?;
        let dir = self.resolve(prefix).ok()?;
        (self.kind(dir) == FileKind::Dir).then(|| (dir, last.clone()))
    }

    /// Whether `a` is `b` or one of its ancestors.
    pub(crate) fn is_ancestor(&self, a: MId, b: MId) -> bool {
        if self.kind(b) != FileKind::Dir {
            return false;
        }
        let mut cur = b;
        loop {
            if cur == a {
                return true;
            }
            if cur == MROOT {
                return false;
            }
            cur = self.node(cur).parent;
        }
    }

    pub(crate) fn add(&mut self, dir: MId, name: &[u8], mut node: MNode) -> MId {
        let id = self.next;
        self.next += 1;
        node.parent = dir;
        self.nodes.insert(id, node);
        self.node_mut(dir).entries.insert(name.to_vec(), id);
        id
    }

    /// Removes the entry and drops its node if nothing references it any more.
    pub(crate) fn remove_entry(&mut self, dir: MId, name: &[u8]) {
        let id = self
            .node_mut(dir)
            .entries
            .remove(name)
            .expect("entry exists");
        if self.kind(id) == FileKind::Dir {
            assert!(self.node(id).entries.is_empty());
            self.nodes.remove(&id);
        } else {
            self.node_mut(id).links -= 1;
            self.maybe_free(id);
        }
    }

    pub(crate) fn maybe_free(&mut self, id: MId) {
        let n = self.node(id);
        if n.kind != FileKind::Dir && n.links == 0 && n.open == 0 {
            self.nodes.remove(&id);
        }
    }

    /// Linux's answer to renameat2 (after the parents resolved).
    pub(crate) fn rename_check(
        &self,
        sp: MId,
        sn: &[u8],
        dp: MId,
        dn: &[u8],
        flag: RFlag,
    ) -> Result<(), i32> {
        let src = self.child(sp, sn).ok_or(if dn.len() > NAME_MAX {
            ENOENT_OR_ENAMETOOLONG
        } else {
            libc::ENOENT
        })?;
        if dn.len() > NAME_MAX {
            return Err(libc::ENAMETOOLONG);
        }
        let dst = self.child(dp, dn);
        if flag == RFlag::NoReplace && dst.is_some() {
            return Err(libc::EEXIST);
        }
        if flag == RFlag::Exchange && dst.is_none() {
            return Err(libc::ENOENT);
        }
        // The source may not be an ancestor of the target (EINVAL), the target may not be an
        // ancestor of the source (ENOTEMPTY, or EINVAL for an exchange).
        if self.kind(src) == FileKind::Dir && self.is_ancestor(src, dp) {
            return Err(if flag == RFlag::Exchange {
                libc::EINVAL
            } else {
                ANY_TRAP
            });
        }
        if let Some(d) = dst
            && d != src
            && self.kind(d) == FileKind::Dir
            && self.is_ancestor(d, sp)
        {
            return Err(if flag == RFlag::Exchange {
                libc::EINVAL
            } else {
                ANY_TRAP
            });
        }
        let Some(d) = dst else { return Ok(()) };
        if d == src {
            return Ok(());
        }
        if flag != RFlag::Exchange {
            let sdir = self.kind(src) == FileKind::Dir;
            let ddir = self.kind(d) == FileKind::Dir;
            if sdir && !ddir {
                return Err(libc::ENOTDIR);
            }
            if !sdir && ddir {
                return Err(libc::EISDIR);
            }
            if ddir && !self.node(d).entries.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
        }
        Ok(())
    }

    pub(crate) fn rename_apply(&mut self, sp: MId, sn: &[u8], dp: MId, dn: &[u8], flag: RFlag) {
        let src = self.child(sp, sn).expect("source");
        let dst = self.child(dp, dn);
        if dst == Some(src) {
            return;
        }
        if flag == RFlag::Exchange {
            let d = dst.expect("exchange target");
            self.node_mut(sp).entries.insert(sn.to_vec(), d);
            self.node_mut(dp).entries.insert(dn.to_vec(), src);
            self.node_mut(d).parent = sp;
            self.node_mut(src).parent = dp;
            return;
        }
        if dst.is_some() {
            self.remove_entry(dp, dn);
        }
        self.node_mut(sp).entries.remove(sn);
        self.node_mut(dp).entries.insert(dn.to_vec(), src);
        self.node_mut(src).parent = dp;
    }
}
