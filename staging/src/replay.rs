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
}

pub(crate) struct ScanResult {
    pub header: Option<SegmentHeader>,
    pub records: Vec<ScannedRecord>,
    /// The scan stopped at bytes that were neither zero nor an older generation's record:
    /// a torn or corrupt record.
    pub corrupt_tail: bool,
    /// Highest generation seen in any record header with a valid crc (for choosing fresh
    /// generations that cannot collide with leftovers).
    pub max_generation_seen: u64,
}

pub(crate) fn scan_segment(file: &File, segment_size: u64) -> io::Result<ScanResult> {
    let mut sc = Scanner {
        file,
        size: segment_size,
        buf: AlignedBuf::new(WINDOW.min(segment_size as usize), BUF_ALIGN),
        start: 0,
        len: 0,
    };
    let header = SegmentHeader::decode(sc.get(0, BUF_ALIGN)?);
    let mut out = ScanResult {
        header: header.clone(),
        records: Vec::new(),
        corrupt_tail: false,
        max_generation_seen: header.as_ref().map_or(0, |h| h.generation),
    };
    let Some(header) = header else {
        return Ok(out);
    };
    let align = u64::from(header.align);
    let mut off = segment_header_block(align);
    while off + RECORD_FIXED_LEN as u64 <= segment_size {
        let fixed = sc.get(off, RECORD_FIXED_LEN)?;
        let Some(hlen) = header_region_len(fixed) else {
            out.corrupt_tail = decode_record_header(fixed).err() != Some(DecodeFail::Zero);
            break;
        };
        if off + hlen as u64 > segment_size {
            out.corrupt_tail = true;
            break;
        }
        let rec = match decode_record_header(sc.get(off, hlen)?) {
            Ok(r) => r,
            Err(_) => {
                out.corrupt_tail = true;
                break;
            }
        };
        out.max_generation_seen = out.max_generation_seen.max(rec.meta.generation);
        if rec.meta.generation != header.generation {
            // A record of an earlier life of this segment: the clean end of the log, unless
            // it claims a newer generation than the header, which only corruption explains.
            out.corrupt_tail = rec.meta.generation > header.generation;
            break;
        }
        let len = rec.header.len;
        if off + record_size(len, align) > segment_size {
            out.corrupt_tail = true;
            break;
        }
        let data_off = off + record_header_len(len, align);
        let data = sc.get(data_off, len as usize)?;
        let ok = data
            .chunks(PIECE_LEN as usize)
            .zip(&rec.crcs)
            .all(|(piece, &crc)| crc32c::crc32c(piece) == crc);
        if !ok {
            out.corrupt_tail = true;
            break;
        }
        out.records.push(ScannedRecord { rec, offset: off });
        off += record_size(len, align);
    }
    Ok(out)
}
