//! Byte layouts of the segment header and of a record header (see the module docs of
//! [`super`] for the prose version). Everything is little-endian.

use super::RecordHeader;

/// Magic of a segment header block: "SPOOLSEG".
pub(crate) const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"SPOOLSEG");
/// Magic of a record header: "SPRC".
pub(crate) const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SPRC");
/// Version of the segment header block (its layout has not changed since version 1).
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Version of the records written now. Version 2 has a CRC-32C of the carried namespace-log
/// record (the last `meta_len` data bytes) where version 1 repeated the number of data pieces,
/// so a damaged slice does not take the namespace change it carries with it. Version 3 adds,
/// after the piece checksums and under the header CRC, the log's flushed-through sequence
/// number when the record was placed (see [`DecodedRecord::flushed_through`]); a record whose
/// header region has no room for it (at most one piece count in a thousand) is written as
/// version 2. Versions 1 and 2 are still read.
pub(crate) const RECORD_VERSION: u32 = 3;
/// Bytes version 3 adds after the piece checksums.
const FLUSHED_THROUGH_LEN: usize = 8;
/// Bytes of the segment header proper (the rest of its block is zero).
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of the fixed part of a record header; the piece checksums follow it.
pub(crate) const RECORD_FIXED_LEN: usize = 72;
/// Data is checksummed in pieces of this many bytes (the last piece may be shorter).
pub(crate) const PIECE_LEN: u64 = 64 * 1024;

pub(crate) fn align_up(v: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (v + align - 1) & !(align - 1)
}

pub(crate) fn pieces(len: u32) -> u32 {
    (u64::from(len).div_ceil(PIECE_LEN)) as u32
}

/// Bytes from the start of a record to the start of its data (a multiple of `align`).
pub(crate) fn record_header_len(len: u32, align: u64) -> u64 {
    align_up(RECORD_FIXED_LEN as u64 + 4 * u64::from(pieces(len)), align)
}

/// Bytes a record occupies on disk: header, data, padding to `align`.
pub(crate) fn record_size(len: u32, align: u64) -> u64 {
    align_up(record_header_len(len, align) + u64::from(len), align)
}

/// The segment header block size: the first record starts here.
pub(crate) fn segment_header_block(align: u64) -> u64 {
    align_up(SEGMENT_HEADER_LEN as u64, align)
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// CRC-32C of `b` with the four bytes at `skip..skip+4` (the checksum field) left out.
fn crc_skipping(b: &[u8], skip: usize) -> u32 {
    let c = crc32c::crc32c(&b[..skip]);
    crc32c::crc32c_append(c, &b[skip + 4..])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub volume_uuid: [u8; 16],
    pub generation: u64,
    pub segment_size: u64,
    pub align: u32,
    pub index: u32,
    pub created_us: u64,
}

impl SegmentHeader {
    /// Writes the header into the first [`SEGMENT_HEADER_LEN`] bytes of `b`.
    pub fn encode(&self, b: &mut [u8]) {
        let b = &mut b[..SEGMENT_HEADER_LEN];
        b.fill(0);
        put_u64(b, 0, SEGMENT_MAGIC);
        put_u32(b, 8, SEGMENT_VERSION);
        b[16..32].copy_from_slice(&self.volume_uuid);
        put_u64(b, 32, self.generation);
        put_u64(b, 40, self.segment_size);
        put_u32(b, 48, self.align);
        put_u32(b, 52, self.index);
        put_u64(b, 56, self.created_us);
        let crc = crc_skipping(b, 12);
        put_u32(b, 12, crc);
    }

    /// `None` when the block is not a valid segment header (bad magic, version or crc).
    pub fn decode(b: &[u8]) -> Option<SegmentHeader> {
        if b.len() < SEGMENT_HEADER_LEN {
            return None;
        }
        let b = &b[..SEGMENT_HEADER_LEN];
        if get_u64(b, 0) != SEGMENT_MAGIC
            || get_u32(b, 8) != SEGMENT_VERSION
            || get_u32(b, 12) != crc_skipping(b, 12)
        {
            return None;
        }
        let align = get_u32(b, 48);
        if !align.is_power_of_two() || u64::from(align) > PIECE_LEN {
            return None;
        }
        Some(SegmentHeader {
            volume_uuid: b[16..32].try_into().unwrap(),
            generation: get_u64(b, 32),
            segment_size: get_u64(b, 40),
            align,
            index: get_u32(b, 52),
            created_us: get_u64(b, 56),
        })
    }
}

/// Fields of a record header besides the [`RecordHeader`] the caller gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub generation: u64,
    pub seq: u64,
    pub time_us: u64,
}

