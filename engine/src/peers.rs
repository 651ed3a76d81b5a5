//! Peer reads on a shared volume: this mount serves its staged slices to the volume's other
//! mounts, and reads a slice staged on another node from that node (its `T` record names the
//! owner node; the owner's session record says where it listens). While the owner cannot be
//! reached, the reader waits for the owner's upload (the `T` record disappears) up to the
//! peer timeout, then fails with EIO.

use crate::error::{FsError, Result};
use crate::meta::Meta;
use crate::schema;
use crate::session;
use bytes::Bytes;
use spoolfs_metadata::{Durability, KvStore, MetaError};
use spoolfs_peer::{
    PeerClient, PeerClientConfig, PeerError, PeerServer, PeerServerConfig, SourceError,
    StagedSlices,
};
use spoolfs_uploader::Uploader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The volume's peer secret (random bytes made at format): only mounts of the volume, which
/// read it here, can read each other's staged slices. Never shown by `status`.
pub const PEER_SECRET_KEY: &[u8] = b"A";

/// Bytes of a new peer secret.
const SECRET_LEN: usize = 32;

/// How often a reader waiting for an unreachable owner asks again (owner and metadata).
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// How a mount serves and reads staged slices (the mount's `--peer-*` flags).
#[derive(Clone, Debug)]
pub struct PeerSettings {
    /// Where the peer server listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The address other mounts are told (default: the listen address, or this host's
    /// address when listening on all interfaces).
    pub advertise: Option<SocketAddr>,
    /// How long a read of a slice staged on an unreachable node waits for its upload.
    pub timeout: Duration,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            advertise: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Writes a new peer secret (at format).
pub fn create_secret(t: &mut dyn spoolfs_metadata::KvTxn) -> std::result::Result<(), MetaError> {
    let secret = spoolfs_peer::new_secret()
        .map_err(|e| MetaError::Io(format!("cannot make the volume's peer secret: {e}")))?;
    t.put(PEER_SECRET_KEY, &secret[..SECRET_LEN])
}

/// The volume's peer secret; one is made if the volume was formatted without.
pub fn volume_secret(meta: &dyn KvStore) -> Result<Vec<u8>> {
    let mut secret = None;
    meta.update(Durability::Durable, &mut |t| {
        secret = match t.get(PEER_SECRET_KEY)? {
            Some(s) => Some(s),
            None => {
                create_secret(t)?;
                t.get(PEER_SECRET_KEY)?
            }
        };
        Ok(())
    })?;
    secret.ok_or_else(|| FsError::new(libc::EIO, "the volume's peer secret is missing"))
}

/// Peer read counters since the mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Reads answered from another node.
    pub reads: u64,
    pub bytes: u64,
    /// Reads that failed with EIO (owner unreachable past the peer timeout, refused, or bad
    /// data).
    pub failures: u64,
    /// Sum of the latencies of successful peer requests, in microseconds.
    pub latency_us: u64,
    /// Staged slice reads this mount served to others.
    pub served: u64,
}

/// This mount's staged slices, as the peer server sees them.
struct UploaderSlices(Arc<Uploader>);

impl StagedSlices for UploaderSlices {
    fn read_staged(
        &self,
        slice_id: u64,
        offset: u32,
        len: u32,
    ) -> std::result::Result<Option<Bytes>, SourceError> {
        let Some(staged) = self.0.get(slice_id) else {
            return Ok(None);
        };
        if offset as u64 + len as u64 > staged.rec.size as u64 {
            return Err(format!(
                "bytes [{offset}, {}) are beyond slice {slice_id}'s {} bytes",
                offset as u64 + len as u64,
                staged.rec.size
            )
            .into());
        }
        let mut buf = vec![0u8; len as usize];
        match self.0.read_staged(slice_id, offset, &mut buf) {
            None => Ok(None),
            Some(Ok(())) => Ok(Some(Bytes::from(buf))),
            Some(Err(e)) => Err(e.to_string().into()),
        }
    }

    fn prioritise(&self, slice_id: u64) {
        self.0.prioritise(slice_id);
    }
}

