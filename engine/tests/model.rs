//! Model-based property test of the engine (in the style of mountpoint-s3's reference tests).
//!
//! Random sequences of file system operations run against both the real [`Engine`] (over a
//! redb metadata file and a `file://` object store in a temporary directory) and a small
//! in-memory reference model with Linux semantics. After every operation the outcome (success
//! or the exact errno), returned data and attributes are compared, and the whole namespace is
//! walked (readdir + lookup + getattr of every node). File contents, symlink targets and
//! xattrs of every node are compared at `Verify`/`Remount` operations and at the end of every
//! case. `Remount` shuts the engine down, drops it, reopens the stores and starts a new engine.
//!
//! Conventions:
//! - The harness plays the kernel: it resolves the parent directory of a path in the model
//!   and maps it to the engine's inode. Operations whose parent does not resolve (or whose
//!   target has a kind the kernel would never pass, e.g. `open` of a directory) are skipped.
//! - The name space is tiny (`a`..`d`, depth up to 3) so that collisions are frequent.
//! - `PROPTEST_CASES` overrides the number of cases, `MODEL_OPS` the maximum sequence length.
//! - On failure the shrunk operation sequence is printed; paste it into a `#[test]` that calls
//!   `run_ops` to keep it as a regression.

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};
use spoolfs_engine::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;
use spoolfs_testkit::random_bytes;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// The chunk size of every volume (64 MiB); writes near it cross a chunk boundary.
const CHUNK: u64 = 64 * MIB;
/// The block size of the test volume: small so that slices span several blocks.
const BLOCK: u64 = 64 * KIB;
/// At most this many files are open at once (more `Open`s are skipped).
const MAX_HANDLES: usize = 6;
const ROOT: Caller = Caller::ROOT;

/// Pseudo-errnos for cases where Linux's VFS answers before the file system is asked and the
/// engine could legitimately check in another order: the engine never sees these through FUSE,
/// so any errno of the set is accepted.
/// Renaming a directory into its own subtree (Linux: EINVAL) or onto an ancestor of the source
/// (Linux: ENOTEMPTY); it must fail, but the engine may notice another problem first.
const ANY_TRAP: i32 = -1;
/// Hard-linking a directory onto an existing name (Linux: EEXIST).
const EEXIST_OR_EPERM: i32 = -2;
/// Renaming a missing entry to a name that is too long (Linux: ENOENT).
const ENOENT_OR_ENAMETOOLONG: i32 = -3;

fn accepted(e: i32) -> &'static [i32] {
    match e {
        ANY_TRAP => &[libc::ENOTEMPTY, libc::EINVAL, libc::EISDIR, libc::ENOTDIR],
        EEXIST_OR_EPERM => &[libc::EEXIST, libc::EPERM],
        ENOENT_OR_ENAMETOOLONG => &[libc::ENOENT, libc::ENAMETOOLONG],
        _ => &[],
    }
}

static OPS_RUN: AtomicUsize = AtomicUsize::new(0);
static OPS_SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// Silences panic messages of the property test's thread while it shrinks.
static QUIET: AtomicBool = AtomicBool::new(false);

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    /// One of "a", "b", "c", "d".
    Short(u8),
    /// A name of exactly NAME_MAX (255) bytes.
    Max,
    /// A name of 256 bytes: ENAMETOOLONG.
    TooLong,
}

impl Name {
    fn bytes(self) -> Vec<u8> {
        match self {
            Name::Short(i) => vec![b"abcd"[i as usize % 4]],
            Name::Max => vec![b'm'; NAME_MAX],
            Name::TooLong => vec![b'L'; NAME_MAX + 1],
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Short(i) => write!(f, "{}", b"abcd"[*i as usize % 4] as char),
            Name::Max => write!(f, "m*255"),
            Name::TooLong => write!(f, "L*256"),
        }
    }
}

/// Where an operation acts. Generated sequences mostly pick existing nodes and directories by
/// index so that few operations miss; the harness turns every `P` into a literal path before
/// running the operation, and failures print the literal sequence.
#[derive(Clone, PartialEq, Eq)]
enum P {
    /// A path from the root; empty means the root itself.
    Lit(Vec<Name>),
    /// The n-th (modulo their number) existing node of a kind the operation takes, in path order.
    Nth(u8),
    /// Entry `name` of the n-th (modulo their number) directory in path order, the root first.
    In(u8, Name),
}

impl P {
    fn names(&self) -> Vec<Vec<u8>> {
        match self {
            P::Lit(v) => v.iter().map(|n| n.bytes()).collect(),
            other => panic!("path {other:?} not resolved"),
        }
    }
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P::Lit(v) => {
                write!(f, "p(\"")?;
                for (i, n) in v.iter().enumerate() {
                    write!(f, "{}{n:?}", if i > 0 { "/" } else { "" })?;
                }
                write!(f, "\")")
            }
            P::Nth(n) => write!(f, "Nth({n})"),
            P::In(d, n) => write!(f, "In({d}, {n:?})"),
        }
    }
}

fn name_of(bytes: &[u8]) -> Name {
    match bytes {
        b"a" => Name::Short(0),
        b"b" => Name::Short(1),
        b"c" => Name::Short(2),
        b"d" => Name::Short(3),
        b if b.len() == NAME_MAX => Name::Max,
        _ => Name::TooLong,
    }
}

