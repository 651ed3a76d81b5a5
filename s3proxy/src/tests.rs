//! The proxy against a tiny in-process upstream that answers every request with
//! `METHOD TARGET BODYLEN` and counts its connections.

use super::*;
use std::io::{BufRead, Read};

struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                while let Ok(Some(h)) = http::read_head(&mut reader) {
                    let framing = h.request_framing().unwrap();
                    let body = http::read_body(&mut reader, framing).unwrap();
                    let mut whole = h.raw.clone();
                    whole.extend_from_slice(&body);
                    r.lock().unwrap().push(whole);
                    let text = format!("{} {} {}", h.first[0], h.first[1], body.len());
                    let resp = if h.first[1] == "/chunked" {
                        format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{text}\r\n0\r\n\r\n",
                            text.len()
                        )
                    } else if h.first[0] == "HEAD" {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len())
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        )
                    };
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        connections,
        requests,
    }
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(p: &Proxy) -> Client {
        let s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.writer.write_all(raw).unwrap();
    }

    /// (status, body) of the next response.
    fn response(&mut self, method: &str) -> io::Result<(u16, String)> {
        let h = http::read_head(&mut self.reader)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))?;
        let mut body = Vec::new();
        http::copy_body(
            &mut self.reader,
            &mut body,
            h.response_framing(method)?,
            1 << 20,
        )?;
        Ok((h.status(), String::from_utf8(body).unwrap()))
    }

    fn put(&mut self, path: &str, body: &str) -> io::Result<(u16, String)> {
        let req = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(req.as_bytes());
        self.response("PUT")
    }
}

fn proxy(up: &Upstream) -> Proxy {
    Proxy::start(ProxyConfig::new(up.addr)).unwrap()
}

#[test]
fn relays_keep_alive_requests_unchanged_and_counts_them() {
    let up = upstream();
    let p = proxy(&up);
    let mut c = Client::connect(&p);
    assert_eq!(
        c.put("/b/k1", "hello").unwrap(),
        (200, "PUT /b/k1 5".into())
    );
    c.send(b"GET /b/k1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response("GET").unwrap(), (200, "GET /b/k1 0".into()));
    c.send(b"HEAD /b/k1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response("HEAD").unwrap(), (200, String::new()));
    c.send(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        c.response("GET").unwrap(),
        (200, "e\r\nGET /chunked 0\r\n0\r\n\r\n".into()),
        "chunked responses are relayed raw"
    );
    let chunked = b"POST /b?delete HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    c.send(chunked);
    assert_eq!(
        c.response("POST").unwrap(),
        (200, "POST /b?delete 20".into()),
        "chunked bodies are relayed raw"
    );
    c.send(b"DELETE /b/k1 HTTP/1.1\r\nHost: x\r\n\r\n");
    c.response("DELETE").unwrap();
    c.send(b"OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.response("OPTIONS").unwrap();
    assert_eq!(
        p.counts(),
        Counts::from_array([1, 2, 1, 1, 1, 1]),
        "{}",
        p.counts()
    );
    assert_eq!(p.forwarded(), 7);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "upstream reused");
    let reqs = up.requests.lock().unwrap();
    assert_eq!(
        reqs[0],
        b"PUT /b/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert_eq!(&reqs[4][..], &chunked[..]);
    drop(reqs);
    p.reset_counts();
    assert_eq!(p.counts().total(), 0);
}

#[test]
fn error_faults_answer_with_s3_errors_and_keep_the_connection() {
    let up = upstream();
    let p = proxy(&up);
    p.add_fault(Fault::slow_down().only(Method::Put).times(2));
    p.add_fault(Fault::internal_error().only(Method::Get).times(1));
    let mut c = Client::connect(&p);
    let (status, body) = c.put("/b/k", "data").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    assert!(body.contains("<Resource>/b/k</Resource>"), "{body}");
    assert_eq!(c.put("/b/k", "data").unwrap().0, 503);
    assert_eq!(c.put("/b/k", "data").unwrap().0, 200, "count used up");
    c.send(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n");
    let (status, body) = c.response("GET").unwrap();
    assert_eq!(status, 500);
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");
    c.send(b"HEAD /b/k HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.response("HEAD").unwrap().0, 200);
    assert!(p.faults().is_empty());
    assert_eq!(p.injected(), Counts::from_array([2, 1, 0, 0, 0, 0]));
    assert_eq!(
        up.requests.lock().unwrap().len(),
        2,
        "faulted requests stay here"
    );
}

#[test]
fn expect_continue_gets_one_interim_response() {
    let up = upstream();
    let p = proxy(&up);
    let mut c = Client::connect(&p);
    c.send(b"PUT /b/e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    c.reader.read_line(&mut line).unwrap();
    c.send(b"abc");
    assert_eq!(c.response("PUT").unwrap(), (200, "PUT /b/e 3".into()));
}

#[test]
fn reset_closes_without_a_reply() {
    let up = upstream();
    let p = proxy(&up);
    p.add_fault(Fault::reset().times(1));
    let mut c = Client::connect(&p);
    let r = c.put("/b/k", "x");
    assert!(r.is_err(), "expected a reset, got {r:?}");
    let mut c = Client::connect(&p);
    assert_eq!(c.put("/b/k", "x").unwrap().0, 200);
    assert_eq!(up.requests.lock().unwrap().len(), 1);
}

#[test]
fn stalls_hold_requests_until_cleared_or_timed_out() {
    let up = upstream();
    let p = proxy(&up);
    p.add_fault(Fault::stall(Some(Duration::from_millis(300))).times(1));
    let mut c = Client::connect(&p);
    let t = Instant::now();
    assert_eq!(c.put("/b/k", "x").unwrap().0, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    p.add_fault(Fault::stall(None));
    let t = Instant::now();
    let addr = p.addr();
    let h = std::thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        let mut c = Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        };
        c.put("/b/k2", "yy").unwrap()
    });
    while p.stalled() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!h.is_finished());
    assert_eq!(
        up.requests.lock().unwrap().len(),
        1,
        "stalled request not forwarded yet"
    );
    p.clear_faults();
    assert_eq!(h.join().unwrap(), (200, "PUT /b/k2 2".into()));
    assert_eq!(p.stalled(), 0);
}

#[test]
fn fractions_and_delay() {
    let up = upstream();
    let p = proxy(&up);
    p.set_delay(Duration::from_millis(20));
    p.add_fault(Fault::slow_down().fraction(0.5));
    let mut c = Client::connect(&p);
    let t = Instant::now();
    let mut errors = 0;
    for _ in 0..40 {
        if c.put("/b/k", "x").unwrap().0 == 503 {
            errors += 1;
        }
    }
    assert!(t.elapsed() >= Duration::from_millis(800));
    assert!((8..=32).contains(&errors), "{errors} of 40 picked at 0.5");
    assert_eq!(p.injected().put, errors);
}

#[test]
fn upstream_down_is_a_502_and_stop_closes_clients() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = Proxy::start(ProxyConfig::new(port)).unwrap();
    let mut c = Client::connect(&p);
    assert_eq!(c.put("/b/k", "x").unwrap().0, 502);
    let mut c = Client::connect(&p);
    std::thread::sleep(Duration::from_millis(50));
    p.stop();
    let mut buf = [0u8; 1];
    assert!(matches!(c.reader.read(&mut buf), Ok(0) | Err(_)));
}
