//! The server: serves this mount's staged slices to the volume's other mounts, on a small
//! tokio runtime of its own (network tasks) whose blocking threads read the staging log.

use crate::protocol::{
    self, DataReply, ErrorCode, ErrorReply, FRAME_HEADER_LEN, Frame, Hello, MAC_LEN,
    MAX_REQUEST_FRAME, NONCE_LEN, PeerKey, ReadRequest, VERSION, VOLUME_ID_LEN,
};
use crate::{ConfigError, StagedSlices};
use bytes::Bytes;
use spoolfs_lograte::warn_limited;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The server's limits. Every field is a mount flag; the defaults suit a node serving a few
/// dozen peers.
#[derive(Debug, Clone)]
pub struct PeerServerConfig {
    /// Connections served at once; one more is answered `Busy` and closed.
    pub max_connections: usize,
    /// The most bytes one request may ask for (told to clients in the hello).
    pub max_read_bytes: u32,
    /// Reads of the staging log at once: with `max_read_bytes`, bounds the memory held by
    /// replies being sent.
    pub max_concurrent_reads: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A started frame not received, or a reply not taken by the client, within this long
    /// closes the connection.
    pub io_timeout: Duration,
    /// Threads running the network tasks.
    pub threads: usize,
}

impl Default for PeerServerConfig {
    fn default() -> Self {
        PeerServerConfig {
            max_connections: 128,
            max_read_bytes: 16 << 20,
            max_concurrent_reads: 8,
            idle_timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(30),
            threads: 1,
        }
    }
}

impl PeerServerConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let fail = |what: &str| Err(ConfigError::Invalid(format!("peer server: {what}")));
        if self.max_connections == 0 {
            return fail("max_connections must be at least 1");
        }
        if self.max_read_bytes == 0 {
            return fail("max_read_bytes must be at least 1");
        }
        if self.max_concurrent_reads == 0 {
            return fail("max_concurrent_reads must be at least 1");
        }
        if self.threads == 0 {
            return fail("threads must be at least 1");
        }
        if self.idle_timeout.is_zero() || self.io_timeout.is_zero() {
            return fail("timeouts must be above zero");
        }
        Ok(())
    }
}

/// What the server did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerServerStats {
    pub connections: u64,
    /// Connections answered `Busy`.
    pub busy: u64,
    pub reads_served: u64,
    pub bytes_served: u64,
    pub not_staged: u64,
    /// Requests whose MAC was wrong.
    pub auth_failures: u64,
    /// Authenticated requests refused (another volume, too large, replayed, another version).
    pub refused: u64,
    /// Frames that were not requests.
    pub bad_frames: u64,
    /// Reads of the staging log that failed.
    pub read_failures: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    busy: AtomicU64,
    reads_served: AtomicU64,
    bytes_served: AtomicU64,
    not_staged: AtomicU64,
    auth_failures: AtomicU64,
    refused: AtomicU64,
    bad_frames: AtomicU64,
    read_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A running server; dropping it stops it.
pub struct PeerServer {
    runtime: Option<tokio::runtime::Runtime>,
    local_addr: SocketAddr,
    counters: Arc<Counters>,
}

/// What every connection task shares.
struct Shared {
    volume: [u8; VOLUME_ID_LEN],
    key: PeerKey,
    source: Arc<dyn StagedSlices>,
    config: PeerServerConfig,
    reads: Semaphore,
    counters: Arc<Counters>,
}

