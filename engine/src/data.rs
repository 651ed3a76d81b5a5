//! The data layout of one chunk: a sorted list of non-overlapping segments, each pointing into
//! a slice, stored one key per segment. A new slice is *resolved* into the list when it is committed: it cuts whatever it
//! overlaps, so a reader never has to replay history, and a slice that no segment points to
//! any more is dead (its objects can be deleted). Gaps between segments are holes: zeros.

use crate::schema::{self, SliceRec};
use crate::types::Ino;
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};
use std::collections::BTreeSet;

/// Removes `[start, end)` of the chunk from `segs`, trimming segments that straddle the edges.
pub fn cut(segs: &mut Vec<SliceRec>, start: u32, end: u32) {
    if start >= end {
        return;
    }
    let mut out = Vec::with_capacity(segs.len() + 1);
    for s in segs.drain(..) {
        let s_end = s.pos + s.len;
        if s_end <= start || s.pos >= end {
            out.push(s);
            continue;
        }
        if s.pos < start {
            out.push(SliceRec {
                len: start - s.pos,
                ..s
            });
        }
        if s_end > end {
            let skip = end - s.pos;
            out.push(SliceRec {
                off: s.off + skip,
                len: s_end - end,
                pos: end,
                ..s
            });
        }
    }
    *segs = out;
}

/// Lays a new segment over `segs`, keeping the list sorted and non-overlapping (the in-memory
/// reference of [`insert_stored`]).
#[cfg(test)]
pub fn insert(segs: &mut Vec<SliceRec>, new: SliceRec) {
    if new.len == 0 {
        return;
    }
    cut(segs, new.pos, new.pos + new.len);
    let at = segs.partition_point(|s| s.pos < new.pos);
    segs.insert(at, new);
}

/// Slice ids that appear in `before` but not in `after`: the slices a change killed.
#[cfg(test)]
pub fn dead_slices(before: &[SliceRec], after: &[SliceRec]) -> Vec<(u64, u32)> {
    let alive: BTreeSet<u64> = after.iter().map(|s| s.id).collect();
    let mut seen = BTreeSet::new();
    before
        .iter()
        .filter(|s| s.id != 0 && !alive.contains(&s.id) && seen.insert(s.id))
        .map(|s| (s.id, s.size))
        .collect()
}

/// One piece of a read: `len` bytes at chunk position `pos`, from `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPiece {
    pub pos: u32,
    pub len: u32,
    /// `Some((slice, size, offset within slice))`, or `None` for a hole.
    pub source: Option<(u64, u32, u32)>,
}

/// How to read `[start, end)` of a chunk: pieces in order, holes included.
pub fn plan_read(segs: &[SliceRec], start: u32, end: u32) -> Vec<ReadPiece> {
    let mut out = Vec::new();
    let mut cursor = start;
    for s in segs {
        let s_end = s.pos + s.len;
        if s_end <= cursor || s.pos >= end {
            continue;
        }
        if s.pos > cursor {
            out.push(ReadPiece {
                pos: cursor,
                len: s.pos - cursor,
                source: None,
            });
            cursor = s.pos;
        }
        let piece_end = s_end.min(end);
        out.push(ReadPiece {
            pos: cursor,
            len: piece_end - cursor,
            source: Some((s.id, s.size, s.off + (cursor - s.pos))),
        });
        cursor = piece_end;
        if cursor >= end {
            break;
        }
    }
    if cursor < end {
        out.push(ReadPiece {
            pos: cursor,
            len: end - cursor,
            source: None,
        });
    }
    out
}

// ------------------------------------------------------------------------------------------
// The same operations on the stored map: one key per segment (`schema::seg_key`).

fn decode_seg(bytes: &[u8]) -> Result<SliceRec, MetaError> {
    schema::decode("segment", bytes)
}

