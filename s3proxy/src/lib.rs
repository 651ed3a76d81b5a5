//! An S3 fault-and-delay proxy for tests and benchmarks.
//!
//! [`Proxy`] listens on a loopback port and relays HTTP/1.1 to an upstream S3 server (for
//! example `s3s-fs`). Requests are passed through byte for byte (request line, headers
//! including `Host`, body), so SigV4 signatures stay valid. On the way it
//!
//! * adds a fixed delay to every request ([`ProxyConfig::delay`], [`Proxy::set_delay`]), like
//!   the round trip to a real region;
//! * counts requests by method ([`Proxy::counts`]);
//! * injects faults chosen by [`Fault`] rules, settable at run time ([`Proxy::add_fault`],
//!   [`Proxy::clear_faults`]): answer `503 SlowDown` or `500 InternalError` (an S3 XML error
//!   body, after reading the request body), reset the connection without a reply (after
//!   reading the request), or stall a request (for a while, or until the faults are cleared)
//!   before forwarding it.
//!
//! One thread per client connection; each client connection gets its own upstream
//! connection, reused for as long as both sides keep their connections alive. Request bodies
//! (`Content-Length` or chunked) are read completely before anything is forwarded, so a fault
//! never leaves a half-sent request upstream; responses are streamed.
//!
//! ```no_run
//! use spoolfs_s3proxy::{Fault, Method, Proxy, ProxyConfig};
//! use std::time::Duration;
//! let proxy = Proxy::start(ProxyConfig {
//!     delay: Duration::from_millis(20),
//!     ..ProxyConfig::new("127.0.0.1:9000".parse().unwrap())
//! })
//! .unwrap();
//! proxy.add_fault(Fault::slow_down().only(Method::Put).times(3));
//! println!("{} {}", proxy.endpoint(), proxy.counts());
//! ```

mod fault;
mod http;

pub use fault::{Counts, Fault, FaultAction, Method};

use http::{Framing, Head};
use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How to start a [`Proxy`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where to listen (port 0: any free port; see [`Proxy::addr`]).
    pub listen: SocketAddr,
    /// The S3 server requests are relayed to.
    pub upstream: SocketAddr,
    /// Added to every request before it is answered or forwarded.
    pub delay: Duration,
    /// Seed of the generator that picks requests for fractional faults.
    pub seed: u64,
    /// Faults active from the start.
    pub faults: Vec<Fault>,
    /// How long an idle client connection is kept.
    pub idle_timeout: Duration,
    /// How long to wait for the upstream's response (then the client gets a 504).
    pub upstream_timeout: Duration,
}

impl ProxyConfig {
    /// Listen on a free loopback port, no delay, no faults.
    pub fn new(upstream: SocketAddr) -> ProxyConfig {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            delay: Duration::ZERO,
            seed: 0x5eed_5eed,
            faults: Vec::new(),
            idle_timeout: Duration::from_secs(600),
            upstream_timeout: Duration::from_secs(300),
        }
    }
}

/// Fault rules and what they did; behind one mutex with a condition variable for stalls.
struct FaultState {
    rules: Vec<Fault>,
    /// Bumped by every clear: stalls waiting "until cleared" end when it changes.
    generation: u64,
    rng: u64,
    stalled: u64,
}

impl FaultState {
    fn next_f64(&mut self) -> f64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&mut self, m: Method) -> Option<FaultAction> {
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if rule.method.is_some_and(|rm| rm != m) || rule.count == Some(0) {
                continue;
            }
            let p = rule.fraction;
            if p < 1.0 && self.next_f64() >= p {
                continue;
            }
            let rule = &mut self.rules[i];
            let action = rule.action;
            if let Some(n) = rule.count.as_mut() {
                *n -= 1;
                if *n == 0 {
                    self.rules.remove(i);
                }
            }
            return Some(action);
        }
        None
    }
}

