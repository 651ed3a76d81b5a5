//! One operation on the engine and the model, by kind of operation. Each `exec_*` returns
//! `Ok(false)` when the harness skips the operation (its path does not resolve, or it has a
//! kind the kernel would never pass).

use super::*;
use FileKind::*;

impl Harness {
    /// Runs one operation with literal paths; `Ok(false)` if the harness skipped it.
    pub(crate) fn exec(&mut self, op: &Op) -> Result<bool, String> {
        let ran = match op {
            Op::Create { .. } | Op::Mkdir { .. } | Op::Mknod { .. } | Op::Symlink { .. } => {
                self.exec_new_entry(op)?
            }
            Op::Readlink { .. }
            | Op::Lookup { .. }
            | Op::Unlink { .. }
            | Op::Rmdir { .. }
            | Op::Rename { .. }
            | Op::Link { .. } => self.exec_namespace(op)?,
            Op::Write { .. }
            | Op::Read { .. }
            | Op::Truncate { .. }
            | Op::Chmod { .. }
            | Op::Chown { .. } => self.exec_by_path(op)?,
            Op::SetXattr { .. }
            | Op::GetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::ListXattr { .. } => self.exec_xattr(op)?,
            Op::Open { path, trunc } => self.exec_open(path, *trunc)?,
            Op::HWrite { .. }
            | Op::HRead { .. }
            | Op::HTruncate { .. }
            | Op::HFallocate { .. }
            | Op::HFlush { .. }
            | Op::HFsync { .. }
            | Op::HStat { .. }
            | Op::HRelease { .. } => self.exec_handle(op)?,
            Op::Readdir { .. } | Op::Statfs | Op::Verify | Op::Remount => self.exec_volume(op)?,
        };
        if ran {
            self.sync_map();
        }
        Ok(ran)
    }

