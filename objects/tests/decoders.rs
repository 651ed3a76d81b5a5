//! Property tests of the decoders of untrusted object bytes (a bucket can hold anything):
//! pack index and footer, block trailer, object keys. Random and mutated valid inputs must
//! decode to an error or to something consistent with the input, never panic, overflow or
//! allocate from a length the input only claims. Seeds are fixed: a failure names the seed
//! and reproduces; inputs that once failed stay below as regression cases.

use bytes::Bytes;
use spoolfs_objects::*;
use spoolfs_testkit::{Rng, mutate};

/// Cases per property: enough to hit every field with every edge value, small enough for CI.
const CASES: u64 = 3000;

fn valid_pack(rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(5) as usize;
    let slices: Vec<(u64, Vec<u8>)> = (0..n)
        .map(|_| {
            let len = rng.below(200) as usize;
            (rng.next_u64(), rng.bytes(len))
        })
        .collect();
    let refs: Vec<(u64, &[u8])> = slices.iter().map(|(id, d)| (*id, &d[..])).collect();
    encode_pack(&refs).0.to_vec()
}

/// What a decoded index promises: every entry lies inside the object's data part, so a
/// reader can slice the object with it.
fn check_index(object: &[u8], entries: &[PackEntry], seed: u64) {
    let data_part = (object.len() - 24 - 24 * entries.len()) as u64;
    for e in entries {
        let end = e.offset.checked_add(u64::from(e.len));
        assert!(
            end.is_some_and(|end| end <= data_part),
            "seed {seed}: entry {e:?} lies outside the {data_part} data bytes"
        );
        let data = Bytes::copy_from_slice(
            &object[e.offset as usize..(e.offset + u64::from(e.len)) as usize],
        );
        let _ = verify_packed("k", e, data);
    }
}

/// `valid` with its index replaced by `entries` and the index crc made to match (anyone can
/// compute a crc: it says nothing about intent).
fn with_index(valid: &[u8], entries: &[PackEntry]) -> Vec<u8> {
    let len = valid.len();
    let n = u32::from_le_bytes(valid[len - 16..len - 12].try_into().unwrap()) as usize;
    let data_len = len - 24 - 24 * n;
    let mut out = valid[..data_len].to_vec();
    for e in entries {
        out.extend(e.slice.to_le_bytes());
        out.extend(e.offset.to_le_bytes());
        out.extend(e.len.to_le_bytes());
        out.extend(e.crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out[data_len..]);
    out.extend(b"SPPK");
    out.extend(1u32.to_le_bytes());
    out.extend((entries.len() as u32).to_le_bytes());
    out.extend(crc.to_le_bytes());
    out.extend((data_len as u64).to_le_bytes());
    out
}

#[test]
fn pack_index_decoder_survives_random_and_mutated_input() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let valid = valid_pack(&mut rng);
        let entries = decode_pack_index("k", &valid)
            .unwrap_or_else(|e| panic!("seed {seed}: a valid pack is refused: {e}"));
        check_index(&valid, &entries, seed);
        let input = if seed % 4 == 0 {
            let len = rng.below(300) as usize;
            rng.bytes(len)
        } else {
            mutate(&mut rng, &valid)
        };
        if let Ok(entries) = decode_pack_index("k", &input) {
            check_index(&input, &entries, seed);
        }
    }
}

/// Footers crafted by hand: sizes that overflow when added, counts far beyond the object.
#[test]
fn pack_index_regressions() {
    let (valid, _) = encode_pack(&[(7, b"data")]);
    let len = valid.len();
    let with = |n: u32, data_len: u64| {
        let mut v = valid.to_vec();
        v[len - 16..len - 12].copy_from_slice(&n.to_le_bytes());
        v[len - 8..].copy_from_slice(&data_len.to_le_bytes());
        v
    };
    let cases = [
        // data_len + n × 24 + 24 wraps around to the object's length (once an overflow panic).
        with(1000, (len as u64).wrapping_sub(24 + 1000 * 24)),
        with(
            u32::MAX,
            (len as u64).wrapping_sub(24 + u64::from(u32::MAX) * 24),
        ),
        with(1, u64::MAX),
        with(u32::MAX, 0),
        with(0, 1 << 63),
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(decode_pack_index("k", c).is_err(), "crafted footer {i}");
    }
    // Indexes whose crc matches but whose entries point outside the data.
    let entry = |offset: u64, len: u32| PackEntry {
        slice: 7,
        offset,
        len,
        crc: 0,
    };
    for bad in [
        entry(u64::MAX, 2),
        entry(1, 4),
        entry(5, 0),
        entry(u64::MAX - 1, u32::MAX),
    ] {
        let crafted = with_index(&valid, &[bad]);
        assert!(
            decode_pack_index("k", &crafted).is_err(),
            "an entry {bad:?} outside 4 data bytes is accepted"
        );
    }
    // The same way, an entry that does fit is accepted (the helper builds valid packs).
    assert!(decode_pack_index("k", &with_index(&valid, &[entry(4, 0), entry(0, 4)])).is_ok());
}

#[test]
fn block_decoder_survives_random_and_mutated_input() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let len = rng.below(300) as usize;
        let data = rng.bytes(len);
        let valid = encode_block(&data);
        assert_eq!(decode_block("k", valid.clone()).unwrap(), &data[..]);
        let input = if seed % 4 == 0 {
            let len = rng.below(64) as usize;
            rng.bytes(len)
        } else {
            mutate(&mut rng, &valid)
        };
        if let Ok(out) = decode_block("k", Bytes::from(input.clone())) {
            assert_eq!(
                out.len() + BLOCK_TRAILER_LEN,
                input.len(),
                "seed {seed}: the decoded data is not the object minus its trailer"
            );
        }
    }
}

#[test]
fn object_key_parser_survives_random_and_mutated_input() {
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let valid = match rng.below(2) {
            0 => pack_object_key(rng.next_u64()),
            _ => block_key(rng.next_u64(), rng.next_u64() as u32, rng.next_u64() as u32),
        };
        let parsed = ObjectKey::parse(&valid).expect("a key spoolfs names parses");
        assert_eq!(parsed.key(), valid);
        let input = String::from_utf8_lossy(&mutate(&mut rng, valid.as_bytes())).into_owned();
        if let Some(k) = ObjectKey::parse(&input) {
            assert_eq!(
                k.key(),
                input,
                "seed {seed}: a parsed key does not round-trip"
            );
        }
    }
}