/// Builds a path from string components (for hand-written regression sequences).
fn p(s: &str) -> P {
    P::Lit(
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| match c {
                "a" => Name::Short(0),
                "b" => Name::Short(1),
                "c" => Name::Short(2),
                "d" => Name::Short(3),
                "m*255" => Name::Max,
                "L*256" => Name::TooLong,
                other => panic!("unknown name {other}"),
            })
            .collect(),
    )
}

/// Permission bits (printed in octal).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Perm(u16);

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perm(0o{:o})", self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RFlag {
    None,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum XMode {
    Any,
    Create,
    Replace,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Falloc {
    /// mode 0: allocate, extend the size.
    Alloc,
    /// FALLOC_FL_KEEP_SIZE
    KeepSize,
    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    Punch,
}

impl fmt::Debug for RFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RFlag::None => "RFlag::None",
            RFlag::NoReplace => "RFlag::NoReplace",
            RFlag::Exchange => "RFlag::Exchange",
        })
    }
}

impl fmt::Debug for XMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XMode::Any => "XMode::Any",
            XMode::Create => "XMode::Create",
            XMode::Replace => "XMode::Replace",
        })
    }
}

impl fmt::Debug for Falloc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Falloc::Alloc => "Falloc::Alloc",
            Falloc::KeepSize => "Falloc::KeepSize",
            Falloc::Punch => "Falloc::Punch",
        })
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// create(O_CREAT|O_EXCL); the handle stays open if there is room.
    Create {
        path: P,
        perm: Perm,
    },
    Mkdir {
        path: P,
        perm: Perm,
    },
    /// mknod of a FIFO (or of a regular file).
    Mknod {
        path: P,
        fifo: bool,
    },
    Symlink {
        path: P,
        target: u8,
    },
    Readlink {
        path: P,
    },
    Lookup {
        path: P,
    },
    Unlink {
        path: P,
    },
    Rmdir {
        path: P,
    },
    Rename {
        from: P,
        to: P,
        flag: RFlag,
    },
    Link {
        from: P,
        to: P,
    },
    /// open, write, flush, release.
    Write {
        path: P,
        off: u64,
        len: u32,
        seed: u8,
    },
    /// open, read, release.
    Read {
        path: P,
        off: u64,
        len: u32,
    },
    Truncate {
        path: P,
        size: u64,
    },
    Chmod {
        path: P,
        perm: Perm,
    },
    Chown {
        path: P,
        uid: u32,
        gid: u32,
    },
    SetXattr {
        path: P,
        name: u8,
        len: u16,
        seed: u8,
        mode: XMode,
    },
    GetXattr {
        path: P,
        name: u8,
    },
    RemoveXattr {
        path: P,
        name: u8,
    },
    ListXattr {
        path: P,
    },
    Readdir {
        path: P,
        pick: u8,
    },
    Open {
        path: P,
        trunc: bool,
    },
    /// Operations on the open handle number `h % open handles`.
    HWrite {
        h: u8,
        off: u64,
        len: u32,
        seed: u8,
    },
    HRead {
        h: u8,
        off: u64,
        len: u32,
    },
    HTruncate {
        h: u8,
        size: u64,
    },
    HFallocate {
        h: u8,
        off: u64,
        len: u32,
        mode: Falloc,
    },
    HFlush {
        h: u8,
    },
    HFsync {
        h: u8,
        datasync: bool,
    },
    HStat {
        h: u8,
    },
    HRelease {
        h: u8,
    },
    Statfs,
    /// Compare every node including contents, targets and xattrs.
    Verify,
    /// Release all handles, shut down, drop the engine, reopen the stores, start, verify.
    Remount,
}

const SYMLINK_TARGETS: [&str; 4] = ["a", "../b/c", "/etc/passwd", "x"];

fn symlink_target(t: u8) -> Vec<u8> {
    match t {
        // The longest target Linux accepts (PATH_MAX - 1) and one byte more.
        4 => vec![b't'; SYMLINK_MAX],
        5 => vec![b'T'; SYMLINK_MAX + 1],
        t => SYMLINK_TARGETS[t as usize % SYMLINK_TARGETS.len()]
            .as_bytes()
            .to_vec(),
    }
}

const XATTR_NAMES: [&str; 3] = ["user.a", "user.b", "user.c"];

