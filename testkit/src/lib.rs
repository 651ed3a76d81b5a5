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

/// Returns from the calling test (after a loud note on stderr) when FUSE cannot be used.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if !$crate::fuse_available() {
            eprintln!(
                "SKIPPED: needs root and /dev/fuse ({} line {})",
                module_path!(),
                line!()
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