struct Shared {
    config: ProxyConfig,
    delay_us: AtomicU64,
    received: [AtomicU64; 6],
    injected: [AtomicU64; 6],
    forwarded: AtomicU64,
    faults: Mutex<FaultState>,
    cv: Condvar,
    stop: AtomicBool,
    /// Open client connections (to shut them down on stop).
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    request_ids: AtomicU64,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, FaultState> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Holds the caller for `d` (or until the faults are cleared, or the proxy stops).
    fn stall(&self, d: Option<Duration>) {
        let deadline = d.map(|d| Instant::now() + d);
        let mut st = self.faults();
        let generation = st.generation;
        st.stalled += 1;
        loop {
            if self.stopping() || st.generation != generation {
                break;
            }
            let wait = match deadline {
                Some(dl) => {
                    let now = Instant::now();
                    if now >= dl {
                        break;
                    }
                    dl - now
                }
                None => Duration::from_millis(500),
            };
            st = self
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.stalled -= 1;
    }
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the listening socket and starts accepting connections.
    pub fn start(config: ProxyConfig) -> io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            delay_us: AtomicU64::new(config.delay.as_micros() as u64),
            received: Default::default(),
            injected: Default::default(),
            forwarded: AtomicU64::new(0),
            faults: Mutex::new(FaultState {
                rules: config.faults.clone(),
                generation: 0,
                rng: config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                stalled: 0,
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            request_ids: AtomicU64::new(0),
            config,
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("s3proxy-accept".into())
            .spawn(move || accept_loop(s, listener))?;
        Ok(Proxy {
            shared,
            addr,
            accept: Some(accept),
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the S3 endpoint clients should use.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.shared.config.upstream
    }

    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.shared.delay_us.load(Ordering::Relaxed))
    }

    /// Changes the delay added to every request from now on.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds a fault rule (after the existing ones).
    pub fn add_fault(&self, f: Fault) {
        self.shared.faults().rules.push(f);
    }

    /// Replaces all fault rules by `f` (stalled requests stay stalled).
    pub fn set_fault(&self, f: Fault) {
        self.shared.faults().rules = vec![f];
    }

    /// Removes every fault rule and releases every stalled request.
    pub fn clear_faults(&self) {
        let mut st = self.shared.faults();
        st.rules.clear();
        st.generation += 1;
        drop(st);
        self.shared.cv.notify_all();
    }

    /// The fault rules still active (counted rules disappear once used up).
    pub fn faults(&self) -> Vec<Fault> {
        self.shared.faults().rules.clone()
    }

    /// Requests being held by a stall right now.
    pub fn stalled(&self) -> u64 {
        self.shared.faults().stalled
    }

    /// Requests received, by method (faulted ones included).
    pub fn counts(&self) -> Counts {
        Counts::from_array(load_all(&self.shared.received))
    }

    /// Requests answered with a fault (an error, a reset, or a stall), by method.
    pub fn injected(&self) -> Counts {
        Counts::from_array(load_all(&self.shared.injected))
    }

    /// Requests whose response came from upstream.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Sets every counter back to zero.
    pub fn reset_counts(&self) {
        for c in self
            .shared
            .received
            .iter()
            .chain(self.shared.injected.iter())
        {
            c.store(0, Ordering::Relaxed);
        }
        self.shared.forwarded.store(0, Ordering::Relaxed);
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.shared.conns().len()
    }

    /// Stops accepting, releases stalls and closes every client connection.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.cv.notify_all();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, c) in self.shared.conns().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn load_all(a: &[AtomicU64; 6]) -> [u64; 6] {
    std::array::from_fn(|i| a[i].load(Ordering::Relaxed))
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if shared.stopping() {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = stream.try_clone() {
            shared.conns().insert(id, c);
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("s3proxy-conn-{id}"))
            .spawn(move || {
                let _ = serve_connection(&s, stream);
                s.conns().remove(&id);
            });
        if spawned.is_err() {
            shared.conns().remove(&id);
        }
    }
}

/// The upstream side of one client connection.
struct Upstream {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Requests already sent on this connection.
    used: u64,
}

impl Upstream {
    fn connect(shared: &Shared) -> io::Result<Upstream> {
        let s = TcpStream::connect_timeout(&shared.config.upstream, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(shared.config.upstream_timeout))?;
        Ok(Upstream {
            reader: BufReader::with_capacity(64 * 1024, s.try_clone()?),
            writer: s,
            used: 0,
        })
    }
}

/// Asks the kernel to acknowledge what arrives next on `s` at once (TCP_QUICKACK; Linux leaves
/// quick-ack mode by itself, so this is set again before each response is read).
///
/// Upstream S3 test servers (s3s-fs, on hyper) do not set TCP_NODELAY and write a response's
/// head and body separately: on a reused connection Nagle's algorithm holds the body until the
/// head is acknowledged, and a delayed ACK takes 40 ms, which would add about 40 ms to most
/// requests on top of the configured delay.
fn quickack(s: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        set_socket_option(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_QUICKACK, &one);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = s;
}

fn serve_connection(shared: &Shared, client: TcpStream) -> io::Result<()> {
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(shared.config.idle_timeout))?;
    let mut reader = BufReader::with_capacity(64 * 1024, client.try_clone()?);
    let mut writer = client;
    let mut upstream: Option<Upstream> = None;
    loop {
        if shared.stopping() {
            return Ok(());
        }
        let head = match http::read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = send_plain(&mut writer, 400, "Bad Request", &e.to_string());
                }
                return Err(e);
            }
        };
        let method = Method::from_request(&head.first[0]);
        shared.received[method.index()].fetch_add(1, Ordering::Relaxed);
        let framing = match head.request_framing() {
            Ok(f) => f,
            Err(e) => {
                let _ = send_plain(&mut writer, 400, "Bad Request", &e.to_string());
                return Err(e);
            }
        };
        if framing != Framing::None && head.has_token("expect", "100-continue") {
            // We read the body before deciding anything; the upstream's own 100 is skipped.
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = http::read_body(&mut reader, framing)?;
        let client_keep_alive = head.keep_alive(2);

        let delay = Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let action = shared.faults().pick(method);
        if action.is_some() {
            shared.injected[method.index()].fetch_add(1, Ordering::Relaxed);
        }
        match action {
            Some(fault @ (FaultAction::SlowDown | FaultAction::InternalError)) => {
                let (status, reason, code, message) = if fault == FaultAction::SlowDown {
                    (
                        503,
                        "Slow Down",
                        "SlowDown",
                        "Please reduce your request rate.",
                    )
                } else {
                    (
                        500,
                        "Internal Server Error",
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    )
                };
                send_s3_error(
                    shared,
                    &mut writer,
                    &head,
                    status,
                    reason,
                    code,
                    message,
                    client_keep_alive,
                )?;
                if !client_keep_alive {
                    return Ok(());
                }
                continue;
            }
            Some(FaultAction::Reset) => {
                reset(&writer);
                return Ok(());
            }
            Some(FaultAction::Stall(d)) => {
                shared.stall(d);
                if shared.stopping() {
                    return Ok(());
                }
            }
            None => {}
        }
        let keep = forward(shared, &mut upstream, &mut writer, &head, &body)?;
        if !(keep && client_keep_alive) {
            let _ = writer.flush();
            let _ = writer.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Sends the request upstream and relays the response. Returns whether the client
/// connection may stay open.
fn forward(
    shared: &Shared,
    upstream: &mut Option<Upstream>,
    client: &mut TcpStream,
    head: &Head,
    body: &[u8],
) -> io::Result<bool> {
    // A reused upstream connection may have been closed by the server while idle: then
    // (and only if not a byte of the response arrived) retry once on a fresh connection.
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let up = match upstream {
            Some(u) => u,
            None => match Upstream::connect(shared) {
                Ok(u) => upstream.insert(u),
                Err(e) => {
                    send_plain(client, 502, "Bad Gateway", &format!("upstream: {e}"))?;
                    return Ok(false);
                }
            },
        };
        let reused = up.used > 0;
        up.used += 1;
        let sent = up
            .writer
            .write_all(&head.raw)
            .and_then(|_| up.writer.write_all(body))
            .and_then(|_| up.writer.flush());
        quickack(&up.writer);
        let resp = sent.and_then(|_| read_final_head(&mut up.reader));
        match resp {
            Ok(Some(h)) => break h,
            Ok(None) | Err(_) if reused && attempt == 1 => {
                *upstream = None;
                continue;
            }
            Ok(None) => {
                *upstream = None;
                send_plain(client, 502, "Bad Gateway", "upstream closed the connection")?;
                return Ok(false);
            }
            Err(e) => {
                *upstream = None;
                let (code, reason) = if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    (504, "Gateway Timeout")
                } else {
                    (502, "Bad Gateway")
                };
                send_plain(client, code, reason, &format!("upstream: {e}"))?;
                return Ok(false);
            }
        }
    };
    // Counted before the client can see the response.
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    let up = upstream.as_mut().expect("connected");
    let framing = resp.response_framing(&head.first[0])?;
    let upstream_keep = resp.keep_alive(0) && framing != Framing::UntilClose;
    let mut out = BufWriter::with_capacity(64 * 1024, &mut *client);
    out.write_all(&resp.raw)?;
    quickack(&up.writer);
    let copied = http::copy_body(&mut up.reader, &mut out, framing, u64::MAX);
    out.flush()?;
    drop(out);
    if let Err(e) = copied {
        // The client got a truncated response: it must not reuse the connection.
        *upstream = None;
        return Err(e);
    }
    if !upstream_keep {
        *upstream = None;
    }
    // A response delimited by the end of the connection needs the client connection closed.
    Ok(framing != Framing::UntilClose && resp.keep_alive(0))
}

