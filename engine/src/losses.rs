//! Data losses found by replay: bytes of staged data or namespace changes whose checksums
//! failed in the middle of a log (corruption, not a write cut short by a crash). Each is
//! recorded under a `Q` key of the metadata store, so that `spoolfs status` lists them and
//! `spoolfs fsck` reports them as DATA LOSS until an operator has dealt with them
//! (`spoolfs fsck --forget-losses`).

use crate::schema::{self, DentryRec};
use crate::types::Ino;
use serde::{Deserialize, Serialize};
use spoolfs_metadata::{KvRead, KvTxn, MetaError, prefix_end};
use std::collections::HashMap;

pub const LOSS_PREFIX: &[u8] = b"Q";

/// One recorded loss.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataLoss {
    /// When replay found it (ns since the Unix epoch).
    pub found_ns: u64,
    /// The file that lost bytes (0: not known, e.g. an unreadable record header).
    pub ino: Ino,
    /// A path of that file when replay found it, if it has a name.
    pub path: Option<String>,
    /// Byte range `[offset, offset + bytes)` of the file that now reads as zeros (for an
    /// unknown owner: of the log file).
    pub offset: u64,
    pub bytes: u64,
    /// The staged slice that held them (0: none).
    pub slice: u64,
    /// What failed, and where.
    pub cause: String,
}

/// The key of a loss: `Q`, a kind byte, then what identifies it, so that finding the same
/// damage again at a later mount records it once.
pub fn loss_key(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.len());
    k.extend_from_slice(LOSS_PREFIX);
    k.push(kind);
    k.extend_from_slice(id);
    k
}

/// Key kinds: a staged slice (`s` + slice id), a namespace transaction (`n` + epoch + seq),
/// an unreadable region of a log (`r` + log name byte + segment + offset + a fingerprint).
pub const LOSS_SLICE: u8 = b's';
pub const LOSS_NAMESPACE: u8 = b'n';
pub const LOSS_REGION: u8 = b'r';

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Records `loss` under `key` unless it is already there; returns whether it is new.
pub fn record(
    t: &mut dyn KvTxn,
    key: &[u8],
    loss: &DataLoss,
) -> std::result::Result<bool, MetaError> {
    if t.get(key)?.is_some() {
        return Ok(false);
    }
    t.put(key, &schema::encode(loss))?;
    Ok(true)
}

/// Every recorded loss, oldest first.
pub fn list(r: &dyn KvRead) -> std::result::Result<Vec<DataLoss>, MetaError> {
    let mut out: Vec<DataLoss> = r
        .scan(LOSS_PREFIX, &prefix_end(LOSS_PREFIX), usize::MAX)?
        .into_iter()
        .map(|(_, v)| schema::decode("data loss", &v))
        .collect::<std::result::Result<_, _>>()?;
    out.sort_by_key(|l| l.found_ns);
    Ok(out)
}

/// Deletes every recorded loss; returns how many there were.
pub fn forget_all(t: &mut dyn KvTxn) -> std::result::Result<usize, MetaError> {
    let keys: Vec<Vec<u8>> = t
        .scan(LOSS_PREFIX, &prefix_end(LOSS_PREFIX), usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in &keys {
        t.delete(k)?;
    }
    Ok(keys.len())
}

/// A path of each of `inos` (one of its names), found by one scan of the directory entries.
/// Only for reports: it reads every entry of the volume.
pub fn paths_of(
    r: &dyn KvRead,
    inos: &[Ino],
) -> std::result::Result<HashMap<Ino, String>, MetaError> {
    let mut out = HashMap::new();
    if inos.is_empty() {
        return Ok(out);
    }
    // Every name, by inode: files have no parent pointer, so the entries are the only way up.
    let mut names: HashMap<Ino, (Ino, Vec<u8>)> = HashMap::new();
    for (k, v) in r.scan(b"D", &prefix_end(b"D"), usize::MAX)? {
        let Ok(parent) = schema::key_id("directory entry", &k) else {
            continue;
        };
        let d: DentryRec = schema::decode("directory entry", &v)?;
        names.entry(d.ino).or_insert((parent, k[9..].to_vec()));
    }
    for &ino in inos {
        let mut parts = Vec::new();
        let mut at = ino;
        let mut ok = false;
        for _ in 0..4096 {
            if at == crate::types::ROOT_INO {
                ok = true;
                break;
            }
            let Some((parent, name)) = names.get(&at) else {
                break;
            };
            parts.push(String::from_utf8_lossy(name).into_owned());
            at = *parent;
        }
        if ok {
            parts.reverse();
            out.insert(ino, format!("/{}", parts.join("/")));
        }
    }
    Ok(out)
}
