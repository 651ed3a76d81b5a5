//! `spoolfs-s3proxy`: the S3 fault-and-delay proxy as a command.
//!
//! ```text
//! spoolfs-s3proxy --upstream 127.0.0.1:9000 --listen 127.0.0.1:9100 --delay-ms 20 \
//!                 --control 127.0.0.1:9101 [--fault 503,method=PUT,count=5]...
//! ```
//!
//! Prints `listening http://ADDR` (and `control http://ADDR`) on stdout once ready, the
//! counters every `--stats-every` seconds, and the final counters on SIGINT or SIGTERM.
//!
//! The control endpoint (plain HTTP, one request per connection) takes:
//!
//! | request | effect |
//! |---|---|
//! | `GET /counts` | JSON: requests received and faults injected by method, forwarded, stalled, delay, faults |
//! | `GET /count/PUT` | the number of PUT requests received (any method name), as plain text |
//! | `POST /fault` with body `SPEC` (or `GET /fault?SPEC`) | adds a fault rule, e.g. `503,method=PUT,count=5`, `reset,fraction=0.2`, `stall=10`, `stall` |
//! | `POST /clear` | removes every fault rule and releases stalled requests |
//! | `POST /reset` | sets the counters to zero |
//! | `POST /delay?ms=N` | sets the delay added to every request |

use clap::Parser;
use spoolfs_s3proxy::{Fault, Method, Proxy, ProxyConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "spoolfs-s3proxy",
    version,
    about = "HTTP/1.1 proxy in front of an S3 server: adds a delay to every request, counts \
             requests by method, injects 503/500 errors, connection resets and stalls"
)]
struct Args {
    /// The S3 server to relay to (HOST:PORT or http://HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    upstream: String,
    /// Where to listen (port 0: a free port, printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Milliseconds added to every request.
    #[arg(long, value_name = "MS", default_value_t = 0.0)]
    delay_ms: f64,
    /// A fault rule active from the start (repeatable): ACTION[,method=M][,fraction=F][,count=N]
    /// with ACTION 503, 500, reset, stall (until cleared) or stall=SECS.
    #[arg(long, value_name = "SPEC")]
    fault: Vec<Fault>,
    /// Address of the control endpoint (counters, faults at run time); none by default.
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Seed for picking requests of fractional faults.
    #[arg(long, default_value_t = 0x5eed_5eed)]
    seed: u64,
    /// Print the counters every SECS seconds (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    stats_every: f64,
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim_start_matches("http://").trim_end_matches('/');
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve upstream {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("upstream {s:?} has no address"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let upstream = match resolve(&args.upstream) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("spoolfs-s3proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if !(args.delay_ms.is_finite() && args.delay_ms >= 0.0) {
        eprintln!("spoolfs-s3proxy: invalid --delay-ms {}", args.delay_ms);
        return ExitCode::from(2);
    }
    // SIGINT and SIGTERM are taken with sigwait by the main thread: block them before any
    // other thread exists, so every thread inherits the mask.
    let signals = block_signals();
    let config = ProxyConfig {
        listen: args.listen,
        delay: Duration::from_secs_f64(args.delay_ms / 1000.0),
        seed: args.seed,
        faults: args.fault.clone(),
        ..ProxyConfig::new(upstream)
    };
    let proxy = match Proxy::start(config) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("spoolfs-s3proxy: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("listening {}", proxy.endpoint());
    if let Some(addr) = args.control {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("spoolfs-s3proxy: cannot listen on control address {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("control http://{}", listener.local_addr().unwrap_or(addr));
        let p = proxy.clone();
        std::thread::spawn(move || control_loop(p, listener));
    }
    eprintln!(
        "spoolfs-s3proxy: {} -> {upstream}, delay {} ms, faults [{}]",
        proxy.endpoint(),
        args.delay_ms,
        list_faults(&proxy)
    );
    let _ = std::io::stdout().flush();
    if args.stats_every > 0.0 && args.stats_every.is_finite() {
        let p = proxy.clone();
        let every = Duration::from_secs_f64(args.stats_every);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(every);
                println!("counts {}", p.counts());
                let _ = std::io::stdout().flush();
            }
        });
    }
    let sig = wait_for_signal(&signals);
    println!("counts {}", proxy.counts());
    println!("injected {}", proxy.injected());
    eprintln!("spoolfs-s3proxy: signal {sig}, exiting");
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a zeroed, then initialised, local set; pthread_sigmask with
    // valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: set was initialised by block_signals; sig is a valid out-pointer.
    while unsafe { libc::sigwait(set, &mut sig) } != 0 {}
    sig
}

fn list_faults(p: &Proxy) -> String {
    p.faults()
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn control_loop(proxy: Arc<Proxy>, listener: TcpListener) {
    for s in listener.incoming().flatten() {
        let p = proxy.clone();
        std::thread::spawn(move || {
            let _ = control_request(&p, s);
        });
    }
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn control_request(proxy: &Proxy, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0).min(64 * 1024);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).trim().to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), percent_decode(q)),
        None => (target.clone(), String::new()),
    };
    let arg = if body.is_empty() { query } else { body };
    let (status, text) = match path.as_str() {
        "/counts" => (
            200,
            format!(
                "{{\"received\":{},\"injected\":{},\"forwarded\":{},\"stalled\":{},\
                 \"delay_ms\":{},\"faults\":[{}]}}\n",
                proxy.counts().to_json(),
                proxy.injected().to_json(),
                proxy.forwarded(),
                proxy.stalled(),
                proxy.delay().as_secs_f64() * 1000.0,
                proxy
                    .faults()
                    .iter()
                    .map(|f| json_str(&f.to_string()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        p if p.starts_with("/count/") => match p["/count/".len()..].parse::<Method>() {
            Ok(m) => (200, format!("{}\n", proxy.counts().of(m))),
            Err(e) => (400, format!("{e}\n")),
        },
        "/fault" => match arg.parse::<Fault>() {
            Ok(f) => {
                proxy.add_fault(f.clone());
                (200, format!("added {f}\n"))
            }
            Err(e) => (400, format!("{e}\n")),
        },
        "/clear" => {
            proxy.clear_faults();
            (200, "cleared\n".to_string())
        }
        "/reset" => {
            proxy.reset_counts();
            (200, "reset\n".to_string())
        }
        "/delay" => {
            let ms = arg.trim_start_matches("ms=").parse::<f64>();
            match ms {
                Ok(ms) if ms.is_finite() && ms >= 0.0 => {
                    proxy.set_delay(Duration::from_secs_f64(ms / 1000.0));
                    (200, format!("delay {ms} ms\n"))
                }
                _ => (400, format!("invalid delay {arg:?}: expected ms=N\n")),
            }
        }
        _ => (
            404,
            "unknown path: /counts, /count/METHOD, /fault, /clear, /reset, /delay\n".to_string(),
        ),
    };
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        if status == 200 { "OK" } else { "Error" },
        text.len()
    )?;
    w.flush()
}
