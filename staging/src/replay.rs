//! Scanning a segment at open: every valid record of the segment's generation, from the start
//! up to the first invalid one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::buf::AlignedBuf;
use super::format::{
    DecodeFail, DecodedRecord, PIECE_LEN, RECORD_FIXED_LEN, SegmentHeader, decode_record_header,
    header_region_len, record_header_len, record_size, segment_header_block,
};
use super::segments::BUF_ALIGN;

const WINDOW: usize = 4 << 20;

/// Reads a segment through a window of aligned O_DIRECT reads.
struct Scanner<'a> {
    file: &'a File,
    size: u64,
    buf: AlignedBuf,
    start: u64,
    len: usize,
}

impl Scanner<'_> {
    fn get(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let end = off + len as u64;
        if off < self.start || end > self.start + self.len as u64 {
            let start = off & !(BUF_ALIGN as u64 - 1);
            let want = ((end - start) as usize)
                .max(WINDOW)
                .next_multiple_of(BUF_ALIGN)
                .min((self.size - start) as usize);
            if self.buf.len() < want {
                self.buf = AlignedBuf::new(want, BUF_ALIGN);
            }
            let mut done = 0;
            while done < want {
                let n = self.file.read_at(
                    &mut self.buf.as_mut_slice()[done..want],
                    start + done as u64,
                )?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "segment shorter than its size",
                    ));
                }
                done += n;
            }
            self.start = start;
            self.len = want;
        }
        let at = (off - self.start) as usize;
        Ok(&self.buf.as_slice()[at..at + len])
    }
}

pub(crate) struct ScannedRecord {
    pub rec: DecodedRecord,
    pub offset: u64,
    /// Slice data ranges whose pieces fail their CRC (empty: the record is intact).
    pub damaged: Vec<(u32, u32)>,
    /// The carried namespace record's bytes, when there is one and it passes its check.
    pub carried: Option<Vec<u8>>,
    /// Every check passed.
    pub intact: bool,
}

/// Bytes of a segment that hold no readable record although valid records follow them (or,
/// `offset` 0, a segment header that fails its check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable {
    pub offset: u64,
    pub len: u64,
    /// Sequence numbers of the valid records around it (`prev`: none before it in the
    /// segment; `next` 0: a segment header).
    pub prev: Option<u64>,
    pub next: u64,
}

pub(crate) struct ScanResult {
    pub header: Option<SegmentHeader>,
    /// The header block fails its check (and is not all zeros); `header` is then the one
    /// inferred from the records found behind it, if any.
    pub header_damaged: bool,
    /// Records of the segment's generation whose header passes its check, in file order:
    /// intact ones, and (with `damaged` set) damaged ones that valid records follow.
    pub records: Vec<ScannedRecord>,
    /// Regions without a readable record header that valid records follow.
    pub unreadable: Vec<Unreadable>,
    /// The scan stopped at bytes that were neither zero nor an older generation's record:
    /// a torn or corrupt record with nothing valid after it.
    pub corrupt_tail: bool,
    /// Highest generation seen in any record header with a valid crc (for choosing fresh
    /// generations that cannot collide with leftovers).
    pub max_generation_seen: u64,
}

impl ScanResult {
    /// Records or bytes that failed a check in the middle of the segment: a loss to report,
    /// and a segment that must not be re-stamped before the loss is recorded.
    pub fn damaged(&self) -> bool {
        self.header_damaged || !self.unreadable.is_empty() || self.records.iter().any(|r| !r.intact)
    }
}

impl ScanResult {
    /// Drops the failing records and unreadable regions that a power cut explains (see
    /// [`crate::boots`]): they are writes no flush covered, cut short like a torn tail, not
    /// damage. Returns how many.
    pub fn forgive_power_cut(&mut self, cuts: &crate::boots::PowerCuts) -> usize {
        let before = self.records.len() + self.unreadable.len();
        self.records
            .retain(|r| r.intact || !cuts.may_have_torn(r.rec.meta.seq));
        self.unreadable
            .retain(|u| !cuts.may_have_torn_region(u.prev, u.next));
        before - self.records.len() - self.unreadable.len()
    }
}

/// What the scan met at one offset.
enum Item {
    Record(ScannedRecord),
    Unreadable(Unreadable),
}

/// The record header at `off`, if it is complete, passes its check and fits.
fn header_at(
    sc: &mut Scanner<'_>,
    off: u64,
    segment_size: u64,
) -> io::Result<Result<DecodedRecord, DecodeFail>> {
    if off + RECORD_FIXED_LEN as u64 > segment_size {
        return Ok(Err(DecodeFail::Zero));
    }
    let fixed = sc.get(off, RECORD_FIXED_LEN)?;
    let Some(hlen) = header_region_len(fixed) else {
        return Ok(Err(decode_record_header(fixed)
            .err()
            .unwrap_or(DecodeFail::Corrupt)));
    };
    if off + hlen as u64 > segment_size {
        return Ok(Err(DecodeFail::Corrupt));
    }
    Ok(decode_record_header(sc.get(off, hlen)?))
}

