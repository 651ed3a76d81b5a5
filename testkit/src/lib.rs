//! Engine-agnostic helpers shared by spoolfs's tests (unit tests, the engine's integration
//! tests and the FUSE integration suite): one seeded generator, the data patterns built on it,
//! a content checksum, a byte comparison that reports where two buffers differ, the check
//! that skips FUSE tests where FUSE cannot be used, and a private PostgreSQL server ([`pg`]).
//!
//! This crate depends on no spoolfs crate, so any crate can use it as a dev-dependency without
//! a cycle. Fixtures that need the engine (a formatted volume, staging settings) live next to
//! the engine's tests (`engine/tests/common`, `StagingSettings::for_tests`).

pub mod pg;

/// Deterministic pseudo-random generator (xorshift64*), so failures reproduce from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; a zero state would stay zero.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&v[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
}

/// Pseudo-random bytes determined by `seed`: the same for the same seed, different across
/// seeds, so a test writes data it can check byte for byte later.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// Values that decoders of lengths, counts and offsets get wrong: zero, one, the edges of
/// each integer width.
const EDGE_VALUES: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// A mutation of `valid` for the property tests of decoders of untrusted bytes: a few random
/// byte flips, an integer field overwritten with an edge value (little- or big-endian, any
/// width), a truncation, an extension, or a run of bytes copied from elsewhere in it.
pub fn mutate(rng: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut out = valid.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = out.len() as u64;
        match rng.below(6) {
            0 if len > 0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(len) as usize;
                    out[at] ^= 1 << rng.below(8);
                }
            }
            1 if len > 0 => {
                let width = [1usize, 2, 4, 8][rng.below(4) as usize];
                let value = EDGE_VALUES[rng.below(EDGE_VALUES.len() as u64) as usize]
                    .wrapping_add(rng.below(3))
                    .wrapping_sub(1);
                let bytes = if rng.below(2) == 0 {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                let at = rng.below(len) as usize;
                for (i, b) in bytes[..width].iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            2 => {
                let keep = rng.below(len + 1) as usize;
                out.truncate(keep);
            }
            3 => {
                let extra = rng.below(64) as usize;
                out.extend(rng.bytes(extra));
            }
            4 if len > 1 => {
                let from = rng.below(len) as usize;
                let to = rng.below(len) as usize;
                let n = (rng.below(16) as usize).min(out.len() - from.max(to));
                out.copy_within(from..from + n, to);
            }
            _ => {
                let at = rng.below(len + 1) as usize;
                out.insert(at, rng.next_u64() as u8);
            }
        }
    }
    out
}

/// A 64-bit content checksum (FNV-1a over 8-byte words, then the length).
pub fn checksum(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        h ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    for b in chunks.remainder() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^ (data.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Asserts two byte strings are equal, reporting the first differing offset (not the data).
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: contents differ (len {} vs expected {}), first difference at offset {first}: \
         got {:02x?}, expected {:02x?}",
        actual.len(),
        expected.len(),
        &actual[first..(first + 16).min(actual.len())],
        &expected[first..(first + 16).min(expected.len())],
    );
}

/// True when this process can mount FUSE file systems: it runs as root and can open
/// `/dev/fuse`.
pub fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

/// Pages of the file at `path` in the page cache, and its pages in all (`mincore`).
pub fn resident_pages(path: &std::path::Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open the file");
    let len = file.metadata().expect("stat the file").len() as usize;
    if len == 0 {
        return (0, 0);
    }
    // SAFETY: a read-only shared mapping of a file of `len` bytes, unmapped below; `vec`
    // holds one byte per page of it.
    unsafe {
        let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(at, libc::MAP_FAILED, "mmap {}", path.display());
        let mut vec = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(at, len, vec.as_mut_ptr());
        libc::munmap(at, len);
        assert_eq!(rc, 0, "mincore {}", path.display());
        (vec.iter().filter(|b| **b & 1 == 1).count(), vec.len())
    }
}

/// Writes the file at `path` back and drops it from the page cache; false when its pages
/// stay (a file system that keeps files in memory, such as tmpfs).
pub fn drop_from_page_cache(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open the file");
    file.sync_all().expect("write the file back");
    // SAFETY: a valid descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    resident_pages(path).0 == 0
}