/// The peer server of this mount and the client it reads other mounts with.
pub struct Peers {
    node_id: u64,
    meta: Arc<Meta>,
    server: PeerServer,
    advertised: SocketAddr,
    client: PeerClient,
    timeout: Duration,
    reads: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

impl Peers {
    /// Starts serving `uploader`'s staged slices to holders of `secret`.
    pub(crate) fn start(
        meta: Arc<Meta>,
        uploader: Arc<Uploader>,
        volume_uuid: [u8; 16],
        secret: &[u8],
        settings: &PeerSettings,
    ) -> Result<Peers> {
        let config_err = |e: spoolfs_peer::ConfigError| FsError::new(libc::EINVAL, e.to_string());
        let node_id = uploader.opts.node_id;
        let server = PeerServer::start(
            settings.listen,
            volume_uuid,
            secret,
            Arc::new(UploaderSlices(uploader)),
            PeerServerConfig::default(),
        )
        .map_err(config_err)?;
        let advertised = match settings.advertise {
            Some(a) => a,
            None => server.advertised_addr().unwrap_or_else(|e| {
                // Mounts on this host can still read from it.
                let loopback = SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
                tracing::warn!(
                    "cannot tell which address other hosts reach this one at ({e}): \
                     advertising {loopback}, which only mounts on this host can use; \
                     give --peer-advertise ADDR:PORT"
                );
                loopback
            }),
        };
        // One request never waits longer than the whole read may.
        let request = settings
            .timeout
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let client = PeerClient::new(
            volume_uuid,
            secret,
            PeerClientConfig {
                timeout: request,
                connect_timeout: request.min(Duration::from_secs(3)),
                ..Default::default()
            },
        )
        .map_err(config_err)?;
        Ok(Peers {
            node_id,
            meta,
            server,
            advertised,
            client,
            timeout: settings.timeout,
            reads: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Where other mounts reach this one's peer server.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// Where the peer server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// This node's id in `T` records and session records.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn stats(&self) -> PeerStats {
        let c = self.client.stats();
        PeerStats {
            reads: self.reads.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            latency_us: c.latency_us,
            served: self.server.stats().reads_served,
        }
    }

    /// Reads `out.len()` bytes at `off` of slice `slice` if it is staged on another node.
    /// `None`: it is not (stored in the object store, or staged here): read it from there.
    pub fn read(&self, slice: u64, off: u32, out: &mut [u8]) -> Option<Result<()>> {
        let deadline = Instant::now() + self.timeout;
        let mut why: String;
        let mut owner_desc: String;
        loop {
            let rec = match self.meta.view(|r| {
                r.get(&schema::staged_key(slice))?
                    .map(|v| schema::decode_staged(&v))
                    .transpose()
            }) {
                Ok(rec) => rec,
                Err(e) => return Some(Err(e)),
            };
            let rec = rec?;
            if rec.owner == 0 || rec.owner == self.node_id {
                return None;
            }
            if off as u64 + out.len() as u64 > rec.size as u64 {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Some(Err(FsError::new(
                    libc::EIO,
                    format!(
                        "slice {slice}: bytes [{off}, {}) asked for, its staged record says {} bytes",
                        off as u64 + out.len() as u64,
                        rec.size
                    ),
                )));
            }
            let owner = session::list(self.meta.store()).ok().and_then(|sessions| {
                let now = session::now_s();
                sessions
                    .into_iter()
                    .filter(|s| s.node_id == Some(rec.owner))
                    .max_by_key(|s| (s.is_live(now), s.heartbeat_s))
            });
            owner_desc = match &owner {
                Some(s) => format!(
                    "{} at {}",
                    session::describe(s),
                    s.peer_addr.as_deref().unwrap_or("no peer address")
                ),
                None => format!("node {:016x} (no session: not mounted)", rec.owner),
            };
            let addr = owner
                .as_ref()
                .filter(|s| s.is_live(session::now_s()))
                .and_then(|s| s.peer_addr.as_deref())
                .and_then(|a| a.parse::<SocketAddr>().ok());
            match addr {
                None => why = "the owner is not mounted".into(),
                Some(addr) => match self.client.read(addr, slice, off, out.len() as u32) {
                    Ok(data) if data.len() == out.len() => {
                        out.copy_from_slice(&data);
                        self.reads.fetch_add(1, Ordering::Relaxed);
                        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        return Some(Ok(()));
                    }
                    Ok(data) => {
                        why = format!(
                            "{addr} sent {} bytes, {} were asked for",
                            data.len(),
                            out.len()
                        )
                    }
                    // Uploaded since the `T` record was read: read the metadata again.
                    Err(PeerError::NotStaged { .. }) => {
                        why = "the owner no longer has it staged".into();
                        if Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                    Err(e) if !e.upload_may_help() => {
                        self.failures.fetch_add(1, Ordering::Relaxed);
                        crate::warn_limited!(
                            "peer read of slice {slice} from {owner_desc} refused: {e}"
                        );
                        return Some(Err(FsError::new(libc::EIO, e.to_string())));
                    }
                    Err(e) => {
                        self.client.forget(addr);
                        why = e.to_string();
                    }
                },
            }
            let now = Instant::now();
            if now >= deadline {
                self.failures.fetch_add(1, Ordering::Relaxed);
                crate::warn_limited!(
                    "slice {slice} is staged on {owner_desc} and not uploaded; waited {:?}: {why}",
                    self.timeout
                );
                return Some(Err(FsError::new(
                    libc::EIO,
                    format!("slice {slice} is staged on {owner_desc}: {why}"),
                )));
            }
            std::thread::sleep(RETRY_EVERY.min(deadline - now));
        }
    }
}