fn xattr_name(n: u8) -> Vec<u8> {
    XATTR_NAMES[n as usize % XATTR_NAMES.len()]
        .as_bytes()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn short_name() -> impl Strategy<Value = Name> {
    (0u8..4).prop_map(Name::Short)
}

/// Names for entries about to be created: sometimes NAME_MAX long, sometimes too long.
fn new_name() -> BoxedStrategy<Name> {
    prop_oneof![
        40 => short_name(),
        1 => Just(Name::Max),
        1 => Just(Name::TooLong),
    ]
    .boxed()
}

/// A literal path of 1 to 3 components whose last component comes from `last`.
fn path_with(last: BoxedStrategy<Name>) -> impl Strategy<Value = P> {
    (
        prop_oneof![5 => Just(0usize), 3 => Just(1usize), 2 => Just(2usize)],
        proptest::collection::vec(short_name(), 2),
        last,
    )
        .prop_map(|(depth, prefix, last)| {
            let mut v = prefix[..depth].to_vec();
            v.push(last);
            P::Lit(v)
        })
}

/// An existing node (mostly).
fn path() -> impl Strategy<Value = P> {
    prop_oneof![
        1 => path_with(short_name().boxed()),
        4 => any::<u8>().prop_map(P::Nth),
    ]
}

/// An existing node, by index only (for operations a missing path would only skip).
fn node() -> impl Strategy<Value = P> {
    any::<u8>().prop_map(P::Nth)
}

/// A place for a new entry (sometimes an existing one).
fn new_path() -> impl Strategy<Value = P> {
    prop_oneof![
        1 => path_with(new_name()),
        4 => (any::<u8>(), new_name()).prop_map(|(d, n)| P::In(d, n)),
        1 => any::<u8>().prop_map(P::Nth),
    ]
}

/// A directory (mostly).
fn dir_path() -> impl Strategy<Value = P> {
    prop_oneof![
        1 => (
            prop_oneof![3 => Just(0usize), 3 => Just(1usize), 2 => Just(2usize)],
            proptest::collection::vec(short_name(), 2),
        )
            .prop_map(|(depth, v)| P::Lit(v[..depth].to_vec())),
        4 => any::<u8>().prop_map(P::Nth),
    ]
}

/// Offsets: mostly within the first 200 KiB, often right at a block boundary, rarely around
/// the first chunk boundary (64 MiB).
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0u64..200 * KIB,
        4 => (1u64..4, -40i64..40).prop_map(|(k, d)| (k * BLOCK) as i64 + d).prop_map(|v| v as u64),
        1 => (-100 * KIB as i64..100 * KIB as i64).prop_map(|d| (CHUNK as i64 + d) as u64),
    ]
}

fn write_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 1u32..4096,
        4 => 1u32..70 * 1024,
        1 => Just(BLOCK as u32),
    ]
}

fn read_len() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 1u32..8192, 3 => 1u32..128 * 1024]
}

fn new_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        10 => 0u64..250 * KIB,
        4 => (1u64..4, -40i64..40).prop_map(|(k, d)| ((k * BLOCK) as i64 + d) as u64),
        1 => (-100 * KIB as i64..100 * KIB as i64).prop_map(|d| (CHUNK as i64 + d) as u64),
    ]
}

fn perm() -> impl Strategy<Value = Perm> {
    prop::sample::select(vec![
        0o644u16, 0o600, 0o755, 0o700, 0o777, 0o400, 0o1777, 0o0,
    ])
    .prop_map(Perm)
}

fn rflag() -> impl Strategy<Value = RFlag> {
    prop_oneof![6 => Just(RFlag::None), 1 => Just(RFlag::NoReplace), 2 => Just(RFlag::Exchange)]
}

fn xmode() -> impl Strategy<Value = XMode> {
    prop_oneof![3 => Just(XMode::Any), 1 => Just(XMode::Create), 1 => Just(XMode::Replace)]
}

fn xattr_len() -> impl Strategy<Value = u16> {
    prop_oneof![6 => 0u16..64, 1 => Just(4000u16)]
}

