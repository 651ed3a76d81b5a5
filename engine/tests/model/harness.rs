//! The harness: runs operations on the engine and the model side by side and compares their
//! outcomes, attributes, listings, contents and xattrs.

use super::*;

/// Engine buffer sizes of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Buffers {
    /// The defaults: 64 MiB of dirty data per file, 64 MiB of block cache.
    Large,
    /// 160 KiB of dirty data per file, 512 KiB of block cache.
    Small,
    /// One block of each.
    Tiny,
    /// Small buffers, writeback mode: slices go to the staging log and the namespace log, one
    /// uploader moves them to the object store while the sequence runs.
    Writeback,
}

pub(crate) struct Handle {
    pub(crate) m: MId,
    pub(crate) ino: Ino,
    pub(crate) fh: u64,
}

pub(crate) struct Harness {
    pub(crate) vol: common::Volume,
    pub(crate) config: EngineConfig,
    pub(crate) writeback: bool,
    pub(crate) engine: Option<Arc<Engine>>,
    pub(crate) m: Model,
    /// Model node -> engine inode.
    pub(crate) map: HashMap<MId, Ino>,
    pub(crate) handles: Vec<Handle>,
    /// The operation being run, with literal paths.
    pub(crate) current: Option<Op>,
}

pub(crate) fn errname(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        libc::E2BIG => "E2BIG",
        ANY_TRAP => "ENOTEMPTY/EINVAL/EISDIR/ENOTDIR",
        EEXIST_OR_EPERM => "EEXIST/EPERM",
        ENOENT_OR_ENAMETOOLONG => "ENOENT/ENAMETOOLONG",
        _ => "",
    };
    format!("{name}({e})")
}

/// Compares an expected outcome with the engine's: `Ok(true)` if both succeeded, `Ok(false)`
/// if both failed with the same errno.
pub(crate) fn outcome<T>(
    what: &str,
    exp: Result<(), i32>,
    got: &Result<T, FsError>,
) -> Result<bool, String> {
    if std::env::var_os("MODEL_TRACE").is_some() {
        let g = got.as_ref().map(|_| ()).map_err(|e| errname(e.errno()));
        eprintln!(
            "     {what}: model {:?}, engine {g:?}",
            exp.map_err(errname)
        );
    }
    match (exp, got) {
        (Ok(()), Ok(_)) => Ok(true),
        (Err(e), Err(g)) if e == g.errno() || accepted(e).contains(&g.errno()) => Ok(false),
        (Ok(()), Err(g)) => Err(format!(
            "{what}: model succeeds, engine fails with {}: {g}",
            errname(g.errno())
        )),
        (Err(e), Ok(_)) => Err(format!(
            "{what}: model fails with {}, engine succeeds",
            errname(e)
        )),
        (Err(e), Err(g)) => Err(format!(
            "{what}: model fails with {}, engine with {}: {g}",
            errname(e),
            errname(g.errno())
        )),
    }
}

pub(crate) fn ok<T>(what: &str, got: Result<T, FsError>) -> Result<T, String> {
    got.map_err(|e| format!("{what}: engine fails with {}: {e}", errname(e.errno())))
}

