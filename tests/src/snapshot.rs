//! Recording a directory tree (kinds, modes, sizes, contents, xattrs) and comparing two
//! recordings.

use super::*;

/// What a snapshot records about one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntrySnap {
    pub kind: char,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// (seconds, nanoseconds); `None` when not compared.
    pub mtime: Option<(i64, i64)>,
    /// Size (not for directories, whose size is file-system specific).
    pub size: Option<u64>,
    /// Link count (not for directories).
    pub nlink: Option<u64>,
    /// Content checksum for regular files.
    pub content: Option<u64>,
    pub symlink_target: Option<PathBuf>,
    /// user.* extended attributes (name → value).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Which fields [`snapshot_tree`] records.
#[derive(Clone, Copy, Debug)]
pub struct SnapOptions {
    /// Compare mtimes at all.
    pub mtime: bool,
    /// Compare nanoseconds of mtimes (tar keeps only seconds).
    pub mtime_nsec: bool,
    /// Compare mtimes of directories (tar and cp set them, but not all tools do).
    pub dir_mtime: bool,
    /// Compare mtimes of symbolic links.
    pub symlink_mtime: bool,
    pub nlink: bool,
    pub xattrs: bool,
}

impl SnapOptions {
    /// Everything, for the same tree before and after a remount.
    pub const EXACT: SnapOptions = SnapOptions {
        mtime: true,
        mtime_nsec: true,
        dir_mtime: true,
        symlink_mtime: true,
        nlink: true,
        xattrs: true,
    };
}

/// Records every entry below `root` (paths relative to it; the root itself is "").
pub fn snapshot_tree(root: &Path, opts: SnapOptions) -> BTreeMap<PathBuf, EntrySnap> {
    let mut out = BTreeMap::new();
    snap_rec(root, Path::new(""), opts, &mut out);
    out
}

fn snap_rec(root: &Path, rel: &Path, opts: SnapOptions, out: &mut BTreeMap<PathBuf, EntrySnap>) {
    let full = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let md =
        fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else if ft.is_block_device() {
        'b'
    } else {
        'c'
    };
    let mtime =
        if opts.mtime && (kind != 'd' || opts.dir_mtime) && (kind != 'l' || opts.symlink_mtime) {
            Some((
                md.mtime(),
                if opts.mtime_nsec { md.mtime_nsec() } else { 0 },
            ))
        } else {
            None
        };
    let content = if kind == 'f' {
        let data = fs::read(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()));
        assert_eq!(
            data.len() as u64,
            md.len(),
            "{}: read length differs from st_size",
            full.display()
        );
        Some(checksum(&data))
    } else {
        None
    };
    let symlink_target = if kind == 'l' {
        Some(fs::read_link(&full).unwrap_or_else(|e| panic!("readlink {}: {e}", full.display())))
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    if opts.xattrs {
        let names =
            list_xattr(&full).unwrap_or_else(|e| panic!("listxattr {}: {e}", full.display()));
        for n in names.into_iter().filter(|n| n.starts_with("user.")) {
            let v = get_xattr(&full, &n)
                .unwrap_or_else(|e| panic!("getxattr {} {n}: {e}", full.display()));
            xattrs.insert(n, v);
        }
    }
    out.insert(
        rel.to_path_buf(),
        EntrySnap {
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime,
            size: (kind != 'd').then_some(md.len()),
            nlink: (opts.nlink && kind != 'd').then(|| md.nlink()),
            content,
            symlink_target,
            xattrs,
        },
    );
    if kind == 'd' {
        let mut names: Vec<OsString> = fs::read_dir(&full)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", full.display()))
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        names.sort();
        for n in names {
            snap_rec(root, &rel.join(n), opts, out);
        }
    }
}

/// Asserts two snapshots are equal, listing every difference.
#[track_caller]
pub fn assert_snapshots_eq(
    actual: &BTreeMap<PathBuf, EntrySnap>,
    expected: &BTreeMap<PathBuf, EntrySnap>,
    what: &str,
) {
    let mut diffs = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => diffs.push(format!("missing {}", p.display())),
            Some(a) if a != e => diffs.push(format!(
                "{}:\n    got      {a:?}\n    expected {e:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for p in actual.keys() {
        if !expected.contains_key(p) {
            diffs.push(format!("unexpected {}", p.display()));
        }
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(40);
        panic!("{what}: {n} differences:\n{}", diffs.join("\n"));
    }
}