/// A segment whose header block fails its check: the generation and alignment of its
/// newest life, inferred from the record headers that pass theirs (every record of a
/// generation carries it; the first record of a segment starts at its alignment).
fn infer_header(sc: &mut Scanner<'_>, segment_size: u64) -> io::Result<Option<SegmentHeader>> {
    let step = BUF_ALIGN as u64;
    let mut best: Option<(u64, u64)> = None; // (generation, first offset)
    let mut off = step;
    while off + RECORD_FIXED_LEN as u64 <= segment_size {
        if let Ok(rec) = header_at(sc, off, segment_size)? {
            let g = rec.meta.generation;
            if best.is_none_or(|(bg, _)| g > bg) {
                best = Some((g, off));
            }
        }
        off += step;
    }
    Ok(best.map(|(generation, first)| {
        let align = if first.is_power_of_two() && (4096..=PIECE_LEN).contains(&first) {
            first
        } else {
            step
        };
        SegmentHeader {
            volume_uuid: [0; 16],
            generation,
            segment_size,
            align: align as u32,
            index: 0,
            created_us: 0,
        }
    }))
}

pub(crate) fn scan_segment(file: &File, segment_size: u64) -> io::Result<ScanResult> {
    let mut sc = Scanner {
        file,
        size: segment_size,
        buf: AlignedBuf::new(WINDOW.min(segment_size as usize), BUF_ALIGN),
        start: 0,
        len: 0,
    };
    let first_block = sc.get(0, BUF_ALIGN)?;
    let mut header = SegmentHeader::decode(first_block);
    let header_damaged = header.is_none() && first_block.iter().any(|&b| b != 0);
    if header_damaged {
        header = infer_header(&mut sc, segment_size)?;
    }
    let mut out = ScanResult {
        header: header.clone(),
        header_damaged,
        records: Vec::new(),
        unreadable: Vec::new(),
        corrupt_tail: false,
        max_generation_seen: header.as_ref().map_or(0, |h| h.generation),
    };
    let Some(header) = header else {
        return Ok(out);
    };
    let align = u64::from(header.align);
    let mut items: Vec<Item> = Vec::new();
    let mut last_seq = 0u64;
    let mut off = segment_header_block(align);
    while off + RECORD_FIXED_LEN as u64 <= segment_size {
        let found = header_at(&mut sc, off, segment_size)?;
        let rec = match found {
            Err(DecodeFail::Zero) => break,
            Ok(rec)
                if rec.meta.generation < header.generation
                    || rec.meta.generation == header.generation && rec.meta.seq <= last_seq =>
            {
                // A record of an earlier life of this segment: the clean end of the log.
                out.max_generation_seen = out.max_generation_seen.max(rec.meta.generation);
                break;
            }
            Ok(rec)
                if rec.meta.generation == header.generation
                    && off + record_size(rec.header.len, align) <= segment_size =>
            {
                rec
            }
            _ => {
                // Neither a record nor the end: a torn or corrupt header (or one that claims
                // a newer generation than the segment, which only corruption explains). The
                // next record of this generation, if any, starts at a multiple of the
                // alignment further on.
                let mut next = off + align;
                let resumed = loop {
                    if next + RECORD_FIXED_LEN as u64 > segment_size {
                        break None;
                    }
                    if let Ok(r) = header_at(&mut sc, next, segment_size)?
                        && r.meta.generation == header.generation
                        && r.meta.seq > last_seq
                    {
                        break Some((next, r.meta.seq));
                    }
                    next += align;
                };
                let Some((next, next_seq)) = resumed else {
                    out.corrupt_tail = true;
                    break;
                };
                items.push(Item::Unreadable(Unreadable {
                    offset: off,
                    len: next - off,
                    prev: (last_seq > 0).then_some(last_seq),
                    next: next_seq,
                }));
                off = next;
                continue;
            }
        };
        out.max_generation_seen = out.max_generation_seen.max(rec.meta.generation);
        let len = rec.header.len;
        let data_off = off + record_header_len(len, align);
        let data = sc.get(data_off, len as usize)?;
        let check = rec.check_data(data);
        let carried = (rec.header.meta_len > 0 && check.meta_ok)
            .then(|| data[(len - rec.header.meta_len) as usize..].to_vec());
        last_seq = rec.meta.seq;
        items.push(Item::Record(ScannedRecord {
            rec,
            offset: off,
            damaged: check.damaged,
            carried,
            intact: check.all_ok,
        }));
        off += record_size(len, align);
    }
    // Whatever fails a check after the last intact record is a torn tail: a write the crash
    // cut short, never acknowledged. Before it, it is damage.
    while let Some(last) = items.last() {
        if matches!(last, Item::Record(r) if r.intact) {
            break;
        }
        items.pop();
        out.corrupt_tail = true;
    }
    for item in items {
        match item {
            Item::Record(r) => out.records.push(r),
            Item::Unreadable(u) => out.unreadable.push(u),
        }
    }
    if header_damaged {
        out.unreadable.insert(
            0,
            Unreadable {
                offset: 0,
                len: segment_header_block(align),
                prev: None,
                next: 0,
            },
        );
    }
    Ok(out)
}