// Offsets inside the fixed part of a record header.
const R_MAGIC: usize = 0;
const R_VERSION: usize = 4;
const R_CRC: usize = 8;
/// Version 1: the number of data pieces. Version 2: the CRC-32C of the carried namespace
/// record (of zero bytes when `meta_len` is 0).
const R_NPIECES: usize = 12;
const R_META_CRC: usize = 12;
const R_GENERATION: usize = 16;
const R_SEQ: usize = 24;
const R_INO: usize = 32;
const R_SLICE: usize = 40;
const R_CHUNK: usize = 48;
const R_POS: usize = 52;
const R_LEN: usize = 56;
const R_META_LEN: usize = 60;
const R_TIME: usize = 64;

/// Fills the caller's part of a record header (everything but generation, sequence and the
/// header crc, which the engine thread sets with [`seal_record_header`]) and the piece
/// checksums of `data`. `b` is the record's header region.
pub(crate) fn encode_record_header(b: &mut [u8], h: &RecordHeader, data: &[u8], time_us: u64) {
    debug_assert_eq!(data.len() as u64, u64::from(h.len));
    put_u32(b, R_MAGIC, RECORD_MAGIC);
    let room = b.len() >= RECORD_FIXED_LEN + 4 * pieces(h.len) as usize + FLUSHED_THROUGH_LEN;
    put_u32(b, R_VERSION, if room { RECORD_VERSION } else { 2 });
    let meta = &data[data.len() - h.meta_len as usize..];
    put_u32(b, R_META_CRC, crc32c::crc32c(meta));
    put_u64(b, R_INO, h.ino);
    put_u64(b, R_SLICE, h.slice_id);
    put_u32(b, R_CHUNK, h.chunk);
    put_u32(b, R_POS, h.pos);
    put_u32(b, R_LEN, h.len);
    put_u32(b, R_META_LEN, h.meta_len);
    put_u64(b, R_TIME, time_us);
    for (i, piece) in data.chunks(PIECE_LEN as usize).enumerate() {
        put_u32(b, RECORD_FIXED_LEN + 4 * i, crc32c::crc32c(piece));
    }
}

/// Sets generation, sequence and (version 3) flushed-through sequence, and computes the header
/// crc.
pub(crate) fn seal_record_header(b: &mut [u8], generation: u64, seq: u64, flushed_through: u64) {
    put_u64(b, R_GENERATION, generation);
    put_u64(b, R_SEQ, seq);
    let n = pieces(get_u32(b, R_LEN)) as usize;
    let mut end = RECORD_FIXED_LEN + 4 * n;
    if get_u32(b, R_VERSION) >= 3 {
        put_u64(b, end, flushed_through);
        end += FLUSHED_THROUGH_LEN;
    }
    let crc = crc_skipping(&b[..end], R_CRC);
    put_u32(b, R_CRC, crc);
}

/// A record header read back from disk, with its piece checksums.
#[derive(Debug, Clone)]
pub(crate) struct DecodedRecord {
    pub header: RecordHeader,
    pub meta: RecordMeta,
    pub crcs: Vec<u32>,
    /// Version 2: the CRC-32C of the carried namespace record. Version 1 has none: its
    /// namespace record is only as good as the data pieces it lies in.
    pub meta_crc: Option<u32>,
    /// Version 3: when the record was placed, every record of the log numbered up to this
    /// had been through a completed device flush. After a power cut a record numbered
    /// above the highest such value any intact record carries may be missing or torn
    /// without damage; one at or below it must be intact.
    pub flushed_through: Option<u64>,
}

impl DecodedRecord {
    /// Checks `data` (the record's `len` data bytes) piece by piece. Returns the data byte
    /// ranges of the slice (the bytes before the carried namespace record) that fail their
    /// CRC, and whether the carried namespace record passes its own check.
    pub fn check_data(&self, data: &[u8]) -> DataCheck {
        let len = self.header.len;
        let slice_len = len - self.header.meta_len;
        let mut bad_pieces = Vec::new();
        for (i, (piece, &crc)) in data.chunks(PIECE_LEN as usize).zip(&self.crcs).enumerate() {
            if crc32c::crc32c(piece) != crc {
                bad_pieces.push(i as u32);
            }
        }
        let piece_range = |p: u32| {
            let start = u64::from(p) * PIECE_LEN;
            (start, (start + PIECE_LEN).min(u64::from(len)))
        };
        let mut damaged: Vec<(u32, u32)> = Vec::new();
        for &p in &bad_pieces {
            let (start, end) = piece_range(p);
            let end = end.min(u64::from(slice_len));
            if start >= end {
                continue;
            }
            match damaged.last_mut() {
                Some(last) if u64::from(last.1) == start => last.1 = end as u32,
                _ => damaged.push((start as u32, end as u32)),
            }
        }
        let meta = &data[slice_len as usize..];
        let meta_ok = match self.meta_crc {
            Some(crc) => crc32c::crc32c(meta) == crc,
            None => bad_pieces
                .iter()
                .all(|&p| piece_range(p).1 <= u64::from(slice_len)),
        };
        DataCheck {
            all_ok: bad_pieces.is_empty(),
            damaged,
            meta_ok,
        }
    }
}

