//! The operations of the model test, and the proptest strategies that generate them.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    /// One of "a", "b", "c", "d".
    Short(u8),
    /// A name of exactly NAME_MAX (255) bytes.
    Max,
    /// A name of 256 bytes: ENAMETOOLONG.
    TooLong,
}

impl Name {
    pub(crate) fn bytes(self) -> Vec<u8> {
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
pub(crate) enum P {
    /// A path from the root; empty means the root itself.
    Lit(Vec<Name>),
    /// The n-th (modulo their number) existing node of a kind the operation takes, in path order.
    Nth(u8),
    /// Entry `name` of the n-th (modulo their number) directory in path order, the root first.
    In(u8, Name),
}

impl P {
    pub(crate) fn names(&self) -> Vec<Vec<u8>> {
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

pub(crate) fn name_of(bytes: &[u8]) -> Name {
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
pub(crate) fn p(s: &str) -> P {
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
pub(crate) struct Perm(pub(crate) u16);

impl fmt::Debug for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Perm(0o{:o})", self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RFlag {
    None,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum XMode {
    Any,
    Create,
    Replace,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Falloc {
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
pub(crate) enum Op {
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

pub(crate) const SYMLINK_TARGETS: [&str; 4] = ["a", "../b/c", "/etc/passwd", "x"];

pub(crate) fn symlink_target(t: u8) -> Vec<u8> {
    match t {
        // The longest target Linux accepts (PATH_MAX - 1) and one byte more.
        4 => vec![b't'; SYMLINK_MAX],
        5 => vec![b'T'; SYMLINK_MAX + 1],
        t => SYMLINK_TARGETS[t as usize % SYMLINK_TARGETS.len()]
            .as_bytes()
            .to_vec(),
    }
}

pub(crate) const XATTR_NAMES: [&str; 3] = ["user.a", "user.b", "user.c"];

pub(crate) fn xattr_name(n: u8) -> Vec<u8> {
    XATTR_NAMES[n as usize % XATTR_NAMES.len()]
        .as_bytes()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

pub(crate) fn short_name() -> impl Strategy<Value = Name> {
    (0u8..4).prop_map(Name::Short)
}

/// Names for entries about to be created: sometimes NAME_MAX long, sometimes too long.
pub(crate) fn new_name() -> BoxedStrategy<Name> {
    prop_oneof![
        40 => short_name(),
        1 => Just(Name::Max),
        1 => Just(Name::TooLong),
    ]
    .boxed()
}

/// A literal path of 1 to 3 components whose last component comes from `last`.
pub(crate) fn path_with(last: BoxedStrategy<Name>) -> impl Strategy<Value = P> {
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
pub(crate) fn path() -> impl Strategy<Value = P> {
    prop_oneof![
        1 => path_with(short_name().boxed()),
        4 => any::<u8>().prop_map(P::Nth),
    ]
}

/// An existing node, by index only (for operations a missing path would only skip).
pub(crate) fn node() -> impl Strategy<Value = P> {
    any::<u8>().prop_map(P::Nth)
}

/// A place for a new entry (sometimes an existing one).
pub(crate) fn new_path() -> impl Strategy<Value = P> {
    prop_oneof![
        1 => path_with(new_name()),
        4 => (any::<u8>(), new_name()).prop_map(|(d, n)| P::In(d, n)),
        1 => any::<u8>().prop_map(P::Nth),
    ]
}

/// A directory (mostly).
pub(crate) fn dir_path() -> impl Strategy<Value = P> {
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
pub(crate) fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0u64..200 * KIB,
        4 => (1u64..4, -40i64..40).prop_map(|(k, d)| (k * BLOCK) as i64 + d).prop_map(|v| v as u64),
        1 => (-100 * KIB as i64..100 * KIB as i64).prop_map(|d| (CHUNK as i64 + d) as u64),
    ]
}

pub(crate) fn write_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => 1u32..4096,
        4 => 1u32..70 * 1024,
        1 => Just(BLOCK as u32),
    ]
}

pub(crate) fn read_len() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 1u32..8192, 3 => 1u32..128 * 1024]
}

pub(crate) fn new_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        10 => 0u64..250 * KIB,
        4 => (1u64..4, -40i64..40).prop_map(|(k, d)| ((k * BLOCK) as i64 + d) as u64),
        1 => (-100 * KIB as i64..100 * KIB as i64).prop_map(|d| (CHUNK as i64 + d) as u64),
    ]
}

pub(crate) fn perm() -> impl Strategy<Value = Perm> {
    prop::sample::select(vec![
        0o644u16, 0o600, 0o755, 0o700, 0o777, 0o400, 0o1777, 0o0,
    ])
    .prop_map(Perm)
}

pub(crate) fn rflag() -> impl Strategy<Value = RFlag> {
    prop_oneof![6 => Just(RFlag::None), 1 => Just(RFlag::NoReplace), 2 => Just(RFlag::Exchange)]
}

pub(crate) fn xmode() -> impl Strategy<Value = XMode> {
    prop_oneof![3 => Just(XMode::Any), 1 => Just(XMode::Create), 1 => Just(XMode::Replace)]
}

pub(crate) fn xattr_len() -> impl Strategy<Value = u16> {
    prop_oneof![6 => 0u16..64, 1 => Just(4000u16)]
}

pub(crate) fn falloc() -> impl Strategy<Value = Falloc> {
    prop_oneof![
        Just(Falloc::Alloc),
        Just(Falloc::KeepSize),
        Just(Falloc::Punch)
    ]
}

pub(crate) fn op() -> impl Strategy<Value = Op> {
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
