//! Helpers shared by the engine's integration tests (each test file is its own crate and
//! includes this module with `mod common;`).

/// Deterministic pseudo-random bytes (xorshift): the same for the same seed, different
/// across seeds, so a test writes data it can check byte for byte later.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