/// Describes where two byte strings first differ.
pub(crate) fn diff(what: &str, exp: &[u8], got: &[u8]) -> Result<(), String> {
    if exp == got {
        return Ok(());
    }
    let first = exp
        .iter()
        .zip(got.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(exp.len().min(got.len()));
    let ctx = |v: &[u8]| format!("{:02x?}", &v[first.min(v.len())..(first + 8).min(v.len())]);
    Err(format!(
        "{what}: model has {} bytes, engine {} bytes; first difference at +{first}: model {} engine {}",
        exp.len(),
        got.len(),
        ctx(exp),
        ctx(got)
    ))
}

thread_local! {
    /// The metadata store of the volumes this thread's harnesses make: a fresh database of the
    /// private PostgreSQL server, instead of redb.
    pub(crate) static ON_POSTGRES: std::cell::Cell<Option<&'static spoolfs_testkit::pg::PgServer>> =
        const { std::cell::Cell::new(None) };
}

impl Harness {
    pub(crate) fn new(buffers: Buffers) -> Harness {
        let vol = match ON_POSTGRES.get() {
            Some(pg) => common::Volume::on_postgres(&pg.url(&pg.new_database())),
            None => common::Volume::new(),
        };
        assert_eq!(vol.record().block_size, BLOCK);
        let config = EngineConfig {
            // Small buffers make writes upload while other data of the file is still buffered,
            // and a small block cache makes reads evict blocks.
            max_dirty_per_file: match buffers {
                Buffers::Large => 64 * MIB,
                Buffers::Small | Buffers::Writeback => 160 * KIB,
                Buffers::Tiny => BLOCK,
            },
            block_cache_bytes: match buffers {
                Buffers::Large => 64 * MIB,
                Buffers::Small | Buffers::Writeback => 512 * KIB,
                Buffers::Tiny => 2 * BLOCK,
            },
            ..EngineConfig::default()
        };
        let mut h = Harness {
            vol,
            config,
            writeback: buffers == Buffers::Writeback,
            engine: None,
            m: Model::new(),
            map: HashMap::from([(MROOT, ROOT_INO)]),
            handles: Vec::new(),
            current: None,
        };
        h.start();
        h
    }

    pub(crate) fn start(&mut self) {
        let staging = self.writeback.then(|| {
            spoolfs_engine::writeback::StagingSettings::for_tests(self.vol.dir.path().join("cache"))
        });
        self.engine = Some(self.vol.start_engine(staging.as_ref(), self.config.clone()));
    }

    pub(crate) fn e(&self) -> &Engine {
        self.engine.as_ref().expect("engine running")
    }

    pub(crate) fn ino(&self, id: MId) -> Ino {
        self.map[&id]
    }

    /// Records the engine's inode of a new model node.
    pub(crate) fn bind(&mut self, id: MId, attr: &Attr) -> Result<(), String> {
        if let Some((other, _)) = self.map.iter().find(|(_, i)| **i == attr.ino) {
            return Err(format!(
                "engine returned inode {} for a new node, but it already belongs to a live node (model {other})",
                attr.ino
            ));
        }
        self.map.insert(id, attr.ino);
        Ok(())
    }

    /// Forgets engine inodes of model nodes that no longer exist.
    pub(crate) fn sync_map(&mut self) {
        let nodes = &self.m.nodes;
        self.map.retain(|id, _| nodes.contains_key(id));
    }

    pub(crate) fn cmp_attr(&self, what: &str, id: MId, a: &Attr) -> Result<(), String> {
        let n = self.m.node(id);
        let mut errs = Vec::new();
        if a.ino != self.ino(id) {
            errs.push(format!("ino {} (expected {})", a.ino, self.ino(id)));
        }
        if a.kind != n.kind {
            errs.push(format!("kind {:?} (expected {:?})", a.kind, n.kind));
        }
        if a.perm != n.perm {
            errs.push(format!("perm {:o} (expected {:o})", a.perm, n.perm));
        }
        let nlink = self.m.nlink(id);
        if a.nlink != nlink {
            errs.push(format!("nlink {} (expected {nlink})", a.nlink));
        }
        if (a.uid, a.gid) != (n.uid, n.gid) {
            errs.push(format!(
                "owner {}:{} (expected {}:{})",
                a.uid, a.gid, n.uid, n.gid
            ));
        }
        let size = match n.kind {
            FileKind::File => Some(n.data.size),
            FileKind::Symlink => Some(n.target.len() as u64),
            FileKind::Fifo => Some(0),
            _ => None,
        };
        if let Some(size) = size
            && a.size != size
        {
            errs.push(format!("size {} (expected {size})", a.size));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: wrong attributes: {}", errs.join(", ")))
        }
    }

    pub(crate) fn pick(&self, h: u8) -> Option<usize> {
        (!self.handles.is_empty()).then(|| h as usize % self.handles.len())
    }

    /// Path ops on the node a path names, if it resolves to one of `kinds`.
    pub(crate) fn target(&self, path: &P, kinds: &[FileKind]) -> Option<MId> {
        let id = self.m.resolve(&path.names()).ok()?;
        kinds.contains(&self.m.kind(id)).then_some(id)
    }

    pub(crate) fn open_handle(&mut self, id: MId, fh: u64) -> Result<(), String> {
        let ino = self.ino(id);
        if self.handles.len() < MAX_HANDLES {
            self.m.node_mut(id).open += 1;
            self.handles.push(Handle { m: id, ino, fh });
        } else {
            ok("flush", self.e().flush(ino, fh))?;
            ok("release", self.e().release(ino, fh))?;
        }
        Ok(())
    }

    pub(crate) fn close_handle(&mut self, idx: usize, flush: bool) -> Result<(), String> {
        let h = self.handles.remove(idx);
        if flush {
            ok("flush", self.e().flush(h.ino, h.fh))?;
        }
        ok("release", self.e().release(h.ino, h.fh))?;
        self.m.node_mut(h.m).open -= 1;
        self.m.maybe_free(h.m);
        self.sync_map();
        Ok(())
    }

    pub(crate) fn write_through(
        &mut self,
        id: MId,
        fh: u64,
        off: u64,
        data: &[u8],
    ) -> Result<(), String> {
        let n = ok("write", self.e().write(&ROOT, self.ino(id), fh, off, data))?;
        if n as usize != data.len() {
            return Err(format!("write: engine wrote {n} of {} bytes", data.len()));
        }
        self.m.node_mut(id).data.write(off, data);
        let attr = ok("getattr after write", self.e().getattr(self.ino(id)))?;
        self.cmp_attr("getattr after write", id, &attr)
    }

    pub(crate) fn read_through(&self, id: MId, fh: u64, off: u64, len: u32) -> Result<(), String> {
        let got = ok("read", self.e().read(self.ino(id), fh, off, len))?;
        let exp = self.m.node(id).data.read(off, len as u64);
        diff(&format!("read {len} bytes at {off}"), &exp, &got)
    }

    /// Turns the paths of an operation into literal paths; `None` if there is nothing to act on.
    pub(crate) fn resolve_op(&self, op: &Op) -> Option<Op> {
        use FileKind::*;
        const ANY: &[FileKind] = &[File, Dir, Symlink, Fifo];
        let paths = self.m.paths();
        let lit = |p: &P, kinds: &[FileKind], root: bool| -> Option<P> {
            match p {
                P::Lit(_) => Some(p.clone()),
                P::Nth(k) => {
                    let c: Vec<_> = paths
                        .iter()
                        .filter(|(path, id)| {
                            (root || !path.is_empty()) && kinds.contains(&self.m.kind(*id))
                        })
                        .collect();
                    (!c.is_empty()).then(|| P::Lit(c[*k as usize % c.len()].0.clone()))
                }
                P::In(d, name) => {
                    let dirs: Vec<_> = paths
                        .iter()
                        .filter(|(_, id)| self.m.kind(*id) == Dir)
                        .collect();
                    let mut path = dirs[*d as usize % dirs.len()].0.clone();
                    path.push(*name);
                    Some(P::Lit(path))
                }
            }
        };
        let mut op = op.clone();
        match &mut op {
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Mknod { path, .. }
            | Op::Symlink { path, .. }
            | Op::Lookup { path }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Chown { path, .. } => *path = lit(path, ANY, false)?,
            Op::Readlink { path } => *path = lit(path, &[Symlink, File], false)?,
            Op::Rename { from, to, .. } | Op::Link { from, to } => {
                *from = lit(from, ANY, false)?;
                *to = lit(to, ANY, false)?;
            }
            Op::Write { path, .. }
            | Op::Read { path, .. }
            | Op::Truncate { path, .. }
            | Op::Open { path, .. } => *path = lit(path, &[File], false)?,
            Op::Chmod { path, .. } => *path = lit(path, &[File, Dir, Fifo], false)?,
            Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::ListXattr { path } => *path = lit(path, &[File, Dir], false)?,
            Op::Readdir { path, .. } => *path = lit(path, &[Dir], true)?,
            _ => {}
        }
        Some(op)
    }

    /// Runs one operation; returns it with literal paths, or `None` if it was skipped.
    pub(crate) fn step(&mut self, op: &Op) -> Result<Option<Op>, String> {
        let Some(op) = self.resolve_op(op) else {
            return Ok(None);
        };
        self.current = Some(op.clone());
        let ran = self.exec(&op).map_err(|e| format!("{op:?}: {e}"))?;
        Ok(ran.then_some(op))
    }

    /// The whole listing of a directory from `cookie` on.
    pub(crate) fn list_dir(&self, ino: Ino, fh: u64, cookie: u64) -> Result<Vec<DirEntry>, String> {
        let mut out: Vec<DirEntry> = Vec::new();
        let mut cookie = cookie;
        loop {
            let batch = ok("readdir", self.e().readdir(ino, fh, cookie))?;
            let Some(last) = batch.last() else { break };
            cookie = last.offset;
            out.extend(batch);
            if out.len() > 10_000 {
                return Err("readdir: more than 10000 entries (cookies loop?)".into());
            }
        }
        Ok(out)
    }

    /// Compares a full listing (with "." and "..") of model directory `id`.
    pub(crate) fn cmp_listing(&self, id: MId, all: &[DirEntry]) -> Result<(), String> {
        let node = self.m.node(id);
        let ino = self.ino(id);
        let dots: Vec<&DirEntry> = all
            .iter()
            .filter(|e| e.name == b"." || e.name == b"..")
            .collect();
        if dots.len() != 2 {
            return Err(format!(
                "readdir of inode {ino}: {} entries named . or .. (expected 2)",
                dots.len()
            ));
        }
        for d in dots {
            let exp = if d.name == b"." {
                ino
            } else {
                self.ino(node.parent)
            };
            if d.ino != exp || d.kind != FileKind::Dir {
                return Err(format!(
                    "readdir of inode {ino}: {:?} is inode {} {:?} (expected {exp} Dir)",
                    String::from_utf8_lossy(&d.name),
                    d.ino,
                    d.kind
                ));
            }
        }
        let got: Vec<Vec<u8>> = all
            .iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .map(|e| e.name.clone())
            .collect();
        let set: BTreeSet<Vec<u8>> = got.iter().cloned().collect();
        let exp: BTreeSet<Vec<u8>> = node.entries.keys().cloned().collect();
        if set != exp || set.len() != got.len() {
            return Err(format!(
                "readdir of inode {ino}: expected {:?}, got {:?}",
                lossy(&exp.into_iter().collect::<Vec<_>>()),
                lossy(&got)
            ));
        }
        for e in all.iter().filter(|e| e.name != b"." && e.name != b"..") {
            let child = node.entries[&e.name];
            if e.ino != self.ino(child) || e.kind != self.m.kind(child) {
                return Err(format!(
                    "readdir of inode {ino}: {:?} is inode {} {:?} (expected {} {:?})",
                    String::from_utf8_lossy(&e.name),
                    e.ino,
                    e.kind,
                    self.ino(child),
                    self.m.kind(child)
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn check_xattrs(&self, id: MId) -> Result<(), String> {
        let ino = self.ino(id);
        let node = self.m.node(id);
        let got: BTreeSet<Vec<u8>> = ok("listxattr", self.e().listxattr(ino))?
            .into_iter()
            .collect();
        let exp: BTreeSet<Vec<u8>> = node.xattrs.keys().cloned().collect();
        if got != exp {
            return Err(format!(
                "listxattr of inode {ino}: expected {:?}, got {:?}",
                lossy(&exp.into_iter().collect::<Vec<_>>()),
                lossy(&got.into_iter().collect::<Vec<_>>())
            ));
        }
        for (name, value) in &node.xattrs {
            let got = ok("getxattr", self.e().getxattr(ino, name))?;
            diff(
                &format!(
                    "getxattr {:?} of inode {ino}",
                    String::from_utf8_lossy(name)
                ),
                value,
                &got,
            )?;
        }
        Ok(())
    }

    /// Reads a whole file through `fh` and compares it with the model.
    pub(crate) fn check_content(&self, id: MId, fh: u64) -> Result<(), String> {
        let ino = self.ino(id);
        let data = &self.m.node(id).data;
        let step = MIB;
        let mut off = 0;
        loop {
            let got = ok("read", self.e().read(ino, fh, off, step as u32))?;
            let exp = data.read(off, step);
            diff(&format!("content of inode {ino} at {off}"), &exp, &got)?;
            if exp.is_empty() {
                break;
            }
            off += step;
        }
        Ok(())
    }

    /// Walks the model tree and compares every node; `deep` also compares contents, symlink
    /// targets and xattrs (and the contents of open unlinked files).
    pub(crate) fn check_tree(&self, deep: bool) -> Result<(), String> {
        let root = ok("getattr /", self.e().getattr(ROOT_INO))?;
        self.cmp_attr("getattr /", MROOT, &root)?;
        let mut seen = BTreeSet::new();
        let mut stack = vec![(MROOT, String::new())];
        while let Some((dir, path)) = stack.pop() {
            let ino = self.ino(dir);
            let fh = ok("opendir", self.e().opendir(ino))?;
            let all = self.list_dir(ino, fh, 0)?;
            ok("releasedir", self.e().releasedir(ino, fh))?;
            self.cmp_listing(dir, &all)
                .map_err(|e| format!("{e} (directory {path:?})"))?;
            if deep && seen.insert(dir) {
                self.check_xattrs(dir)?;
            }
            for (name, &child) in &self.m.node(dir).entries {
                let cpath = format!("{path}/{}", String::from_utf8_lossy(name));
                let attr = ok(&format!("lookup {cpath}"), self.e().lookup(ino, name))?;
                self.cmp_attr(&format!("lookup {cpath}"), child, &attr)?;
                let attr = ok(&format!("getattr {cpath}"), self.e().getattr(attr.ino))?;
                self.cmp_attr(&format!("getattr {cpath}"), child, &attr)?;
                match self.m.kind(child) {
                    FileKind::Dir => stack.push((child, cpath)),
                    FileKind::Symlink if deep => {
                        let got = ok("readlink", self.e().readlink(self.ino(child)))?;
                        diff(
                            &format!("readlink {cpath}"),
                            &self.m.node(child).target,
                            &got,
                        )?;
                    }
                    FileKind::File if deep && seen.insert(child) => {
                        let cino = self.ino(child);
                        let fh = ok(
                            &format!("open {cpath}"),
                            self.e().open(&ROOT, cino, libc::O_RDONLY),
                        )?;
                        self.check_content(child, fh)
                            .map_err(|e| format!("{e} ({cpath})"))?;
                        ok("release", self.e().release(cino, fh))?;
                        self.check_xattrs(child)?;
                    }
                    _ => {}
                }
            }
        }
        if deep {
            // Unlinked files stay until their last handle is released, and no longer.
            let inodes = self.e().status().inodes;
            if inodes != self.m.nodes.len() as u64 {
                return Err(format!(
                    "status: {inodes} inodes in use, the model has {}",
                    self.m.nodes.len()
                ));
            }
        }
        for h in &self.handles {
            let attr = ok("fstat", self.e().getattr(h.ino))?;
            self.cmp_attr("fstat of an open file", h.m, &attr)?;
            if deep && seen.insert(h.m) {
                self.check_content(h.m, h.fh)
                    .map_err(|e| format!("{e} (open file, nlink {})", self.m.nlink(h.m)))?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<(), String> {
        while !self.handles.is_empty() {
            self.close_handle(0, true)?;
        }
        ok("shutdown", self.e().shutdown())?;
        Ok(())
    }
}

pub(crate) fn lossy(v: &[Vec<u8>]) -> Vec<String> {
    v.iter()
        .map(|n| {
            if n.len() > 16 {
                format!("{}*{}", n[0] as char, n.len())
            } else {
                String::from_utf8_lossy(n).into_owned()
            }
        })
        .collect()
}