/// Reads response heads, skipping interim (1xx) responses.
fn read_final_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    loop {
        match http::read_head(r)? {
            None => return Ok(None),
            Some(h) if (100..200).contains(&h.status()) && h.status() != 101 => continue,
            Some(h) => return Ok(Some(h)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn send_s3_error(
    shared: &Shared,
    w: &mut TcpStream,
    req: &Head,
    status: u16,
    reason: &str,
    code: &str,
    message: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let id = shared.request_ids.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("S3PROXY{id:016X}");
    let resource = xml_escape(req.first[1].split('?').next().unwrap_or(""));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>{request_id}</RequestId></Error>"
    );
    // A HEAD response carries no body (but says how long it would have been).
    let send_body = req.first[0] != "HEAD";
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: {request_id}\r\nServer: spoolfs-s3proxy\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let mut out = head.into_bytes();
    if send_body {
        out.extend_from_slice(body.as_bytes());
    }
    w.write_all(&out)?;
    w.flush()
}

fn send_plain(w: &mut TcpStream, status: u16, reason: &str, text: &str) -> io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    w.write_all(msg.as_bytes())?;
    w.flush()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Makes the close of `s` a TCP reset (SO_LINGER 0) instead of an orderly shutdown.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &linger);
    // The RST goes out when the last descriptor of the socket is closed: the caller returns,
    // dropping its reader and writer, and the connection's registry entry goes right after.
}

/// setsockopt of one option whose value is a `T` (a `c_int`, a `linger`); failures are
/// ignored, as every option set here only tunes the connection.
fn set_socket_option<T>(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: `value` points to a live `T` of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests;