/// The segments of `chunk` that overlap `[lo, hi)`, sorted by position.
pub fn load(
    r: &dyn KvRead,
    ino: Ino,
    chunk: u32,
    lo: u32,
    hi: u32,
) -> Result<Vec<SliceRec>, MetaError> {
    let mut out = Vec::new();
    if lo >= hi {
        return Ok(out);
    }
    if lo > 0 {
        // The segment that starts before `lo` may reach into the range.
        let first = schema::seg_key(ino, chunk, 0);
        if let Some((_, v)) = r
            .scan_back(&first, &schema::seg_key(ino, chunk, lo), 1)?
            .into_iter()
            .next()
        {
            let s = decode_seg(&v)?;
            if s.pos + s.len > lo {
                out.push(s);
            }
        }
    }
    let start = schema::seg_key(ino, chunk, lo);
    let end = schema::seg_key(ino, chunk, hi);
    for (_, v) in r.scan(&start, &end, usize::MAX)? {
        out.push(decode_seg(&v)?);
    }
    Ok(out)
}

/// Every segment of every chunk of a file.
pub fn load_all(r: &dyn KvRead, ino: Ino) -> Result<Vec<(u32, SliceRec)>, MetaError> {
    let prefix = schema::chunk_prefix(ino);
    let mut out = Vec::new();
    for (k, v) in r.scan(&prefix, &prefix_end(&prefix), usize::MAX)? {
        out.push((schema::chunk_index_of_key(&k), decode_seg(&v)?));
    }
    Ok(out)
}

/// Removes `[lo, hi)` from the chunk's map; returns the segments it cut or removed (their
/// slices may have died).
pub fn cut_stored(
    t: &mut dyn KvTxn,
    ino: Ino,
    chunk: u32,
    lo: u32,
    hi: u32,
) -> Result<Vec<SliceRec>, MetaError> {
    let touched = load(t, ino, chunk, lo, hi)?;
    for s in &touched {
        t.delete(&schema::seg_key(ino, chunk, s.pos))?;
        let mut rest = vec![*s];
        cut(&mut rest, lo, hi);
        for piece in rest {
            t.put(
                &schema::seg_key(ino, chunk, piece.pos),
                &schema::encode(&piece),
            )?;
        }
    }
    Ok(touched)
}

/// Lays a new segment over the chunk's map; returns the segments it cut or removed.
pub fn insert_stored(
    t: &mut dyn KvTxn,
    ino: Ino,
    chunk: u32,
    new: SliceRec,
) -> Result<Vec<SliceRec>, MetaError> {
    let touched = cut_stored(t, ino, chunk, new.pos, new.pos + new.len)?;
    t.put(&schema::seg_key(ino, chunk, new.pos), &schema::encode(&new))?;
    Ok(touched)
}

/// Lays one flush's new slices of a chunk over its map, in write order, and returns the
/// slices that died: `(id, size)`, older ones the new ones cut away and new ones a later one
/// shadowed. A slice's pieces all lie within `[pos - off, pos - off + size)`, so one whose
/// range a later insert wholly covered is dead, and the last insert is alive, without a look
/// at the map (a random overwrite's fsync then reads the map once instead of three times);
/// the map is read only for the others.
pub fn insert_all_stored(
    t: &mut dyn KvTxn,
    ino: Ino,
    chunk: u32,
    new: &[SliceRec],
) -> Result<Vec<(u64, u32)>, MetaError> {
    let mut touched = Vec::new();
    for s in new {
        touched.extend(insert_stored(t, ino, chunk, *s)?);
    }
    let (last, earlier) = match new.split_last() {
        Some((last, earlier)) if last.len > 0 => (Some(last), earlier),
        _ => (None, new),
    };
    let mut seen = BTreeSet::new();
    let mut dead = Vec::new();
    let mut unsure = Vec::new();
    for s in touched.iter().chain(earlier) {
        if s.id == 0 || last.is_some_and(|l| l.id == s.id) || !seen.insert(s.id) {
            continue;
        }
        let origin = u64::from(s.pos - s.off);
        let end = origin + u64::from(s.size);
        // Every segment of `s` was there before the inserts after it: all of them for an
        // older slice, those that follow it for a slice of this flush.
        let after = new.iter().position(|n| n.id == s.id).map_or(0, |i| i + 1);
        let covered = new[after..]
            .iter()
            .any(|n| u64::from(n.pos) <= origin && end <= u64::from(n.pos) + u64::from(n.len));
        if covered {
            dead.push((s.id, s.size));
        } else {
            unsure.push(*s);
        }
    }
    dead.extend(dead_stored(t, ino, chunk, &unsure)?);
    Ok(dead)
}