/// What [`DecodedRecord::check_data`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataCheck {
    /// Every piece passes.
    pub all_ok: bool,
    /// Slice data ranges `[start, end)` whose pieces fail their CRC (the carried namespace
    /// record is not part of them).
    pub damaged: Vec<(u32, u32)>,
    /// The carried namespace record (if any) passes its check.
    pub meta_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeFail {
    /// Every byte of the fixed header is zero: never written.
    Zero,
    /// Bad magic, version, lengths or header crc.
    Corrupt,
}

/// Decodes and checks the header crc. `b` must hold at least the whole header region, or the
/// fixed part when only that is available (then the crc cannot be checked and the caller must
/// call again with more bytes: see [`header_region_len`]).
pub(crate) fn decode_record_header(b: &[u8]) -> Result<DecodedRecord, DecodeFail> {
    if b.len() < RECORD_FIXED_LEN {
        return Err(DecodeFail::Corrupt);
    }
    if b[..RECORD_FIXED_LEN].iter().all(|&x| x == 0) {
        return Err(DecodeFail::Zero);
    }
    let version = get_u32(b, R_VERSION);
    if get_u32(b, R_MAGIC) != RECORD_MAGIC || !(1..=RECORD_VERSION).contains(&version) {
        return Err(DecodeFail::Corrupt);
    }
    let len = get_u32(b, R_LEN);
    let n = pieces(len);
    if (version == 1 && get_u32(b, R_NPIECES) != n) || get_u32(b, R_META_LEN) > len {
        return Err(DecodeFail::Corrupt);
    }
    let pieces_end = RECORD_FIXED_LEN + 4 * n as usize;
    let end = pieces_end + if version >= 3 { FLUSHED_THROUGH_LEN } else { 0 };
    if b.len() < end || get_u32(b, R_CRC) != crc_skipping(&b[..end], R_CRC) {
        return Err(DecodeFail::Corrupt);
    }
    Ok(DecodedRecord {
        header: RecordHeader {
            ino: get_u64(b, R_INO),
            chunk: get_u32(b, R_CHUNK),
            pos: get_u32(b, R_POS),
            slice_id: get_u64(b, R_SLICE),
            len,
            meta_len: get_u32(b, R_META_LEN),
        },
        meta: RecordMeta {
            generation: get_u64(b, R_GENERATION),
            seq: get_u64(b, R_SEQ),
            time_us: get_u64(b, R_TIME),
        },
        crcs: (0..n as usize)
            .map(|i| get_u32(b, RECORD_FIXED_LEN + 4 * i))
            .collect(),
        meta_crc: (version >= 2).then(|| get_u32(b, R_META_CRC)),
        flushed_through: (version >= 3).then(|| get_u64(b, pieces_end)),
    })
}

/// Length of the header region announced by a fixed header (without checking it), so a
/// reader knows how many bytes to fetch; `None` if the fixed part is not plausible.
pub(crate) fn header_region_len(fixed: &[u8]) -> Option<usize> {
    if fixed.len() < RECORD_FIXED_LEN || get_u32(fixed, R_MAGIC) != RECORD_MAGIC {
        return None;
    }
    let len = get_u32(fixed, R_LEN);
    let n = pieces(len);
    let version = get_u32(fixed, R_VERSION);
    let plausible = match version {
        1 => get_u32(fixed, R_NPIECES) == n,
        v => v <= RECORD_VERSION,
    };
    let extra = if version >= 3 { FLUSHED_THROUGH_LEN } else { 0 };
    plausible.then_some(RECORD_FIXED_LEN + 4 * n as usize + extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_format_roundtrip() {
        let h = SegmentHeader {
            volume_uuid: [7; 16],
            generation: 9,
            segment_size: 1 << 20,
            align: 4096,
            index: 3,
            created_us: 5,
        };
        let mut b = vec![0u8; 4096];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        b[40] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), None);

        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let rh = RecordHeader {
            ino: 1,
            chunk: 2,
            pos: 3,
            slice_id: 4,
            len: data.len() as u32,
            meta_len: 1000,
        };
        let hl = record_header_len(rh.len, 4096) as usize;
        let mut b = vec![0u8; hl];
        encode_record_header(&mut b, &rh, &data, 77);
        seal_record_header(&mut b, 5, 6, 4);
        let d = decode_record_header(&b).unwrap();
        assert_eq!(d.flushed_through, Some(4));
        assert_eq!(d.header, rh);
        assert_eq!(
            d.meta,
            RecordMeta {
                generation: 5,
                seq: 6,
                time_us: 77
            }
        );
        assert_eq!(d.crcs.len(), 4);
        assert_eq!(d.crcs[3], crc32c::crc32c(&data[3 * 65536..]));
        b[33] ^= 1;
        assert_eq!(decode_record_header(&b).unwrap_err(), DecodeFail::Corrupt);
        assert_eq!(
            decode_record_header(&[0u8; 4096]).unwrap_err(),
            DecodeFail::Zero
        );
    }
}
