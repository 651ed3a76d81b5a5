//! Telling a write a power cut lost from damage.
//!
//! Without a restart of the machine every record the log wrote is on the device, flushed or
//! not (the device cache survives a crash of the process): a record that fails its checks
//! with valid records after it is damage. A restart may have been a power cut, which keeps an
//! arbitrary subset of the writes no flush covered, each one whole, torn at sector
//! boundaries, or lost. So the log remembers in which boot its records were written: the file
//! `boots` in its directory holds the boot id of the last open (`/proc/sys/kernel/random/
//! boot_id`) and the first sequence number of each boot whose records may still be in the
//! log. Records of a boot that has ended carry (record version 3) the sequence number through
//! which the log was flushed when they were placed; the highest such number an intact record
//! of that boot carries is its **watermark**. A record of an ended boot numbered above its
//! watermark that fails its checks is taken for a write the power cut tore (skipped like a
//! torn tail); one at or below it, and any failing record of the current boot, is damage.
//!
//! File format (text): `spoolfs-boots 1`, the boot id, then the first sequence numbers in
//! increasing order, space-separated; one line each.

use std::io;
use std::path::Path;

use super::io::SegmentFiles;

const FILE: &str = "boots";
const MAGIC: &str = "spoolfs-boots 1";

/// What the `boots` file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Boots {
    pub boot_id: String,
    /// First sequence number of each boot, increasing.
    pub starts: Vec<u64>,
}

impl Boots {
    /// The file in `dir`; `None` when it is missing or unreadable (every record is then taken
    /// for one of an ended boot).
    pub fn read(dir: &Path) -> Option<Boots> {
        let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let boot_id = lines.next()?.trim().to_string();
        let starts: Vec<u64> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?;
        starts
            .windows(2)
            .all(|w| w[0] < w[1])
            .then_some(Boots { boot_id, starts })
    }

    /// Writes the file (a temporary file synced, renamed into place, the directory synced)
    /// through the log's file operations, so a simulated device sees it.
    pub fn write(&self, fs: &dyn SegmentFiles, dir: &Path) -> io::Result<()> {
        let starts: Vec<String> = self.starts.iter().map(u64::to_string).collect();
        let text = format!("{MAGIC}\n{}\n{}\n", self.boot_id, starts.join(" "));
        let tmp = dir.join(format!("{FILE}.tmp"));
        let f = fs.create(&tmp)?;
        fs.write_at(&f, 0, text.as_bytes())?;
        fs.sync(&f)?;
        drop(f);
        fs.rename(&tmp, &dir.join(FILE))?;
        fs.sync_dir(dir)
    }
}

/// Which failing records of a log a power cut may explain (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct PowerCuts {
    /// First sequence number of each ended boot and of the current one.
    starts: Vec<u64>,
    /// Records numbered from here on were written in the current boot: `u64::MAX` when the
    /// machine restarted since the last open (or that is not known).
    current_from: u64,
    /// Per interval between starts (`starts.len() + 1` of them): its watermark.
    watermarks: Vec<u64>,
}

impl PowerCuts {
    /// `recorded`: the file as the last open left it; `boot_id`: this boot's (`None`: not
    /// known); `intact`: (sequence, flushed-through) of every record that passes its checks.
    pub fn new(
        recorded: Option<&Boots>,
        boot_id: Option<&str>,
        intact: impl Iterator<Item = (u64, Option<u64>)>,
    ) -> PowerCuts {
        let starts = recorded.map(|b| b.starts.clone()).unwrap_or_default();
        let same_boot = matches!((recorded, boot_id), (Some(b), Some(id)) if b.boot_id == id);
        let current_from = if same_boot {
            starts.last().copied().unwrap_or(0)
        } else {
            u64::MAX
        };
        let mut cuts = PowerCuts {
            watermarks: vec![0; starts.len() + 1],
            starts,
            current_from,
        };
        for (seq, flushed_through) in intact {
            let i = cuts.interval(seq);
            let w = &mut cuts.watermarks[i];
            *w = (*w).max(flushed_through.unwrap_or(0));
        }
        cuts
    }

    /// Whether the machine restarted since the last open (or that is not known).
    pub fn restarted(&self) -> bool {
        self.current_from == u64::MAX
    }

    fn interval(&self, seq: u64) -> usize {
        self.starts.partition_point(|&s| s <= seq)
    }

    /// A record numbered `seq` that fails its checks may be a write a power cut tore.
    pub fn may_have_torn(&self, seq: u64) -> bool {
        seq < self.current_from && seq > self.watermarks[self.interval(seq)]
    }