/// Of the slices of `candidates`, those with no segment left in the chunk: `(id, size)`.
/// A slice's pieces all lie within `[origin, origin + size)` of its chunk, where
/// `origin = pos - off`, so only that range is looked at.
pub fn dead_stored(
    r: &dyn KvRead,
    ino: Ino,
    chunk: u32,
    candidates: &[SliceRec],
) -> Result<Vec<(u64, u32)>, MetaError> {
    let mut seen = BTreeSet::new();
    let mut dead = Vec::new();
    for s in candidates {
        if s.id == 0 || !seen.insert(s.id) {
            continue;
        }
        let origin = s.pos - s.off;
        let alive = load(r, ino, chunk, origin, origin + s.size)?
            .iter()
            .any(|g| g.id == s.id);
        if !alive {
            dead.push((s.id, s.size));
        }
    }
    Ok(dead)
}

/// Records slice `id` (of `size` bytes) as dead: its objects are to be deleted (`G` key).
pub fn record_dead(t: &mut dyn KvTxn, id: u64, size: u32) -> Result<(), MetaError> {
    t.put(
        &schema::dead_key(id),
        &schema::encode(&schema::DeadSlice { size }),
    )
}

/// Removes `[lo, hi)` of the file (bytes) from its chunk maps and records the slices that
/// died; returns their bytes.
pub fn punch(
    t: &mut dyn KvTxn,
    ino: Ino,
    lo: u64,
    hi: u64,
    chunk_size: u64,
) -> Result<i64, MetaError> {
    let mut pos = lo;
    let mut freed = 0i64;
    while pos < hi {
        let chunk = (pos / chunk_size) as u32;
        let base = chunk as u64 * chunk_size;
        let chunk_hi = (hi - base).min(chunk_size) as u32;
        let touched = cut_stored(t, ino, chunk, (pos - base) as u32, chunk_hi)?;
        for (id, size) in dead_stored(t, ino, chunk, &touched)? {
            record_dead(t, id, size)?;
            freed += size as i64;
        }
        pos = base + chunk_hi as u64;
    }
    Ok(freed)
}