/// Whether this run is CI (`CI=true`): CI provides everything a test needs (root,
/// `/dev/fuse`, loop devices, PostgreSQL), so there a test that cannot run fails.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The file `tests/run.sh` gives every test process: one line per skipped test, counted at
/// the end of the run.
pub const SKIP_LOG_VAR: &str = "SPOOLFS_SKIP_LOG";

/// Says that `test` cannot run on this machine, for the reason `why`; the caller returns at
/// once. Under CI (see [`under_ci`]) this panics: the test fails instead of passing without
/// checking anything. Elsewhere it prints a SKIPPED line and records the skip for the run's
/// count.
pub fn skip(test: &str, why: &str) {
    let log = std::env::var_os(SKIP_LOG_VAR).map(std::path::PathBuf::from);
    skip_with(under_ci(), log.as_deref(), "SKIPPED", test, why);
}

/// Says that `test` does not apply to this machine (its configuration rules out what the test
/// checks, e.g. a setting only an administrator changes). Counted like a skip, never a failure.
pub fn not_applicable(test: &str, why: &str) {
    let log = std::env::var_os(SKIP_LOG_VAR).map(std::path::PathBuf::from);
    skip_with(false, log.as_deref(), "NOT APPLICABLE", test, why);
}

fn skip_with(fail: bool, log: Option<&std::path::Path>, kind: &str, test: &str, why: &str) {
    if fail {
        panic!("{test} cannot run: {why} (CI=true: a test that cannot run fails)");
    }
    let line = format!("{kind}: {test}: {why}\n");
    eprint!("{line}");
    if let Some(log) = log {
        use std::io::Write;
        // One append of a whole line: test threads and processes share the file.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("cannot record the skip in {}: {e}", log.display());
        }
    }
}

/// Returns from the calling test when FUSE cannot be used (see [`skip`]: under CI the test
/// fails).
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !$crate::fuse_available() {
            $crate::skip(
                &format!("{} line {}", module_path!(), line!()),
                "needs root and /dev/fuse",
            );
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        assert_eq!(random_bytes(7, 1000), random_bytes(7, 1000));
        assert_ne!(random_bytes(7, 1000), random_bytes(8, 1000));
        // A shorter buffer is a prefix of a longer one from the same seed.
        assert_eq!(random_bytes(7, 13)[..], random_bytes(7, 1000)[..13]);
    }

    #[test]
    fn mutations_differ_from_the_input_and_reproduce_from_the_seed() {
        let valid = random_bytes(3, 100);
        let changed = (0..200)
            .filter(|&i| mutate(&mut Rng::new(i), &valid) != valid)
            .count();
        assert!(
            changed > 150,
            "only {changed} of 200 mutations changed anything"
        );
        assert_eq!(
            mutate(&mut Rng::new(9), &valid),
            mutate(&mut Rng::new(9), &valid)
        );
        // An empty input is fine too.
        for i in 0..50 {
            mutate(&mut Rng::new(i), &[]);
        }
    }

    #[test]
    fn a_skip_is_recorded_and_fails_under_ci() {
        let dir = std::env::temp_dir().join(format!("spoolfs-skip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skipped.log");
        skip_with(false, Some(&log), "SKIPPED", "t1", "needs x");
        skip_with(false, Some(&log), "NOT APPLICABLE", "t2", "y");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "SKIPPED: t1: needs x\nNOT APPLICABLE: t2: y\n");
        let under_ci = std::panic::catch_unwind(|| skip_with(true, None, "SKIPPED", "t3", "z"));
        assert!(under_ci.is_err(), "a skip under CI did not fail the test");
    }

    #[test]
    fn checksum_sees_content_and_length() {
        let a = random_bytes(1, 4097);
        let mut b = a.clone();
        b[4096] ^= 1;
        assert_ne!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&[0u8; 8]), checksum(&[0u8; 9]));
    }

    #[test]
    #[should_panic(expected = "first difference at offset 3")]
    fn assert_bytes_eq_names_the_first_difference() {
        assert_bytes_eq(b"abcdef", b"abcxef", "t");
    }
}