impl PeerServer {
    /// Listens on `listen` (port 0: any free port, see [`PeerServer::local_addr`]) and serves
    /// the staged slices of `source` to holders of `secret` asking for volume `volume_id`.
    pub fn start(
        listen: SocketAddr,
        volume_id: [u8; VOLUME_ID_LEN],
        secret: &[u8],
        source: Arc<dyn StagedSlices>,
        config: PeerServerConfig,
    ) -> Result<PeerServer, ConfigError> {
        config.check()?;
        let key = PeerKey::new(secret).ok_or(ConfigError::ShortSecret(secret.len()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .max_blocking_threads(config.max_concurrent_reads)
            .thread_name("spoolfs-peer")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ConfigError::Runtime)?;
        let bind = |source| ConfigError::Bind {
            addr: listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(listen).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = std_listener.local_addr().map_err(bind)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener).map_err(bind)?
        };
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            volume: volume_id,
            key,
            source,
            reads: Semaphore::new(config.max_concurrent_reads),
            counters: counters.clone(),
            config,
        });
        runtime.spawn(accept_loop(listener, shared));
        tracing::info!("serving staged slices to peers on {local_addr}");
        Ok(PeerServer {
            runtime: Some(runtime),
            local_addr,
            counters,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address other mounts should use (what the session advertises): the listening
    /// address, or, when it listens on every interface, this host's address on the route
    /// to other hosts, with the port it listens on.
    pub fn advertised_addr(&self) -> std::io::Result<SocketAddr> {
        advertised_addr(self.local_addr)
    }

    pub fn stats(&self) -> PeerServerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerServerStats {
            connections: get(&c.connections),
            busy: get(&c.busy),
            reads_served: get(&c.reads_served),
            bytes_served: get(&c.bytes_served),
            not_staged: get(&c.not_staged),
            auth_failures: get(&c.auth_failures),
            refused: get(&c.refused),
            bad_frames: get(&c.bad_frames),
            read_failures: get(&c.read_failures),
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Network tasks end at once; a staging-log read under way is not waited for long.
            rt.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

/// `listen` as other hosts can reach it: an unspecified address (`0.0.0.0`, `::`) becomes
/// the source address the host's routing table picks for other hosts (asked of the kernel by
/// connecting a UDP socket, which sends nothing), else the first address the host name
/// resolves to that is not a loopback address.
pub fn advertised_addr(listen: SocketAddr) -> std::io::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let port = listen.port();
    // Documentation addresses (RFC 5737, RFC 3849): only the route to them matters.
    let probe: SocketAddr = if listen.is_ipv4() {
        "192.0.2.1:9".parse().expect("literal")
    } else {
        "[2001:db8::1]:9".parse().expect("literal")
    };
    let bind: SocketAddr = if listen.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let routed = std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()));
    if let Ok(local) = routed
        && !local.ip().is_unspecified()
    {
        return Ok(SocketAddr::new(local.ip(), port));
    }
    let host = hostname()?;
    use std::net::ToSocketAddrs;
    (host.as_str(), port)
        .to_socket_addrs()?
        .find(|a| a.is_ipv4() == listen.is_ipv4() && !a.ip().is_loopback())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!(
                    "no route to other hosts and host name {host:?} has no non-loopback \
                     address: give the address to advertise explicitly"
                ),
            )
        })
}

fn hostname() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn_limited!("peer server: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        bump(&shared.counters.connections);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(why) = serve(stream, &shared).await {
                        tracing::debug!("peer connection from {peer} closed: {why}");
                    }
                });
            }
            Err(_) => {
                bump(&shared.counters.busy);
                warn_limited!(
                    "peer server: refusing a connection from {peer}: {} connections already",
                    shared.config.max_connections
                );
                // A fresh socket's send buffer takes this small frame without waiting.
                let busy = unauthenticated(0, ErrorCode::Busy, "too many connections");
                let _ = stream.try_write(&protocol::encode(&busy));
            }
        }
    }
}

/// An error frame to a client not (yet) authenticated: no MAC.
fn unauthenticated(request_id: u64, code: ErrorCode, message: &str) -> Frame {
    Frame::Error(ErrorReply {
        request_id,
        code,
        mac: [0u8; MAC_LEN],
        message: message.to_string(),
    })
}