    /// Creates an entry: a file (left open), a directory, a FIFO or file node, a symlink.
    fn exec_new_entry(&mut self, op: &Op) -> Result<bool, String> {
        let (Op::Create { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Mknod { path, .. }
        | Op::Symlink { path, .. }) = op
        else {
            unreachable!("{op:?} is not handled by exec_new_entry")
        };
        let Some((dir, name)) = self.m.resolve_parent(&path.names()) else {
            return Ok(false);
        };
        let exp = if name.len() > NAME_MAX {
            Err(libc::ENAMETOOLONG)
        } else if self.m.child(dir, &name).is_some() {
            Err(libc::EEXIST)
        } else {
            Ok(())
        };
        match op {
            Op::Create { perm, .. } => {
                let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
                let got = self
                    .e()
                    .create(&ROOT, self.ino(dir), &name, perm.0 as u32, flags);
                if outcome("create", exp, &got)? {
                    let (attr, fh) = got.unwrap();
                    let id =
                        self.add_node("create", dir, &name, MNode::new(File, perm.0), &attr)?;
                    self.open_handle(id, fh)?;
                }
            }
            Op::Mkdir { perm, .. } => {
                let got = self.e().mkdir(&ROOT, self.ino(dir), &name, perm.0 as u32);
                if outcome("mkdir", exp, &got)? {
                    let node = MNode::new(Dir, perm.0);
                    self.add_node("mkdir", dir, &name, node, &got.unwrap())?;
                }
            }
            Op::Mknod { fifo, .. } => {
                let (kind, fmt) = if *fifo {
                    (Fifo, libc::S_IFIFO)
                } else {
                    (File, libc::S_IFREG)
                };
                let got = self.e().mknod(&ROOT, self.ino(dir), &name, fmt | 0o640, 0);
                if outcome("mknod", exp, &got)? {
                    let node = MNode::new(kind, 0o640);
                    self.add_node("mknod", dir, &name, node, &got.unwrap())?;
                }
            }
            Op::Symlink { target, .. } => {
                let target = symlink_target(*target);
                let exp = if target.len() > SYMLINK_MAX {
                    Err(libc::ENAMETOOLONG)
                } else {
                    exp
                };
                let got = self.e().symlink(&ROOT, self.ino(dir), &name, &target);
                if outcome("symlink", exp, &got)? {
                    let mut node = MNode::new(Symlink, 0o777);
                    node.target = target;
                    self.add_node("symlink", dir, &name, node, &got.unwrap())?;
                }
            }
            _ => unreachable!(),
        }
        Ok(true)
    }

    /// Adds a node the engine just created (`what`) to the model, binds it to the engine's
    /// inode and compares their attributes.
    fn add_node(
        &mut self,
        what: &str,
        dir: MId,
        name: &[u8],
        node: MNode,
        attr: &Attr,
    ) -> Result<MId, String> {
        let id = self.m.add(dir, name, node);
        self.bind(id, attr)?;
        self.cmp_attr(what, id, attr)?;
        Ok(id)
    }

    /// Looks up, reads a link, removes, renames or links entries.
    fn exec_namespace(&mut self, op: &Op) -> Result<bool, String> {
        match op {
            Op::Readlink { path } => {
                let Ok(id) = self.m.resolve(&path.names()) else {
                    return Ok(false);
                };
                let exp = if self.m.kind(id) == Symlink {
                    Ok(())
                } else {
                    Err(libc::EINVAL)
                };
                let got = self.e().readlink(self.ino(id));
                if outcome("readlink", exp, &got)? {
                    diff("readlink", &self.m.node(id).target, &got.unwrap())?;
                }
            }
            Op::Lookup { path } => {
                let names = path.names();
                let Some((dir, name)) = self.m.resolve_parent(&names) else {
                    return Ok(false);
                };
                let exp = self.m.resolve(&names).map(|_| ());
                let got = self.e().lookup(self.ino(dir), &name);
                if outcome("lookup", exp, &got)? {
                    let id = self.m.resolve(&names).unwrap();
                    self.cmp_attr("lookup", id, &got.unwrap())?;
                }
            }
            Op::Unlink { path } => {
                let Some((dir, name)) = self.m.resolve_parent(&path.names()) else {
                    return Ok(false);
                };
                let exp = match self.m.child(dir, &name) {
                    None => Err(libc::ENOENT),
                    Some(c) if self.m.kind(c) == Dir => Err(libc::EISDIR),
                    Some(_) => Ok(()),
                };
                let got = self.e().unlink(&ROOT, self.ino(dir), &name);
                if outcome("unlink", exp, &got)? {
                    self.m.remove_entry(dir, &name);
                }
            }
            Op::Rmdir { path } => {
                let Some((dir, name)) = self.m.resolve_parent(&path.names()) else {
                    return Ok(false);
                };
                let exp = match self.m.child(dir, &name) {
                    None => Err(libc::ENOENT),
                    Some(c) if self.m.kind(c) != Dir => Err(libc::ENOTDIR),
                    Some(c) if !self.m.node(c).entries.is_empty() => Err(libc::ENOTEMPTY),
                    Some(_) => Ok(()),
                };
                let got = self.e().rmdir(&ROOT, self.ino(dir), &name);
                if outcome("rmdir", exp, &got)? {
                    self.m.remove_entry(dir, &name);
                }
            }
            Op::Rename { from, to, flag } => {
                let Some((sp, sn)) = self.m.resolve_parent(&from.names()) else {
                    return Ok(false);
                };
                let Some((dp, dn)) = self.m.resolve_parent(&to.names()) else {
                    return Ok(false);
                };
                let exp = self.m.rename_check(sp, &sn, dp, &dn, *flag);
                let flags = RenameFlags {
                    noreplace: *flag == RFlag::NoReplace,
                    exchange: *flag == RFlag::Exchange,
                };
                let got = self
                    .e()
                    .rename(&ROOT, self.ino(sp), &sn, self.ino(dp), &dn, flags);
                if outcome("rename", exp, &got)? {
                    self.m.rename_apply(sp, &sn, dp, &dn, *flag);
                }
            }
            Op::Link { from, to } => {
                let Ok(src) = self.m.resolve(&from.names()) else {
                    return Ok(false);
                };
                let Some((dp, dn)) = self.m.resolve_parent(&to.names()) else {
                    return Ok(false);
                };
                let exp = if dn.len() > NAME_MAX {
                    Err(libc::ENAMETOOLONG)
                } else if self.m.child(dp, &dn).is_some() {
                    Err(if self.m.kind(src) == Dir {
                        EEXIST_OR_EPERM
                    } else {
                        libc::EEXIST
                    })
                } else if self.m.kind(src) == Dir {
                    Err(libc::EPERM)
                } else {
                    Ok(())
                };
                let got = self.e().link(&ROOT, self.ino(src), self.ino(dp), &dn);
                if outcome("link", exp, &got)? {
                    self.m.node_mut(src).links += 1;
                    self.m.node_mut(dp).entries.insert(dn, src);
                    self.cmp_attr("link", src, &got.unwrap())?;
                }
            }
            _ => unreachable!("{op:?} is not handled by exec_namespace"),
        }
        Ok(true)
    }

    /// Operations on a path that open no lasting handle: write, read, truncate, chmod, chown.
    fn exec_by_path(&mut self, op: &Op) -> Result<bool, String> {
        match op {
            Op::Write {
                path,
                off,
                len,
                seed,
            } => {
                let Some(id) = self.target(path, &[File]) else {
                    return Ok(false);
                };
                let ino = self.ino(id);
                let fh = ok("open", self.e().open(&ROOT, ino, libc::O_WRONLY))?;
                let data = random_bytes(*seed as u64 ^ (*off << 8), *len as usize);
                self.write_through(id, fh, *off, &data)?;
                ok("flush", self.e().flush(ino, fh))?;
                ok("release", self.e().release(ino, fh))?;
            }
            Op::Read { path, off, len } => {
                let Some(id) = self.target(path, &[File]) else {
                    return Ok(false);
                };
                let ino = self.ino(id);
                let fh = ok("open", self.e().open(&ROOT, ino, libc::O_RDONLY))?;
                self.read_through(id, fh, *off, *len)?;
                ok("release", self.e().release(ino, fh))?;
            }
            Op::Truncate { path, size } => {
                let Some(id) = self.target(path, &[File]) else {
                    return Ok(false);
                };
                let set = SetAttr {
                    size: Some(*size),
                    ..Default::default()
                };
                let attr = ok("truncate", self.e().setattr(&ROOT, self.ino(id), &set))?;
                self.m.node_mut(id).data.set_size(*size);
                self.cmp_attr("truncate", id, &attr)?;
            }
            Op::Chmod { path, perm } => {
                let Some(id) = self.target(path, &[File, Dir, Fifo]) else {
                    return Ok(false);
                };
                let set = SetAttr {
                    mode: Some(perm.0 as u32),
                    ..Default::default()
                };
                let attr = ok("chmod", self.e().setattr(&ROOT, self.ino(id), &set))?;
                self.m.node_mut(id).perm = perm.0;
                self.cmp_attr("chmod", id, &attr)?;
            }
            Op::Chown { path, uid, gid } => {
                let Ok(id) = self.m.resolve(&path.names()) else {
                    return Ok(false);
                };
                let set = SetAttr {
                    uid: Some(*uid),
                    gid: Some(*gid),
                    ..Default::default()
                };
                let attr = ok("chown", self.e().setattr(&ROOT, self.ino(id), &set))?;
                let n = self.m.node_mut(id);
                n.uid = *uid;
                n.gid = *gid;
                self.cmp_attr("chown", id, &attr)?;
            }
            _ => unreachable!("{op:?} is not handled by exec_by_path"),
        }
        Ok(true)
    }

    /// Extended attributes of a file or directory.
    fn exec_xattr(&mut self, op: &Op) -> Result<bool, String> {
        let (Op::SetXattr { path, .. }
        | Op::GetXattr { path, .. }
        | Op::RemoveXattr { path, .. }
        | Op::ListXattr { path }) = op
        else {
            unreachable!("{op:?} is not handled by exec_xattr")
        };
        let Some(id) = self.target(path, &[File, Dir]) else {
            return Ok(false);
        };
        match op {
            Op::SetXattr {
                name,
                len,
                seed,
                mode,
                ..
            } => {
                let name = xattr_name(*name);
                let value = random_bytes(*seed as u64 + 7, *len as usize);
                let exists = self.m.node(id).xattrs.contains_key(&name);
                let (exp, emode) = match mode {
                    XMode::Any => (Ok(()), XattrSet::Any),
                    XMode::Create if exists => (Err(libc::EEXIST), XattrSet::Create),
                    XMode::Create => (Ok(()), XattrSet::Create),
                    XMode::Replace if !exists => (Err(libc::ENODATA), XattrSet::Replace),
                    XMode::Replace => (Ok(()), XattrSet::Replace),
                };
                let got = self.e().setxattr(&ROOT, self.ino(id), &name, &value, emode);
                if outcome("setxattr", exp, &got)? {
                    self.m.node_mut(id).xattrs.insert(name, value);
                }
            }
            Op::GetXattr { name, .. } => {
                let name = xattr_name(*name);
                let value = self.m.node(id).xattrs.get(&name).cloned();
                let exp = value.as_ref().map(|_| ()).ok_or(libc::ENODATA);
                let got = self.e().getxattr(self.ino(id), &name);
                if outcome("getxattr", exp, &got)? {
                    diff("getxattr", &value.unwrap(), &got.unwrap())?;
                }
            }
            Op::RemoveXattr { name, .. } => {
                let name = xattr_name(*name);
                let exp = if self.m.node(id).xattrs.contains_key(&name) {
                    Ok(())
                } else {
                    Err(libc::ENODATA)
                };
                let got = self.e().removexattr(&ROOT, self.ino(id), &name);
                if outcome("removexattr", exp, &got)? {
                    self.m.node_mut(id).xattrs.remove(&name);
                }
            }
            Op::ListXattr { .. } => self.check_xattrs(id)?,
            _ => unreachable!(),
        }
        Ok(true)
    }

    /// Opens a handle (at most [`MAX_HANDLES`] at once).
    fn exec_open(&mut self, path: &P, trunc: bool) -> Result<bool, String> {
        let Some(id) = self.target(path, &[File]) else {
            return Ok(false);
        };
        if self.handles.len() >= MAX_HANDLES {
            return Ok(false);
        }
        let flags = libc::O_RDWR | if trunc { libc::O_TRUNC } else { 0 };
        let fh = ok("open", self.e().open(&ROOT, self.ino(id), flags))?;
        if trunc {
            self.m.node_mut(id).data.set_size(0);
        }
        self.open_handle(id, fh)?;
        Ok(true)
    }

    /// Acts through an open handle (`h` picks one; none open: skipped).
    fn exec_handle(&mut self, op: &Op) -> Result<bool, String> {
        let (Op::HWrite { h, .. }
        | Op::HRead { h, .. }
        | Op::HTruncate { h, .. }
        | Op::HFallocate { h, .. }
        | Op::HFlush { h }
        | Op::HFsync { h, .. }
        | Op::HStat { h }
        | Op::HRelease { h }) = op
        else {
            unreachable!("{op:?} is not handled by exec_handle")
        };
        let Some(i) = self.pick(*h) else {
            return Ok(false);
        };
        let Handle { m: id, ino, fh } = self.handles[i];
        match op {
            Op::HWrite { off, len, seed, .. } => {
                let data = random_bytes(*seed as u64 ^ (*off << 8) ^ 0x55, *len as usize);
                self.write_through(id, fh, *off, &data)?;
            }
            Op::HRead { off, len, .. } => self.read_through(id, fh, *off, *len)?,
            Op::HTruncate { size, .. } => {
                let set = SetAttr {
                    size: Some(*size),
                    fh: Some(fh),
                    ..Default::default()
                };
                let attr = ok("ftruncate", self.e().setattr(&ROOT, ino, &set))?;
                self.m.node_mut(id).data.set_size(*size);
                self.cmp_attr("ftruncate", id, &attr)?;
            }
            Op::HFallocate { off, len, mode, .. } => {
                let (off, len) = (*off, *len as u64);
                let emode = match mode {
                    Falloc::Alloc => 0,
                    Falloc::KeepSize => libc::FALLOC_FL_KEEP_SIZE,
                    Falloc::Punch => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                };
                ok(
                    "fallocate",
                    self.e().fallocate(&ROOT, ino, fh, off, len, emode),
                )?;
                let data = &mut self.m.node_mut(id).data;
                match mode {
                    Falloc::Alloc if off + len > data.size => data.set_size(off + len),
                    Falloc::Alloc | Falloc::KeepSize => {}
                    Falloc::Punch => data.zero(off, len),
                }
                let attr = ok("getattr after fallocate", self.e().getattr(ino))?;
                self.cmp_attr("getattr after fallocate", id, &attr)?;
            }
            Op::HFlush { .. } => ok("flush", self.e().flush(ino, fh))?,
            Op::HFsync { datasync, .. } => ok("fsync", self.e().fsync(ino, fh, *datasync))?,
            Op::HStat { .. } => {
                let attr = ok("fstat", self.e().getattr(ino))?;
                self.cmp_attr("fstat", id, &attr)?;
            }
            Op::HRelease { .. } => self.close_handle(i, true)?,
            _ => unreachable!(),
        }
        Ok(true)
    }

    /// Whole-directory and whole-volume operations: readdir, statfs, a deep check, a remount.
    fn exec_volume(&mut self, op: &Op) -> Result<bool, String> {
        match op {
            Op::Readdir { path, pick } => {
                let Some(id) = self.target(path, &[Dir]) else {
                    return Ok(false);
                };
                let ino = self.ino(id);
                let fh = ok("opendir", self.e().opendir(ino))?;
                let all = self.list_dir(ino, fh, 0)?;
                // Continuing after any cookie yields the rest of the listing.
                let k = *pick as usize % all.len().max(1);
                if let Some(entry) = all.get(k) {
                    let rest = self.list_dir(ino, fh, entry.offset)?;
                    let exp: Vec<_> = all[k + 1..].iter().map(|e| e.name.clone()).collect();
                    let got: Vec<_> = rest.iter().map(|e| e.name.clone()).collect();
                    if exp != got {
                        return Err(format!(
                            "readdir from the cookie of entry {k} ({:?}): expected {:?}, got {:?}",
                            String::from_utf8_lossy(&entry.name),
                            lossy(&exp),
                            lossy(&got)
                        ));
                    }
                }
                ok("releasedir", self.e().releasedir(ino, fh))?;
                self.cmp_listing(id, &all)?;
            }
            Op::Statfs => {
                let st = ok("statfs", self.e().statfs())?;
                if st.namelen != NAME_MAX as u32 {
                    return Err(format!("statfs: namelen {} (expected 255)", st.namelen));
                }
            }
            Op::Verify => self.check_tree(true)?,
            Op::Remount => {
                while !self.handles.is_empty() {
                    self.close_handle(0, true)?;
                }
                ok("shutdown", self.e().shutdown())?;
                let engine = self.engine.take().expect("engine");
                drop(engine);
                self.start();
                self.check_tree(true)?;
            }
            _ => unreachable!("{op:?} is not handled by exec_volume"),
        }
        Ok(true)
    }
}