/// Cuts a file's stored data at `size`: whole chunks past it go, the boundary chunk is
/// trimmed. The slices that died are recorded and the volume's used bytes lowered.
pub fn truncate(t: &mut dyn KvTxn, ino: Ino, size: u64, chunk_size: u64) -> Result<(), MetaError> {
    let mut freed = 0i64;
    let boundary = (size / chunk_size) as u32;
    let in_chunk = (size % chunk_size) as u32;
    let mut dead = Vec::new();
    let first_whole = if in_chunk > 0 {
        let touched = cut_stored(t, ino, boundary, in_chunk, chunk_size as u32)?;
        dead.extend(dead_stored(t, ino, boundary, &touched)?);
        boundary + 1
    } else {
        boundary
    };
    // Whole chunks past the cut: every slice in them dies (a slice lives in one chunk).
    let start = schema::chunk_key(ino, first_whole);
    let end = prefix_end(&schema::chunk_prefix(ino));
    let mut seen = BTreeSet::new();
    for (key, value) in t.scan(&start, &end, usize::MAX)? {
        let seg = decode_seg(&value)?;
        if seen.insert(seg.id) {
            dead.push((seg.id, seg.size));
        }
        t.delete(&key)?;
    }
    for (id, size) in dead {
        record_dead(t, id, size)?;
        freed += size as i64;
    }
    schema::add_u64(t, schema::USED_BYTES_KEY, -freed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(id: u64, pos: u32, len: u32) -> SliceRec {
        SliceRec {
            id,
            size: len,
            off: 0,
            len,
            pos,
        }
    }

    /// Reference: a byte map of which slice (and which byte of it) is visible.
    /// Writes `(pos, len)` as slices numbered from 1 in order: `(id, pos, len)`.
    fn numbered(writes: Vec<(u32, u32)>) -> Vec<(u64, u32, u32)> {
        writes
            .into_iter()
            .enumerate()
            .map(|(i, (pos, len))| (i as u64 + 1, pos, len))
            .collect()
    }

    fn paint(writes: &[(u64, u32, u32)], size: usize) -> Vec<Option<(u64, u32)>> {
        let mut map = vec![None; size];
        for &(id, pos, len) in writes {
            for i in 0..len {
                map[(pos + i) as usize] = Some((id, i));
            }
        }
        map
    }

    fn render(segs: &[SliceRec], size: usize) -> Vec<Option<(u64, u32)>> {
        let mut map = vec![None; size];
        for p in plan_read(segs, 0, size as u32) {
            for i in 0..p.len {
                map[(p.pos + i) as usize] = p.source.map(|(id, _, off)| (id, off + i));
            }
        }
        map
    }

    proptest! {
        #[test]
        fn stored_map_matches_the_in_memory_one(
            writes in prop::collection::vec((0u32..200, 1u32..60), 1..20),
            cuts in prop::collection::vec((0u32..260, 0u32..260), 0..4),
        ) {
            use spoolfs_metadata::{Durability, KvStore, MemStore};
            let store = MemStore::default();
            let mut mem: Vec<SliceRec> = Vec::new();
            let mut killed_mem = BTreeSet::new();
            let mut killed_stored = BTreeSet::new();
            for (i, (pos, len)) in writes.iter().enumerate() {
                let new = seg(i as u64 + 1, *pos, *len);
                let before = mem.clone();
                insert(&mut mem, new);
                killed_mem.extend(dead_slices(&before, &mem).into_iter().map(|d| d.0));
                store.update(Durability::Visible, &mut |t| {
                    let mut touched = insert_stored(t, 7, 3, new)?;
                    touched.push(new);
                    killed_stored.extend(dead_stored(t, 7, 3, &touched)?.into_iter().map(|d| d.0));
                    Ok(())
                }).unwrap();
            }
            for (a, b) in cuts {
                let (lo, hi) = (a.min(b), a.max(b));
                let before = mem.clone();
                cut(&mut mem, lo, hi);
                killed_mem.extend(dead_slices(&before, &mem).into_iter().map(|d| d.0));
                store.update(Durability::Visible, &mut |t| {
                    let touched = cut_stored(t, 7, 3, lo, hi)?;
                    killed_stored.extend(dead_stored(t, 7, 3, &touched)?.into_iter().map(|d| d.0));
                    Ok(())
                }).unwrap();
            }
            let mut stored = Vec::new();
            store.view(&mut |r| { stored = load(r, 7, 3, 0, 300)?; Ok(()) }).unwrap();
            prop_assert_eq!(&stored, &mem);
            let mut partial = Vec::new();
            store.view(&mut |r| { partial = load(r, 7, 3, 50, 120)?; Ok(()) }).unwrap();
            prop_assert_eq!(plan_read(&partial, 50, 120), plan_read(&mem, 50, 120));
            prop_assert_eq!(killed_stored, killed_mem);
        }

        #[test]
        fn a_flush_of_many_slices_kills_what_the_in_memory_map_kills(
            writes in prop::collection::vec((0u32..200, 1u32..60), 1..24),
            groups in prop::collection::vec(1usize..5, 1..24),
            split in prop::collection::vec((0u32..60, 0u32..60), 0..6),
        ) {
            use spoolfs_metadata::{Durability, KvStore, MemStore};
            let store = MemStore::default();
            let mut mem: Vec<SliceRec> = Vec::new();
            let (mut killed_mem, mut killed_stored) = (BTreeSet::new(), BTreeSet::new());
            // One flush of `group`: laid over the in-memory map and the stored one alike.
            let mut flush = |group: &[SliceRec]| {
                let before = [mem.as_slice(), group].concat();
                for n in group {
                    insert(&mut mem, *n);
                }
                killed_mem.extend(dead_slices(&before, &mem).into_iter().map(|d| d.0));
                store.update(Durability::Visible, &mut |t| {
                    let dead = insert_all_stored(t, 7, 3, group)?;
                    killed_stored.extend(dead.into_iter().map(|d| d.0));
                    Ok(())
                }).unwrap();
            };
            // Old slices in pieces: slice 1000 + k written whole, then partly overwritten, so
            // that later groups meet segments with an offset into their slice.
            for (k, (a, b)) in split.iter().enumerate() {
                let whole = seg(1000 + k as u64, 20 * k as u32, 60);
                let hole = seg(2000 + k as u64, whole.pos + a.min(b), a.max(b) - a.min(b) + 1);
                flush(&[whole]);
                flush(&[hole]);
            }
            let mut next = 0;
            for size in groups {
                if next >= writes.len() {
                    break;
                }
                let end = (next + size).min(writes.len());
                let group: Vec<SliceRec> = (next..end)
                    .map(|i| seg(i as u64 + 1, writes[i].0, writes[i].1))
                    .collect();
                next = end;
                flush(&group);
            }
            let mut stored = Vec::new();
            store.view(&mut |r| { stored = load(r, 7, 3, 0, 400)?; Ok(()) }).unwrap();
            prop_assert_eq!(&stored, &mem);
            prop_assert_eq!(killed_stored, killed_mem);
        }

        #[test]
        fn resolved_list_matches_painting(writes in prop::collection::vec((0u32..200, 1u32..60), 1..20)) {
            let writes = numbered(writes);
            let mut segs = Vec::new();
            for &(id, pos, len) in &writes {
                insert(&mut segs, seg(id, pos, len));
                for w in segs.windows(2) {
                    prop_assert!(w[0].pos + w[0].len <= w[1].pos, "overlap or unsorted: {:?}", segs);
                }
            }
            prop_assert_eq!(render(&segs, 300), paint(&writes, 300));
        }

        #[test]
        fn cut_makes_a_hole(writes in prop::collection::vec((0u32..200, 1u32..60), 1..10), a in 0u32..260, b in 0u32..260) {
            let writes = numbered(writes);
            let mut segs = Vec::new();
            for &(id, pos, len) in &writes {
                insert(&mut segs, seg(id, pos, len));
            }
            let (lo, hi) = (a.min(b), a.max(b));
            cut(&mut segs, lo, hi);
            let mut expect = paint(&writes, 300);
            for e in expect.iter_mut().take(hi as usize).skip(lo as usize) {
                *e = None;
            }
            prop_assert_eq!(render(&segs, 300), expect);
        }
    }

    #[test]
    fn dead_slices_are_those_fully_shadowed() {
        let mut segs = vec![seg(1, 0, 10), seg(2, 20, 10)];
        let before = segs.clone();
        insert(&mut segs, seg(3, 0, 15));
        assert_eq!(dead_slices(&before, &segs), vec![(1, 10)]);
        let before = segs.clone();
        insert(&mut segs, seg(4, 22, 2));
        assert!(
            dead_slices(&before, &segs).is_empty(),
            "slice 2 still visible on both sides"
        );
        assert_eq!(segs.iter().filter(|s| s.id == 2).count(), 2);
    }

    #[test]
    fn plan_read_reports_holes() {
        let segs = vec![seg(7, 10, 5)];
        let plan = plan_read(&segs, 0, 20);
        assert_eq!(
            plan,
            vec![
                ReadPiece {
                    pos: 0,
                    len: 10,
                    source: None
                },
                ReadPiece {
                    pos: 10,
                    len: 5,
                    source: Some((7, 5, 0))
                },
                ReadPiece {
                    pos: 15,
                    len: 5,
                    source: None
                },
            ]
        );
    }
}