/// Serves one connection until the client leaves, goes idle or breaks the protocol.
async fn serve(mut stream: TcpStream, shared: &Shared) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let config = &shared.config;
    let counters = &shared.counters;
    let mut nonce = [0u8; NONCE_LEN];
    crate::fill_random(&mut nonce).map_err(|e| e.to_string())?;
    let hello = Frame::Hello(Hello {
        version: VERSION,
        max_read: config.max_read_bytes,
        nonce,
    });
    send(
        &mut stream,
        &protocol::encode(&hello),
        None,
        config.io_timeout,
    )
    .await?;
    let mut last_request = 0u64;
    loop {
        let request = match receive_request(&mut stream, config).await {
            Ok(Some(q)) => q,
            Ok(None) => return Ok(()),
            Err(Received::Closed(why)) => return Err(why),
            Err(Received::Bad(why)) => {
                bump(&counters.bad_frames);
                warn_limited!(
                    "peer server: bad frame from {:?}: {why}",
                    stream.peer_addr()
                );
                let reply = unauthenticated(0, ErrorCode::BadFrame, &why);
                let _ = send(
                    &mut stream,
                    &protocol::encode(&reply),
                    None,
                    config.io_timeout,
                )
                .await;
                return Err(why);
            }
        };
        if !protocol::verify_read(&shared.key, &nonce, &request) {
            // Nothing but this refusal: not even whether the volume or the slice exists.
            bump(&counters.auth_failures);
            warn_limited!(
                "peer server: refused a request from {:?} without the volume's secret",
                stream.peer_addr()
            );
            let reply = unauthenticated(request.request_id, ErrorCode::AuthFailed, "bad MAC");
            let _ = send(
                &mut stream,
                &protocol::encode(&reply),
                None,
                config.io_timeout,
            )
            .await;
            return Err("bad MAC".into());
        }
        let id = request.request_id;
        let refusal = if request.version != VERSION {
            Some((
                ErrorCode::UnsupportedVersion,
                format!("version {VERSION} only"),
            ))
        } else if id <= last_request {
            Some((
                ErrorCode::Replay,
                format!("request id {id} after {last_request}"),
            ))
        } else if request.volume != shared.volume {
            Some((
                ErrorCode::WrongVolume,
                "not a mount of this volume".to_string(),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            bump(&counters.refused);
            warn_limited!("peer server: refused {code:?}: {message}");
            let reply = authenticated(shared, &nonce, id, code, &message);
            let _ = send(
                &mut stream,
                &protocol::encode(&reply),
                None,
                config.io_timeout,
            )
            .await;
            return Err(message);
        }
        last_request = id;
        if request.len > config.max_read_bytes {
            bump(&counters.refused);
            let message = format!(
                "read of {} bytes; at most {} per request",
                request.len, config.max_read_bytes
            );
            let reply = authenticated(shared, &nonce, id, ErrorCode::TooLarge, &message);
            send(
                &mut stream,
                &protocol::encode(&reply),
                None,
                config.io_timeout,
            )
            .await?;
            continue;
        }
        let (frame, data) = match read(shared, &request).await {
            Ok(data) => {
                let crc = crc32c::crc32c(&data);
                let mac = protocol::data_mac(&shared.key, &nonce, id, crc, data.len() as u32);
                bump(&counters.reads_served);
                counters
                    .bytes_served
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let reply = DataReply {
                    request_id: id,
                    crc,
                    mac,
                    data: data.clone(),
                };
                (Frame::Data(reply), data)
            }
            Err((code, message)) => (
                authenticated(shared, &nonce, id, code, &message),
                Bytes::new(),
            ),
        };
        let head = protocol::encode_head(&frame);
        send(&mut stream, &head, Some(&data), config.io_timeout).await?;
    }
}

/// An error frame answering an authenticated request, with its MAC.
fn authenticated(
    shared: &Shared,
    nonce: &[u8; NONCE_LEN],
    request_id: u64,
    code: ErrorCode,
    message: &str,
) -> Frame {
    let message = protocol::truncate_message(message);
    Frame::Error(ErrorReply {
        request_id,
        code,
        mac: protocol::error_mac(&shared.key, nonce, request_id, code, message),
        message: message.to_string(),
    })
}

/// Reads the slice's bytes on a blocking thread (at most `max_concurrent_reads` at once) and
/// asks for its upload to go first.
async fn read(shared: &Shared, q: &ReadRequest) -> Result<Bytes, (ErrorCode, String)> {
    let counters = &shared.counters;
    let Ok(_permit) = shared.reads.acquire().await else {
        return Err((ErrorCode::ReadFailed, "the server is stopping".into()));
    };
    let source = shared.source.clone();
    let (slice, offset, len) = (q.slice, q.offset, q.len);
    let result = tokio::task::spawn_blocking(move || {
        let read = source.read_staged(slice, offset, len);
        if let Ok(Some(_)) = read {
            source.prioritise(slice);
        }
        read.map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(Some(data))) if data.len() == len as usize => Ok(data),
        Ok(Ok(Some(data))) => {
            bump(&counters.read_failures);
            let message = format!(
                "the staging log gave {} bytes for a read of {len} at {offset}",
                data.len()
            );
            warn_limited!("peer server: slice {slice}: {message}");
            Err((ErrorCode::ReadFailed, message))
        }
        Ok(Ok(None)) => {
            bump(&counters.not_staged);
            Err((
                ErrorCode::NotStaged,
                format!("slice {slice} is not staged here"),
            ))
        }
        Ok(Err(message)) => {
            bump(&counters.read_failures);
            warn_limited!("peer server: reading staged slice {slice}: {message}");
            Err((ErrorCode::ReadFailed, message))
        }
        Err(e) => {
            bump(&counters.read_failures);
            warn_limited!("peer server: reading staged slice {slice}: {e}");
            Err((ErrorCode::ReadFailed, "the read failed".into()))
        }
    }
}

enum Received {
    /// The connection ended or stalled: nothing to answer.
    Closed(String),
    /// The bytes are not a request: answered `BadFrame`.
    Bad(String),
}

/// The next request; `None` when the client closed the connection between requests.
async fn receive_request(
    stream: &mut TcpStream,
    config: &PeerServerConfig,
) -> Result<Option<ReadRequest>, Received> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    // The first byte may be long in coming (an idle pooled connection); the rest may not.
    match tokio::time::timeout(config.idle_timeout, stream.read(&mut header[..1])).await {
        Err(_) => return Err(Received::Closed("idle".into())),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Received::Closed(e.to_string())),
    }
    receive_exact(stream, &mut header[1..], config.io_timeout).await?;
    let (kind, body_len) = protocol::parse_header(&header, MAX_REQUEST_FRAME)
        .map_err(|e| Received::Bad(e.to_string()))?;
    let mut body = vec![0u8; body_len];
    receive_exact(stream, &mut body, config.io_timeout).await?;
    match protocol::decode_body(kind, Bytes::from(body)) {
        Ok(Frame::Read(q)) => Ok(Some(q)),
        Ok(_) => Err(Received::Bad(format!("frame kind {kind} is not a request"))),
        Err(e) => Err(Received::Bad(e.to_string())),
    }
}

async fn receive_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), Received> {
    match tokio::time::timeout(limit, stream.read_exact(buf)).await {
        Err(_) => Err(Received::Closed(format!(
            "frame not received within {limit:?}"
        ))),
        Ok(Err(e)) => Err(Received::Closed(format!("truncated frame: {e}"))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Writes `head` then `data` within `limit`.
async fn send(
    stream: &mut TcpStream,
    head: &[u8],
    data: Option<&Bytes>,
    limit: Duration,
) -> Result<(), String> {
    let write = async {
        stream.write_all(head).await?;
        if let Some(data) = data {
            stream.write_all(data).await?;
        }
        stream.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Err(_) => Err(format!("reply not taken within {limit:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(())) => Ok(()),
    }
}