fn falloc() -> impl Strategy<Value = Falloc> {
    prop_oneof![
        Just(Falloc::Alloc),
        Just(Falloc::KeepSize),
        Just(Falloc::Punch)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (new_path(), perm()).prop_map(|(path, perm)| Op::Create { path, perm }),
        5 => (new_path(), perm()).prop_map(|(path, perm)| Op::Mkdir { path, perm }),
        1 => (new_path(), any::<bool>()).prop_map(|(path, fifo)| Op::Mknod { path, fifo }),
        2 => (new_path(), 0u8..6).prop_map(|(path, target)| Op::Symlink { path, target }),
        1 => node().prop_map(|path| Op::Readlink { path }),
        2 => new_path().prop_map(|path| Op::Lookup { path }),
        4 => path().prop_map(|path| Op::Unlink { path }),
        3 => path().prop_map(|path| Op::Rmdir { path }),
        10 => (path(), new_path(), rflag()).prop_map(|(from, to, flag)| Op::Rename { from, to, flag }),
        3 => (path(), new_path()).prop_map(|(from, to)| Op::Link { from, to }),
        10 => (node(), offset(), write_len(), any::<u8>())
            .prop_map(|(path, off, len, seed)| Op::Write { path, off, len, seed }),
        5 => (node(), offset(), read_len()).prop_map(|(path, off, len)| Op::Read { path, off, len }),
        4 => (node(), new_size()).prop_map(|(path, size)| Op::Truncate { path, size }),
        1 => (node(), perm()).prop_map(|(path, perm)| Op::Chmod { path, perm }),
        1 => (path(), prop::sample::select(vec![0u32, 1000]), prop::sample::select(vec![0u32, 100]))
            .prop_map(|(path, uid, gid)| Op::Chown { path, uid, gid }),
        3 => (node(), 0u8..3, xattr_len(), any::<u8>(), xmode())
            .prop_map(|(path, name, len, seed, mode)| Op::SetXattr { path, name, len, seed, mode }),
        1 => (node(), 0u8..3).prop_map(|(path, name)| Op::GetXattr { path, name }),
        1 => (node(), 0u8..3).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
        1 => node().prop_map(|path| Op::ListXattr { path }),
        2 => (dir_path(), any::<u8>()).prop_map(|(path, pick)| Op::Readdir { path, pick }),
        7 => (node(), prop::bool::weighted(0.2)).prop_map(|(path, trunc)| Op::Open { path, trunc }),
        9 => (any::<u8>(), offset(), write_len(), any::<u8>())
            .prop_map(|(h, off, len, seed)| Op::HWrite { h, off, len, seed }),
        5 => (any::<u8>(), offset(), read_len()).prop_map(|(h, off, len)| Op::HRead { h, off, len }),
        2 => (any::<u8>(), new_size()).prop_map(|(h, size)| Op::HTruncate { h, size }),
        2 => (any::<u8>(), offset(), write_len(), falloc())
            .prop_map(|(h, off, len, mode)| Op::HFallocate { h, off, len, mode }),
        2 => any::<u8>().prop_map(|h| Op::HFlush { h }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(h, datasync)| Op::HFsync { h, datasync }),
        2 => any::<u8>().prop_map(|h| Op::HStat { h }),
        3 => any::<u8>().prop_map(|h| Op::HRelease { h }),
        1 => Just(Op::Statfs),
        1 => Just(Op::Verify),
        2 => Just(Op::Remount),
    ]
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

const PAGE: u64 = 4096;

/// Sparse file contents: 4 KiB pages, absent pages are zeros; bytes past `size` are zero.
#[derive(Default)]
struct Content {
    size: u64,
    pages: BTreeMap<u64, Vec<u8>>,
}

impl Content {
    fn write(&mut self, off: u64, data: &[u8]) {
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

    fn read(&self, off: u64, len: u64) -> Vec<u8> {
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

    fn set_size(&mut self, new: u64) {
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
    fn zero(&mut self, off: u64, len: u64) {
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

type MId = usize;
const MROOT: MId = 0;

struct MNode {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    /// Directory entries naming this node (non-directories).
    links: u32,
    data: Content,
    target: Vec<u8>,
    entries: BTreeMap<Vec<u8>, MId>,
    /// Parent of a directory.
    parent: MId,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Open handles.
    open: u32,
}

impl MNode {
    fn new(kind: FileKind, perm: u16) -> MNode {
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

struct Model {
    nodes: HashMap<MId, MNode>,
    next: MId,
}

impl Model {
    /// Every node reachable from the root with its path, in path order (the root first).
    fn paths(&self) -> Vec<(Vec<Name>, MId)> {
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

    fn new() -> Model {
        let mut nodes = HashMap::new();
        nodes.insert(MROOT, MNode::new(FileKind::Dir, 0o755));
        Model { nodes, next: 1 }
    }

    fn node(&self, id: MId) -> &MNode {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: MId) -> &mut MNode {
        self.nodes.get_mut(&id).expect("live model node")
    }

    fn kind(&self, id: MId) -> FileKind {
        self.node(id).kind
    }

    fn child(&self, dir: MId, name: &[u8]) -> Option<MId> {
        self.node(dir).entries.get(name).copied()
    }

    fn nlink(&self, id: MId) -> u32 {
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
    fn resolve(&self, path: &[Vec<u8>]) -> Result<MId, i32> {
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
    fn resolve_parent(&self, path: &[Vec<u8>]) -> Option<(MId, Vec<u8>)> {
        let (last, prefix) = path.split_last()?;
        let dir = self.resolve(prefix).ok()?;
        (self.kind(dir) == FileKind::Dir).then(|| (dir, last.clone()))
    }

    /// Whether `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: MId, b: MId) -> bool {
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

    fn add(&mut self, dir: MId, name: &[u8], mut node: MNode) -> MId {
        let id = self.next;
        self.next += 1;
        node.parent = dir;
        self.nodes.insert(id, node);
        self.node_mut(dir).entries.insert(name.to_vec(), id);
        id
    }

    /// Removes the entry and drops its node if nothing references it any more.
    fn remove_entry(&mut self, dir: MId, name: &[u8]) {
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

    fn maybe_free(&mut self, id: MId) {
        let n = self.node(id);
        if n.kind != FileKind::Dir && n.links == 0 && n.open == 0 {
            self.nodes.remove(&id);
        }
    }

    /// Linux's answer to renameat2 (after the parents resolved).
    fn rename_check(&self, sp: MId, sn: &[u8], dp: MId, dn: &[u8], flag: RFlag) -> Result<(), i32> {
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

    fn rename_apply(&mut self, sp: MId, sn: &[u8], dp: MId, dn: &[u8], flag: RFlag) {
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

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// Engine buffer sizes of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Buffers {
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

struct Handle {
    m: MId,
    ino: Ino,
    fh: u64,
}

struct Harness {
    vol: common::Volume,
    config: EngineConfig,
    writeback: bool,
    engine: Option<Arc<Engine>>,
    m: Model,
    /// Model node -> engine inode.
    map: HashMap<MId, Ino>,
    handles: Vec<Handle>,
    /// The operation being run, with literal paths.
    current: Option<Op>,
}

fn errname(e: i32) -> String {
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
fn outcome<T>(what: &str, exp: Result<(), i32>, got: &Result<T, FsError>) -> Result<bool, String> {
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

fn ok<T>(what: &str, got: Result<T, FsError>) -> Result<T, String> {
    got.map_err(|e| format!("{what}: engine fails with {}: {e}", errname(e.errno())))
}

/// Describes where two byte strings first differ.
fn diff(what: &str, exp: &[u8], got: &[u8]) -> Result<(), String> {
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

impl Harness {
    fn new(buffers: Buffers) -> Harness {
        let vol = common::Volume::new();
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

    fn start(&mut self) {
        let staging = self.writeback.then(|| {
            spoolfs_engine::writeback::StagingSettings::for_tests(self.vol.dir.path().join("cache"))
        });
        self.engine = Some(self.vol.start_engine(staging.as_ref(), self.config.clone()));
    }

    fn e(&self) -> &Engine {
        self.engine.as_ref().expect("engine running")
    }

    fn ino(&self, id: MId) -> Ino {
        self.map[&id]
    }

    /// Records the engine's inode of a new model node.
    fn bind(&mut self, id: MId, attr: &Attr) -> Result<(), String> {
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
    fn sync_map(&mut self) {
        let nodes = &self.m.nodes;
        self.map.retain(|id, _| nodes.contains_key(id));
    }

    fn cmp_attr(&self, what: &str, id: MId, a: &Attr) -> Result<(), String> {
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

    fn pick(&self, h: u8) -> Option<usize> {
        (!self.handles.is_empty()).then(|| h as usize % self.handles.len())
    }

    /// Path ops on the node a path names, if it resolves to one of `kinds`.
    fn target(&self, path: &P, kinds: &[FileKind]) -> Option<MId> {
        let id = self.m.resolve(&path.names()).ok()?;
        kinds.contains(&self.m.kind(id)).then_some(id)
    }

    fn open_handle(&mut self, id: MId, fh: u64) -> Result<(), String> {
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

    fn close_handle(&mut self, idx: usize, flush: bool) -> Result<(), String> {
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

    fn write_through(&mut self, id: MId, fh: u64, off: u64, data: &[u8]) -> Result<(), String> {
        let n = ok("write", self.e().write(&ROOT, self.ino(id), fh, off, data))?;
        if n as usize != data.len() {
            return Err(format!("write: engine wrote {n} of {} bytes", data.len()));
        }
        self.m.node_mut(id).data.write(off, data);
        let attr = ok("getattr after write", self.e().getattr(self.ino(id)))?;
        self.cmp_attr("getattr after write", id, &attr)
    }

    fn read_through(&self, id: MId, fh: u64, off: u64, len: u32) -> Result<(), String> {
        let got = ok("read", self.e().read(self.ino(id), fh, off, len))?;
        let exp = self.m.node(id).data.read(off, len as u64);
        diff(&format!("read {len} bytes at {off}"), &exp, &got)
    }

    /// Turns the paths of an operation into literal paths; `None` if there is nothing to act on.
    fn resolve_op(&self, op: &Op) -> Option<Op> {
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
    fn step(&mut self, op: &Op) -> Result<Option<Op>, String> {
        let Some(op) = self.resolve_op(op) else {
            return Ok(None);
        };
        self.current = Some(op.clone());
        let ran = self.exec(&op).map_err(|e| format!("{op:?}: {e}"))?;
        Ok(ran.then_some(op))
    }

    /// Runs one operation with literal paths; `Ok(false)` if the harness skipped it.
    fn exec(&mut self, op: &Op) -> Result<bool, String> {
        use FileKind::*;
        match op {
            Op::Create { path, perm } => {
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
                let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
                let got = self
                    .e()
                    .create(&ROOT, self.ino(dir), &name, perm.0 as u32, flags);
                if outcome("create", exp, &got)? {
                    let (attr, fh) = got.unwrap();
                    let id = self.m.add(dir, &name, MNode::new(File, perm.0));
                    self.bind(id, &attr)?;
                    self.cmp_attr("create", id, &attr)?;
                    self.open_handle(id, fh)?;
                }
            }
            Op::Mkdir { path, perm } => {
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
                let got = self.e().mkdir(&ROOT, self.ino(dir), &name, perm.0 as u32);
                if outcome("mkdir", exp, &got)? {
                    let attr = got.unwrap();
                    let id = self.m.add(dir, &name, MNode::new(Dir, perm.0));
                    self.bind(id, &attr)?;
                    self.cmp_attr("mkdir", id, &attr)?;
                }
            }
            Op::Mknod { path, fifo } => {
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
                let (kind, fmt) = if *fifo {
                    (Fifo, libc::S_IFIFO)
                } else {
                    (File, libc::S_IFREG)
                };
                let got = self.e().mknod(&ROOT, self.ino(dir), &name, fmt | 0o640, 0);
                if outcome("mknod", exp, &got)? {
                    let attr = got.unwrap();
                    let id = self.m.add(dir, &name, MNode::new(kind, 0o640));
                    self.bind(id, &attr)?;
                    self.cmp_attr("mknod", id, &attr)?;
                }
            }
            Op::Symlink { path, target } => {
                let Some((dir, name)) = self.m.resolve_parent(&path.names()) else {
                    return Ok(false);
                };
                let target = symlink_target(*target);
                let exp = if target.len() > SYMLINK_MAX || name.len() > NAME_MAX {
                    Err(libc::ENAMETOOLONG)
                } else if self.m.child(dir, &name).is_some() {
                    Err(libc::EEXIST)
                } else {
                    Ok(())
                };
                let got = self.e().symlink(&ROOT, self.ino(dir), &name, &target);
                if outcome("symlink", exp, &got)? {
                    let attr = got.unwrap();
                    let mut node = MNode::new(Symlink, 0o777);
                    node.target = target;
                    let id = self.m.add(dir, &name, node);
                    self.bind(id, &attr)?;
                    self.cmp_attr("symlink", id, &attr)?;
                }
            }
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
            Op::SetXattr {
                path,
                name,
                len,
                seed,
                mode,
            } => {
                let Some(id) = self.target(path, &[File, Dir]) else {
                    return Ok(false);
                };
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
            Op::GetXattr { path, name } => {
                let Some(id) = self.target(path, &[File, Dir]) else {
                    return Ok(false);
                };
                let name = xattr_name(*name);
                let value = self.m.node(id).xattrs.get(&name).cloned();
                let exp = value.as_ref().map(|_| ()).ok_or(libc::ENODATA);
                let got = self.e().getxattr(self.ino(id), &name);
                if outcome("getxattr", exp, &got)? {
                    diff("getxattr", &value.unwrap(), &got.unwrap())?;
                }
            }
            Op::RemoveXattr { path, name } => {
                let Some(id) = self.target(path, &[File, Dir]) else {
                    return Ok(false);
                };
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
            Op::ListXattr { path } => {
                let Some(id) = self.target(path, &[File, Dir]) else {
                    return Ok(false);
                };
                self.check_xattrs(id)?;
            }
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
            Op::Open { path, trunc } => {
                let Some(id) = self.target(path, &[File]) else {
                    return Ok(false);
                };
                if self.handles.len() >= MAX_HANDLES {
                    return Ok(false);
                }
                let flags = libc::O_RDWR | if *trunc { libc::O_TRUNC } else { 0 };
                let fh = ok("open", self.e().open(&ROOT, self.ino(id), flags))?;
                if *trunc {
                    self.m.node_mut(id).data.set_size(0);
                }
                self.open_handle(id, fh)?;
            }
            Op::HWrite { h, off, len, seed } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                let (id, fh) = (self.handles[i].m, self.handles[i].fh);
                let data = random_bytes(*seed as u64 ^ (*off << 8) ^ 0x55, *len as usize);
                self.write_through(id, fh, *off, &data)?;
            }
            Op::HRead { h, off, len } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                self.read_through(self.handles[i].m, self.handles[i].fh, *off, *len)?;
            }
            Op::HTruncate { h, size } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                let Handle { m: id, ino, fh } = self.handles[i];
                let set = SetAttr {
                    size: Some(*size),
                    fh: Some(fh),
                    ..Default::default()
                };
                let attr = ok("ftruncate", self.e().setattr(&ROOT, ino, &set))?;
                self.m.node_mut(id).data.set_size(*size);
                self.cmp_attr("ftruncate", id, &attr)?;
            }
            Op::HFallocate { h, off, len, mode } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                let Handle { m: id, ino, fh } = self.handles[i];
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
            Op::HFlush { h } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                ok(
                    "flush",
                    self.e().flush(self.handles[i].ino, self.handles[i].fh),
                )?;
            }
            Op::HFsync { h, datasync } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                let (ino, fh) = (self.handles[i].ino, self.handles[i].fh);
                ok("fsync", self.e().fsync(ino, fh, *datasync))?;
            }
            Op::HStat { h } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                let id = self.handles[i].m;
                let attr = ok("fstat", self.e().getattr(self.handles[i].ino))?;
                self.cmp_attr("fstat", id, &attr)?;
            }
            Op::HRelease { h } => {
                let Some(i) = self.pick(*h) else {
                    return Ok(false);
                };
                self.close_handle(i, true)?;
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
        }
        self.sync_map();
        Ok(true)
    }

    /// The whole listing of a directory from `cookie` on.
    fn list_dir(&self, ino: Ino, fh: u64, cookie: u64) -> Result<Vec<DirEntry>, String> {
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
    fn cmp_listing(&self, id: MId, all: &[DirEntry]) -> Result<(), String> {
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

    fn check_xattrs(&self, id: MId) -> Result<(), String> {
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
    fn check_content(&self, id: MId, fh: u64) -> Result<(), String> {
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
    fn check_tree(&self, deep: bool) -> Result<(), String> {
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

    fn finish(mut self) -> Result<(), String> {
        while !self.handles.is_empty() {
            self.close_handle(0, true)?;
        }
        ok("shutdown", self.e().shutdown())?;
        Ok(())
    }
}

fn lossy(v: &[Vec<u8>]) -> Vec<String> {
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

/// A failed run: what went wrong, and the operations that ran (with literal paths, the failing
/// one last).
struct Failure {
    msg: String,
    ran: Vec<Op>,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "(non-string panic)".into(),
        },
    }
}

/// Runs `f`, turning a panic (of the engine or of the harness) into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!("panic: {}", panic_text(p))),
    }
}

/// Drops a harness after a failure (its engine may be in any state).
fn drop_quietly(h: Harness) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(h)));
}

/// Runs a sequence against a fresh volume and the model.
fn run_ops_with(buffers: Buffers, ops: &[Op]) -> Result<(), Failure> {
    let mut h = match guarded(|| Ok(Harness::new(buffers))) {
        Ok(h) => h,
        Err(msg) => return Err(Failure { msg, ran: vec![] }),
    };
    let mut ran: Vec<Op> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let step = guarded(|| h.step(op));
        let done = match step {
            Ok(done) => done,
            Err(e) => {
                ran.extend(h.current.take());
                let msg = format!("step {i}: {e}");
                drop_quietly(h);
                return Err(Failure { msg, ran });
            }
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            match &done {
                Some(r) => eprintln!("ran  {i} {r:?}"),
                None => eprintln!("skip {i} {op:?}"),
            }
        }
        match done {
            Some(op) => {
                OPS_RUN.fetch_add(1, Ordering::Relaxed);
                ran.push(op.clone());
                if let Err(e) = guarded(|| h.check_tree(false)) {
                    let msg = format!("after step {i} {op:?}: {e}");
                    drop_quietly(h);
                    return Err(Failure { msg, ran });
                }
            }
            None => {
                OPS_SKIPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Err(e) = guarded(|| h.check_tree(true)) {
        drop_quietly(h);
        return Err(Failure {
            msg: format!("final check: {e}"),
            ran,
        });
    }
    guarded(|| h.finish()).map_err(|e| Failure {
        msg: format!("finish: {e}"),
        ran,
    })
}

/// Formats operations as Rust code for a regression test.
fn listing(ops: &[Op]) -> String {
    let mut out = String::from("run_ops(&[\n");
    for op in ops {
        out.push_str(&format!("    Op::{op:?},\n"));
    }
    out.push_str("]);\n");
    out
}

/// Shrinks a failing sequence of literal operations by deleting ranges of operations while it
/// still fails (literal paths keep their meaning when other operations go, unlike indexes).
fn minimize(buffers: Buffers, mut ops: Vec<Op>, deadline: Instant) -> (Vec<Op>, String) {
    let mut msg = match run_ops_with(buffers, &ops) {
        Ok(()) => return (ops, "(the sequence no longer fails)".into()),
        Err(f) => {
            ops = f.ran;
            f.msg
        }
    };
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut progress = false;
        let mut start = 0;
        while start < ops.len() && Instant::now() < deadline {
            let mut candidate = ops.clone();
            candidate.drain(start..(start + chunk).min(ops.len()));
            match run_ops_with(buffers, &candidate) {
                Err(f) => {
                    ops = f.ran;
                    msg = f.msg;
                    progress = true;
                }
                Ok(()) => start += chunk,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        if !progress {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    (ops, msg)
}

/// Runs a hand-written sequence with both buffer configurations; panics with a minimized
/// sequence if it fails.
fn run_ops(ops: &[Op]) {
    for buffers in [
        Buffers::Large,
        Buffers::Small,
        Buffers::Tiny,
        Buffers::Writeback,
    ] {
        if let Err(f) = run_ops_with(buffers, ops) {
            panic!("{buffers:?}: {}\n{}", f.msg, listing(&f.ran));
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn model_random_ops() {
    let cases = env_usize("PROPTEST_CASES", 128) as u32;
    let max_ops = env_usize("MODEL_OPS", 150);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        max_shrink_time: 300_000,
        ..ProptestConfig::default()
    };
    // Panics inside the engine are failures to shrink; keep their messages out of the way.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET.load(Ordering::Relaxed)
            || std::thread::current().name() != Some("model_random_ops")
        {
            default_hook(info);
        }
    }));
    QUIET.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut runner = TestRunner::new(config);
    let buffers = prop_oneof![
        Just(Buffers::Large),
        Just(Buffers::Small),
        Just(Buffers::Tiny),
        Just(Buffers::Writeback)
    ];
    let strategy = (buffers, proptest::collection::vec(op(), 1..=max_ops));
    let result = runner.run(&strategy, |(buffers, ops)| {
        run_ops_with(buffers, &ops).map_err(|f| TestCaseError::fail(f.msg))
    });
    let run = OPS_RUN.load(Ordering::Relaxed);
    let skipped = OPS_SKIPPED.load(Ordering::Relaxed);
    eprintln!(
        "model_random_ops: {cases} cases, {run} operations run, {skipped} skipped, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {
            QUIET.store(false, Ordering::Relaxed);
            // The contract of this test: a default run executes thousands of operations.
            if std::env::var("PROPTEST_CASES").is_err() && std::env::var("MODEL_OPS").is_err() {
                assert!(
                    run >= 3000,
                    "only {run} operations ran; the model test must run thousands"
                );
            }
        }
        Err(TestError::Fail(reason, (buffers, ops))) => {
            let deadline = Instant::now() + Duration::from_secs(120);
            let (min, msg) = minimize(buffers, ops.clone(), deadline);
            QUIET.store(false, Ordering::Relaxed);
            panic!(
                "proptest's minimal input ({buffers:?}) failed with: {reason}\n{ops:#?}\n\n\
                 minimized with literal paths ({buffers:?}), failing with: {msg}\n{}",
                listing(&min)
            );
        }
        Err(e) => {
            QUIET.store(false, Ordering::Relaxed);
            panic!("{e}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic regressions
// ---------------------------------------------------------------------------------------------

#[test]
fn write_truncate_down_extend_reads_zeros() {
    run_ops(&[
        Op::Create {
            path: p("a"),
            perm: Perm(0o644),
        },
        Op::HWrite {
            h: 0,
            off: 0,
            len: 100_000,
            seed: 1,
        },
        Op::HFlush { h: 0 },
        Op::Truncate {
            path: p("a"),
            size: 10_000,
        },
        Op::Read {
            path: p("a"),
            off: 0,
            len: 100_000,
        },
        Op::Truncate {
            path: p("a"),
            size: 150_000,
        },
        Op::HRead {
            h: 0,
            off: 9_000,
            len: 100_000,
        },
        // Data written after the shrink must not resurrect the old bytes around it.
        Op::HWrite {
            h: 0,
            off: 120_000,
            len: 10,
            seed: 2,
        },
        Op::HRead {
            h: 0,
            off: 0,
            len: 150_000,
        },
        Op::HTruncate { h: 0, size: 5_000 },
        Op::HTruncate { h: 0, size: 70_000 },
        Op::Remount,
        Op::Read {
            path: p("a"),
            off: 0,
            len: 131_072,
        },
    ]);
}

#[test]
fn overwrite_inside_earlier_slice_across_block_boundary() {
    run_ops(&[
        Op::Create {
            path: p("b"),
            perm: Perm(0o644),
        },
        Op::HWrite {
            h: 0,
            off: 0,
            len: 200 * 1024,
            seed: 3,
        },
        Op::HFlush { h: 0 },
        Op::Open {
            path: p("b"),
            trunc: false,
        },
        // Unflushed overwrite through a second handle, straddling the 64 KiB block boundary.
        Op::HWrite {
            h: 1,
            off: BLOCK - 500,
            len: 1000,
            seed: 4,
        },
        Op::HRead {
            h: 0,
            off: BLOCK - 5000,
            len: 10_000,
        },
        Op::HFlush { h: 1 },
        Op::HRead {
            h: 0,
            off: 0,
            len: 128 * 1024,
        },
        // Overwrite again inside the overwritten range, then across the next boundary.
        Op::HWrite {
            h: 0,
            off: BLOCK - 100,
            len: 2 * BLOCK as u32 + 200,
            seed: 5,
        },
        Op::HRead {
            h: 1,
            off: BLOCK - 1000,
            len: 100_000,
        },
        Op::Remount,
        Op::Read {
            path: p("b"),
            off: BLOCK - 1000,
            len: 128 * 1024,
        },
    ]);
}

#[test]
fn small_writes_around_the_chunk_boundary() {
    run_ops(&[
        Op::Create {
            path: p("c"),
            perm: Perm(0o600),
        },
        Op::HWrite {
            h: 0,
            off: CHUNK - 5,
            len: 10,
            seed: 6,
        },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::HFlush { h: 0 },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::Truncate {
            path: p("c"),
            size: CHUNK - 2,
        },
        Op::HWrite {
            h: 0,
            off: CHUNK + 3,
            len: 4,
            seed: 7,
        },
        Op::HRead {
            h: 0,
            off: CHUNK - 10,
            len: 20,
        },
        Op::Remount,
        Op::Read {
            path: p("c"),
            off: CHUNK - 10,
            len: 20,
        },
    ]);
}

#[test]
fn namespace_edge_cases() {
    run_ops(&[
        Op::Mkdir {
            path: p("a"),
            perm: Perm(0o755),
        },
        Op::Mkdir {
            path: p("a/b"),
            perm: Perm(0o755),
        },
        Op::Create {
            path: p("c"),
            perm: Perm(0o644),
        },
        Op::Link {
            from: p("c"),
            to: p("a/c"),
        },
        // Rename onto another link of the same file: no-op.
        Op::Rename {
            from: p("c"),
            to: p("a/c"),
            flag: RFlag::None,
        },
        Op::Link {
            from: p("a"),
            to: p("d"),
        },
        Op::Rename {
            from: p("c"),
            to: p("a"),
            flag: RFlag::None,
        },
        Op::Rename {
            from: p("a"),
            to: p("c"),
            flag: RFlag::None,
        },
        Op::Rename {
            from: p("a/b"),
            to: p("c"),
            flag: RFlag::Exchange,
        },
        Op::Rename {
            from: p("a/b"),
            to: p("a"),
            flag: RFlag::NoReplace,
        },
        Op::Rmdir { path: p("c") },
        Op::Unlink { path: p("a") },
        Op::Rmdir { path: p("a") },
        Op::Create {
            path: p("L*256"),
            perm: Perm(0o644),
        },
        Op::Create {
            path: p("m*255"),
            perm: Perm(0o644),
        },
        Op::Remount,
    ]);
}
