//! The client: reads another mount's staged slices, over pooled blocking connections (the
//! engine's read path is synchronous), each request bounded by one deadline.

use crate::protocol::{
    self, ErrorCode, FRAME_HEADER_LEN, Frame, MAX_ERROR_FRAME, NONCE_LEN, PeerKey, ReadRequest,
    VERSION, VOLUME_ID_LEN,
};
use crate::{ConfigError, PeerError};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The client's limits. Every field is a mount flag.
#[derive(Debug, Clone)]
pub struct PeerClientConfig {
    /// How long one [`PeerClient::read`] may take, connecting included.
    pub timeout: Duration,
    /// How long connecting may take (within `timeout`).
    pub connect_timeout: Duration,
    /// Idle connections kept per peer.
    pub max_idle_per_peer: usize,
    /// A pooled connection unused this long is closed rather than reused (below the server's
    /// idle timeout, so a reused connection is rarely one the server has just closed).
    pub idle_lifetime: Duration,
    /// A read is split into requests of at most this many bytes (and at most what the
    /// server's hello allows).
    pub max_request_bytes: u32,
}

impl Default for PeerClientConfig {
    fn default() -> Self {
        PeerClientConfig {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_idle_per_peer: 4,
            idle_lifetime: Duration::from_secs(30),
            max_request_bytes: 4 << 20,
        }
    }
}

/// What the client did since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerClientStats {
    pub reads: u64,
    pub bytes: u64,
    pub failures: u64,
    pub connects: u64,
    /// Sum of the latencies of successful reads, in microseconds.
    pub latency_us: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
    connects: AtomicU64,
    latency_us: AtomicU64,
}

/// One connection and what its hello said.
struct Conn {
    stream: TcpStream,
    nonce: [u8; NONCE_LEN],
    max_read: u32,
    next_request: u64,
    idle_since: Instant,
}

/// Reads staged slices from the volume's other mounts. Shared by all reading threads.
pub struct PeerClient {
    key: PeerKey,
    volume: [u8; VOLUME_ID_LEN],
    config: PeerClientConfig,
    pool: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    counters: Counters,
}

/// How a read on one connection failed.
enum Failure {
    /// A reused connection turned out closed before any reply byte: worth one retry.
    Stale,
    Error(PeerError),
}

impl From<PeerError> for Failure {
    fn from(e: PeerError) -> Failure {
        Failure::Error(e)
    }
}