    /// An unreadable region between the valid records numbered `prev` (none: the region
    /// starts the segment) and `next` may be writes a power cut tore: every record it can
    /// hold is numbered above `prev`'s boot's watermark. Without `prev`, or with `prev` in
    /// an earlier boot, only the record just before `next` is known to be in the region.
    pub fn may_have_torn_region(&self, prev: Option<u64>, next: u64) -> bool {
        if next >= self.current_from || next == 0 {
            return false;
        }
        match prev {
            Some(p) if self.interval(p) == self.interval(next) => {
                p >= self.watermarks[self.interval(p)]
            }
            _ => self.may_have_torn(next - 1),
        }
    }

    /// The file this open leaves: unchanged in the same boot; else this boot starts at
    /// `next_seq`, and boots whose records are all gone (every record present is numbered
    /// `lowest_present` or more) are forgotten.
    pub fn next_file(
        &self,
        boot_id: Option<&str>,
        next_seq: u64,
        lowest_present: Option<u64>,
    ) -> Option<Boots> {
        let boot_id = boot_id?;
        if !self.restarted() {
            return None;
        }
        let mut starts: Vec<u64> = self
            .starts
            .iter()
            .copied()
            .filter(|&s| s < next_seq && lowest_present.is_some_and(|low| s > low))
            .collect();
        starts.push(next_seq);
        Some(Boots {
            boot_id: boot_id.to_string(),
            starts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boots(id: &str, starts: &[u64]) -> Boots {
        Boots {
            boot_id: id.into(),
            starts: starts.to_vec(),
        }
    }

    #[test]
    fn without_a_restart_nothing_is_a_power_cut() {
        let b = boots("a", &[1]);
        let cuts = PowerCuts::new(Some(&b), Some("a"), [(5, Some(2))].into_iter());
        assert!(!cuts.restarted());
        assert!(!cuts.may_have_torn(6));
        assert!(!cuts.may_have_torn_region(Some(5), 9));
        assert_eq!(cuts.next_file(Some("a"), 10, Some(5)), None);
    }

    #[test]
    fn after_a_restart_only_records_above_the_watermark_may_be_torn() {
        let b = boots("a", &[1]);
        let intact = [(3, Some(0)), (7, Some(4)), (9, Some(6))];
        let cuts = PowerCuts::new(Some(&b), Some("b"), intact.into_iter());
        assert!(cuts.restarted());
        assert!(!cuts.may_have_torn(5), "flushed before record 9 was placed");
        assert!(!cuts.may_have_torn(6));
        assert!(cuts.may_have_torn(8));
        assert!(cuts.may_have_torn_region(Some(7), 9));
        assert!(!cuts.may_have_torn_region(Some(3), 7));
        assert!(cuts.may_have_torn_region(None, 9));
        assert!(!cuts.may_have_torn_region(None, 7));
        let next = cuts.next_file(Some("b"), 10, Some(3)).unwrap();
        assert_eq!(next, boots("b", &[10]));
    }

    #[test]
    fn each_ended_boot_has_its_own_watermark_and_the_current_one_none() {
        // Boot "a" wrote 1..=9 (flushed through 4), boot "b" from 10 (flushed through 15),
        // boot "c" (now) from 20.
        let b = boots("c", &[1, 10, 20]);
        let intact = [(7, Some(4)), (12, Some(15)), (16, Some(15)), (22, Some(21))];
        let cuts = PowerCuts::new(Some(&b), Some("c"), intact.into_iter());
        assert!(
            cuts.may_have_torn(5),
            "a later boot's flushes say nothing of it"
        );
        assert!(!cuts.may_have_torn(14));
        assert!(cuts.may_have_torn(17));
        assert!(!cuts.may_have_torn(25), "written in this boot: damage");
        assert!(!cuts.may_have_torn_region(Some(16), 22));
    }

    #[test]
    fn the_file_round_trips_and_forgets_boots_without_records() {
        let dir = tempfile::tempdir().unwrap();
        let b = boots("x", &[1, 10, 20]);
        b.write(&crate::io::RealFiles, dir.path()).unwrap();
        assert_eq!(Boots::read(dir.path()), Some(b.clone()));
        let cuts = PowerCuts::new(Some(&b), Some("y"), std::iter::empty());
        let next = cuts.next_file(Some("y"), 30, Some(12)).unwrap();
        assert_eq!(next.starts, vec![20, 30]);
        let next = cuts.next_file(Some("y"), 30, None).unwrap();
        assert_eq!(next.starts, vec![30]);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(Boots::read(dir.path()), None);
    }
}
