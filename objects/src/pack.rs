//! Pack objects: many small slices in one object, so that 10,000 small files cost a handful of
//! PUTs. A pack explains itself: an index and a footer follow the data, so `fsck` (or a
//! disaster rebuild) can list its slices from the bucket alone.
//!
//! ```text
//! | slice data, back to back | index: n × (slice u64, offset u64, len u32, crc32c u32) |
//! | footer: "SPPK" | version u32 | n u32 | crc32c(index) u32 | data_len u64 |
//! ```
//! All integers little-endian. A reader of one slice fetches `[offset, offset + len)` with a
//! ranged GET and checks it against the CRC-32C that the metadata also records.

use crate::{Result, StorageError};
use bytes::{BufMut, Bytes, BytesMut};

/// Slices up to this size are packed with others into pack objects; larger ones are stored
/// as block objects.
pub const PACK_SLICE_MAX: usize = 1 << 20;

const MAGIC: &[u8; 4] = b"SPPK";
const VERSION: u32 = 1;
const ENTRY_LEN: usize = 24;
const FOOTER_LEN: usize = 24;

/// Where one slice is inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub slice: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// Builds a pack from `(slice id, data)` pairs.
pub fn encode_pack(slices: &[(u64, &[u8])]) -> (Bytes, Vec<PackEntry>) {
    let data_len: usize = slices.iter().map(|(_, d)| d.len()).sum();
    let mut out = BytesMut::with_capacity(data_len + slices.len() * ENTRY_LEN + FOOTER_LEN);
    let mut entries = Vec::with_capacity(slices.len());
    for (slice, data) in slices {
        entries.push(PackEntry {
            slice: *slice,
            offset: out.len() as u64,
            len: data.len() as u32,
            crc: crc32c::crc32c(data),
        });
        out.put_slice(data);
    }
    let index_start = out.len();
    for e in &entries {
        out.put_u64_le(e.slice);
        out.put_u64_le(e.offset);
        out.put_u32_le(e.len);
        out.put_u32_le(e.crc);
    }
    let index_crc = crc32c::crc32c(&out[index_start..]);
    out.put_slice(MAGIC);
    out.put_u32_le(VERSION);
    out.put_u32_le(entries.len() as u32);
    out.put_u32_le(index_crc);
    out.put_u64_le(data_len as u64);
    (out.freeze(), entries)
}

/// Reads the index of a whole pack object (fsck, rebuild), checking its footer and CRC.
pub fn decode_pack_index(key: &str, object: &[u8]) -> Result<Vec<PackEntry>> {
    let bad = |detail: String| StorageError::Checksum {
        key: key.to_string(),
        detail,
    };
    if object.len() < FOOTER_LEN {
        return Err(bad("pack shorter than its footer".into()));
    }
    let footer = &object[object.len() - FOOTER_LEN..];
    if &footer[0..4] != MAGIC {
        return Err(bad("bad pack magic".into()));
    }
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    if le32(&footer[4..8]) != VERSION {
        return Err(bad("unknown pack version".into()));
    }
    let n = le32(&footer[8..12]) as usize;
    let data_len = le64(&footer[16..24]);
    // The footer is untrusted: its sizes must add up to the object's length without
    // overflowing (n × 24 fits in a u64; data_len may be anything).
    let index_len = (n * ENTRY_LEN) as u64;
    let expected = data_len
        .checked_add(index_len)
        .and_then(|l| l.checked_add(FOOTER_LEN as u64));
    if expected != Some(object.len() as u64) {
        return Err(bad("pack sizes do not add up".into()));
    }
    let data_len = data_len as usize;
    let index = &object[data_len..data_len + n * ENTRY_LEN];
    if crc32c::crc32c(index) != le32(&footer[12..16]) {
        return Err(bad("pack index checksum mismatch".into()));
    }
    let entries: Vec<PackEntry> = index
        .chunks(ENTRY_LEN)
        .map(|e| PackEntry {
            slice: le64(&e[0..8]),
            offset: le64(&e[8..16]),
            len: le32(&e[16..20]),
            crc: le32(&e[20..24]),
        })
        .collect();
    // The crc only says the index is what its writer wrote: every entry must also lie in the
    // data part, so that a reader can slice the object with it.
    for e in &entries {
        let end = e.offset.checked_add(u64::from(e.len));
        if end.is_none_or(|end| end > data_len as u64) {
            return Err(bad(format!(
                "slice {} at {}+{} lies outside the pack's {data_len} data bytes",
                e.slice, e.offset, e.len
            )));
        }
    }
    Ok(entries)
}

/// Checks one slice fetched from a pack against its recorded length and CRC.
pub fn verify_packed(key: &str, entry: &PackEntry, data: Bytes) -> Result<Bytes> {
    if data.len() != entry.len as usize {
        return Err(StorageError::Checksum {
            key: key.to_string(),
            detail: format!(
                "slice {} is {} bytes, expected {}",
                entry.slice,
                data.len(),
                entry.len
            ),
        });
    }
    let crc = crc32c::crc32c(&data);
    if crc != entry.crc {
        return Err(StorageError::Checksum {
            key: key.to_string(),
            detail: format!(
                "slice {}: crc32c {crc:08x}, expected {:08x}",
                entry.slice, entry.crc
            ),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip_and_corruption() {
        let a = vec![1u8; 100];
        let b: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let (obj, entries) = encode_pack(&[(7, &a), (9, &b), (11, &[])]);
        assert_eq!(decode_pack_index("k", &obj).unwrap(), entries);
        let e = entries[1];
        let piece = obj.slice(e.offset as usize..(e.offset + e.len as u64) as usize);
        assert_eq!(&verify_packed("k", &e, piece.clone()).unwrap()[..], &b[..]);
        let mut bad = piece.to_vec();
        bad[10] ^= 1;
        assert!(verify_packed("k", &e, Bytes::from(bad)).is_err());
        let mut broken = obj.to_vec();
        let at = broken.len() - FOOTER_LEN - 3;
        broken[at] ^= 1;
        assert!(decode_pack_index("k", &broken).is_err());
    }

    /// A footer whose sizes wrap around when added (data_len near u64::MAX) is refused, not
    /// an overflow panic (debug) or a slice out of bounds (release).
    #[test]
    fn a_footer_whose_sizes_overflow_is_refused() {
        let (obj, _) = encode_pack(&[(7, b"data")]);
        let mut crafted = obj.to_vec();
        let len = crafted.len();
        // With 1000 entries claimed, data_len + 1000 × 24 + 24 wraps around to exactly the
        // object's length.
        crafted[len - 16..len - 12].copy_from_slice(&1000u32.to_le_bytes());
        let data_len = (len as u64).wrapping_sub(24 + 1000 * 24);
        assert!(data_len > len as u64, "the sum must wrap");
        crafted[len - 8..].copy_from_slice(&data_len.to_le_bytes());
        assert!(decode_pack_index("k", &crafted).is_err());
        for data_len in [u64::MAX, u64::MAX - 23, 1 << 63] {
            crafted[len - 8..].copy_from_slice(&data_len.to_le_bytes());
            assert!(decode_pack_index("k", &crafted).is_err());
        }
    }
}