impl PeerClient {
    pub fn new(
        volume_id: [u8; VOLUME_ID_LEN],
        secret: &[u8],
        config: PeerClientConfig,
    ) -> Result<PeerClient, ConfigError> {
        let key = PeerKey::new(secret).ok_or(ConfigError::ShortSecret(secret.len()))?;
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "peer client: timeouts must be above zero".into(),
            ));
        }
        if config.max_request_bytes == 0 {
            return Err(ConfigError::Invalid(
                "peer client: max_request_bytes must be at least 1".into(),
            ));
        }
        Ok(PeerClient {
            key,
            volume: volume_id,
            config,
            pool: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        })
    }

    /// Bytes `[offset, offset + len)` of slice `slice` staged on the mount at `addr`, checked
    /// against the CRC-32C each reply carries. Fails within the configured timeout.
    pub fn read(
        &self,
        addr: SocketAddr,
        slice: u64,
        offset: u32,
        len: u32,
    ) -> Result<Bytes, PeerError> {
        let started = Instant::now();
        let result = self.read_by(addr, slice, offset, len, started + self.config.timeout);
        let c = &self.counters;
        match &result {
            Ok(data) => {
                c.reads.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
                c.latency_us.fetch_add(us, Ordering::Relaxed);
            }
            Err(_) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Closes the pooled connections to `addr` (its session ended, or moved).
    pub fn forget(&self, addr: SocketAddr) {
        self.pool.lock().remove(&addr);
    }

    pub fn stats(&self) -> PeerClientStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerClientStats {
            reads: get(&c.reads),
            bytes: get(&c.bytes),
            failures: get(&c.failures),
            connects: get(&c.connects),
            latency_us: get(&c.latency_us),
        }
    }

    fn read_by(
        &self,
        addr: SocketAddr,
        slice: u64,
        offset: u32,
        len: u32,
        deadline: Instant,
    ) -> Result<Bytes, PeerError> {
        if let Some(conn) = self.take_pooled(addr) {
            match self.read_on(conn, addr, slice, offset, len, deadline, true) {
                Ok(data) => return Ok(data),
                Err(Failure::Stale) => {}
                Err(Failure::Error(e)) => return Err(e),
            }
        }
        let conn = self.connect(addr, deadline)?;
        match self.read_on(conn, addr, slice, offset, len, deadline, false) {
            Ok(data) => Ok(data),
            Err(Failure::Error(e)) => Err(e),
            Err(Failure::Stale) => Err(PeerError::Protocol {
                addr,
                detail: "connection closed before a reply".into(),
            }),
        }
    }

    fn take_pooled(&self, addr: SocketAddr) -> Option<Conn> {
        let mut pool = self.pool.lock();
        let conns = pool.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
            if conn.idle_since.elapsed() < self.config.idle_lifetime {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, addr: SocketAddr, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut pool = self.pool.lock();
        let conns = pool.entry(addr).or_default();
        conns.retain(|c| c.idle_since.elapsed() < self.config.idle_lifetime);
        if conns.len() < self.config.max_idle_per_peer {
            conns.push(conn);
        }
    }

    /// A new connection, its hello read and checked.
    fn connect(&self, addr: SocketAddr, deadline: Instant) -> Result<Conn, PeerError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = left.min(self.config.connect_timeout);
        if limit.is_zero() {
            return Err(PeerError::Timeout {
                addr,
                after: self.config.timeout,
            });
        }
        let stream = TcpStream::connect_timeout(&addr, limit)
            .map_err(|source| PeerError::Unreachable { addr, source })?;
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            nonce: [0u8; NONCE_LEN],
            max_read: 0,
            next_request: 1,
            idle_since: Instant::now(),
        };
        let frame = self
            .receive(&mut conn.stream, addr, MAX_ERROR_FRAME, deadline)
            .map_err(|e| match e {
                Failure::Error(e) => e,
                Failure::Stale => PeerError::Protocol {
                    addr,
                    detail: "connection closed before the hello".into(),
                },
            })?;
        match frame {
            Frame::Hello(h) if h.version == VERSION && h.max_read > 0 => {
                conn.nonce = h.nonce;
                conn.max_read = h.max_read;
                Ok(conn)
            }
            Frame::Hello(h) if h.version != VERSION => Err(PeerError::Protocol {
                addr,
                detail: format!(
                    "the peer speaks protocol version {}, this mount version {VERSION}",
                    h.version
                ),
            }),
            Frame::Hello(_) => Err(PeerError::Protocol {
                addr,
                detail: "the peer's hello allows reads of 0 bytes".into(),
            }),
            Frame::Error(e) => Err(PeerError::Refused {
                addr,
                code: e.code,
                message: e.message,
            }),
            other => Err(PeerError::Protocol {
                addr,
                detail: format!("expected a hello, got {}", describe(&other)),
            }),
        }
    }

    /// Reads `[offset, offset + len)` in requests of at most the connection's piece size, and
    /// pools the connection again if it is still in step.
    #[allow(clippy::too_many_arguments)]
    fn read_on(
        &self,
        mut conn: Conn,
        addr: SocketAddr,
        slice: u64,
        offset: u32,
        len: u32,
        deadline: Instant,
        reused: bool,
    ) -> Result<Bytes, Failure> {
        let piece_max = conn.max_read.min(self.config.max_request_bytes);
        let end = offset.checked_add(len).ok_or_else(|| PeerError::Protocol {
            addr,
            detail: format!("read of {len} bytes at {offset} overflows a slice offset"),
        })?;
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut at = offset;
        while at < end || (len == 0 && pieces.is_empty()) {
            let piece = (end - at).min(piece_max);
            let first = pieces.is_empty();
            let data =
                match self.request(&mut conn, addr, slice, at, piece, deadline, reused && first) {
                    Ok(data) => data,
                    // The server answered in step: the connection can serve the next read.
                    Err(Failure::Error(
                        e @ (PeerError::NotStaged { .. } | PeerError::ReadFailed { .. }),
                    )) => {
                        self.put_back(addr, conn);
                        return Err(e.into());
                    }
                    Err(e) => return Err(e),
                };
            at += piece;
            pieces.push(data);
        }
        self.put_back(addr, conn);
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_default());
        }
        let mut whole = Vec::with_capacity(len as usize);
        for p in pieces {
            whole.extend_from_slice(&p);
        }
        Ok(Bytes::from(whole))
    }

    /// One request and its reply.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        conn: &mut Conn,
        addr: SocketAddr,
        slice: u64,
        offset: u32,
        len: u32,
        deadline: Instant,
        may_be_stale: bool,
    ) -> Result<Bytes, Failure> {
        let request_id = conn.next_request;
        conn.next_request += 1;
        let mut q = ReadRequest {
            version: VERSION,
            request_id,
            volume: self.volume,
            slice,
            offset,
            len,
            mac: [0u8; protocol::MAC_LEN],
        };
        q.mac = protocol::read_mac(&self.key, &conn.nonce, &q);
        let bytes = protocol::encode(&Frame::Read(q));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout(addr).into());
        }
        let _ = conn.stream.set_write_timeout(Some(left));
        if let Err(e) = conn.stream.write_all(&bytes) {
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => self.timeout(addr).into(),
                _ if may_be_stale => Failure::Stale,
                _ => PeerError::Unreachable { addr, source: e }.into(),
            });
        }
        let max_frame = protocol::max_data_frame(len).max(MAX_ERROR_FRAME);
        let frame = match self.receive(&mut conn.stream, addr, max_frame, deadline) {
            Err(Failure::Stale) if !may_be_stale => {
                return Err(PeerError::Protocol {
                    addr,
                    detail: "connection closed before a reply".into(),
                }
                .into());
            }
            other => other?,
        };
        let unauthenticated = |what: &str| PeerError::Protocol {
            addr,
            detail: format!("{what} reply without a valid MAC"),
        };
        match frame {
            Frame::Data(d) => {
                if d.request_id != request_id {
                    return Err(PeerError::Protocol {
                        addr,
                        detail: format!("reply to request {}, expected {request_id}", d.request_id),
                    }
                    .into());
                }
                if !protocol::verify_data(&self.key, &conn.nonce, &d) {
                    return Err(unauthenticated("data").into());
                }
                if d.data.len() != len as usize {
                    return Err(PeerError::Protocol {
                        addr,
                        detail: format!("{} bytes for a read of {len}", d.data.len()),
                    }
                    .into());
                }
                let actual = crc32c::crc32c(&d.data);
                if actual != d.crc {
                    return Err(PeerError::Checksum {
                        addr,
                        slice,
                        offset,
                        expected: d.crc,
                        actual,
                    }
                    .into());
                }
                Ok(d.data)
            }
            Frame::Error(e) => {
                // A server cannot authenticate its refusal of a client without the secret
                // (or of bytes that were not a request); anything else must carry its MAC.
                let unsigned = matches!(
                    e.code,
                    ErrorCode::AuthFailed | ErrorCode::BadFrame | ErrorCode::Busy
                );
                if !unsigned && !protocol::verify_error(&self.key, &conn.nonce, &e) {
                    return Err(unauthenticated("error").into());
                }
                Err(match e.code {
                    ErrorCode::NotStaged => PeerError::NotStaged { addr, slice },
                    ErrorCode::ReadFailed => PeerError::ReadFailed {
                        addr,
                        slice,
                        message: e.message,
                    },
                    code => PeerError::Refused {
                        addr,
                        code,
                        message: e.message,
                    },
                }
                .into())
            }
            other => Err(PeerError::Protocol {
                addr,
                detail: format!("expected a reply, got {}", describe(&other)),
            }
            .into()),
        }
    }

    fn timeout(&self, addr: SocketAddr) -> PeerError {
        PeerError::Timeout {
            addr,
            after: self.config.timeout,
        }
    }

    /// One frame of at most `max_len`, by `deadline`. `Stale` if the connection was closed
    /// before its first byte.
    fn receive(
        &self,
        stream: &mut TcpStream,
        addr: SocketAddr,
        max_len: u32,
        deadline: Instant,
    ) -> Result<Frame, Failure> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        match read_by(stream, &mut header, deadline) {
            Ok(()) => {}
            Err(Short::Timeout) => return Err(self.timeout(addr).into()),
            Err(Short::Closed { got: 0, .. }) => return Err(Failure::Stale),
            Err(Short::Closed { source, .. }) => {
                return Err(PeerError::Unreachable { addr, source }.into());
            }
        }
        let (kind, body_len) =
            protocol::parse_header(&header, max_len).map_err(|e| PeerError::Protocol {
                addr,
                detail: e.to_string(),
            })?;
        let mut body = vec![0u8; body_len];
        match read_by(stream, &mut body, deadline) {
            Ok(()) => {}
            Err(Short::Timeout) => return Err(self.timeout(addr).into()),
            Err(Short::Closed { source, .. }) => {
                return Err(PeerError::Protocol {
                    addr,
                    detail: format!("truncated frame: {source}"),
                }
                .into());
            }
        }
        protocol::decode_body(kind, Bytes::from(body)).map_err(|e| {
            PeerError::Protocol {
                addr,
                detail: e.to_string(),
            }
            .into()
        })
    }
}

fn describe(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a hello",
        Frame::Read(_) => "a request",
        Frame::Data(_) => "data",
        Frame::Error(_) => "an error",
    }
}

enum Short {
    Timeout,
    Closed { got: usize, source: std::io::Error },
}

/// Fills `buf` from `stream` by `deadline`.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), Short> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Short::Timeout);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                let source = std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed");
                return Err(Short::Closed { got, source });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Short::Timeout);
            }
            Err(source) => return Err(Short::Closed { got, source }),
        }
    }
    Ok(())
}
