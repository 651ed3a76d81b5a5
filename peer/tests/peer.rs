//! A server and clients on the loopback interface: reads, refusals, timeouts, bad bytes.

use bytes::Bytes;
use parking_lot::Mutex;
use spoolfs_peer::protocol::{self, ErrorCode, Frame, ReadRequest};
use spoolfs_peer::{
    PeerClient, PeerClientConfig, PeerError, PeerServer, PeerServerConfig, SourceError,
    StagedSlices,
};
use spoolfs_testkit::{Rng, assert_bytes_eq, random_bytes};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const VOLUME: [u8; 16] = *b"volume-012345678";
const SECRET: &[u8] = b"a secret of thirty-two bytes....";

/// Staged slices kept in memory.
#[derive(Default)]
struct MemSlices {
    slices: HashMap<u64, Bytes>,
    reads: AtomicU64,
    prioritised: Mutex<Vec<u64>>,
    /// Each read sleeps this long first.
    delay: Duration,
    /// Reads of this slice fail.
    broken: Option<u64>,
}

impl MemSlices {
    fn with(slices: &[(u64, Vec<u8>)]) -> MemSlices {
        MemSlices {
            slices: slices
                .iter()
                .map(|(id, data)| (*id, Bytes::from(data.clone())))
                .collect(),
            ..MemSlices::default()
        }
    }
}

impl StagedSlices for MemSlices {
    fn read_staged(
        &self,
        slice_id: u64,
        offset: u32,
        len: u32,
    ) -> Result<Option<Bytes>, SourceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.broken == Some(slice_id) {
            return Err("staging log record failed its CRC".into());
        }
        let Some(data) = self.slices.get(&slice_id) else {
            return Ok(None);
        };
        let end = offset as usize + len as usize;
        if end > data.len() {
            return Err(format!("read to {end} beyond a slice of {}", data.len()).into());
        }
        Ok(Some(data.slice(offset as usize..end)))
    }

    fn prioritise(&self, slice_id: u64) {
        self.prioritised.lock().push(slice_id);
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn serve(source: Arc<MemSlices>, config: PeerServerConfig) -> PeerServer {
    PeerServer::start(loopback(), VOLUME, SECRET, source, config).expect("server starts")
}

fn client(config: PeerClientConfig) -> PeerClient {
    PeerClient::new(VOLUME, SECRET, config).expect("client")
}

fn quick() -> PeerClientConfig {
    PeerClientConfig {
        timeout: Duration::from_millis(500),
        ..PeerClientConfig::default()
    }
}

#[test]
fn small_and_large_slices_read_back_byte_exact() {
    let small = random_bytes(1, 100);
    let large = random_bytes(2, 8 << 20);
    let source = Arc::new(MemSlices::with(&[(7, small.clone()), (8, large.clone())]));
    let server = serve(source.clone(), PeerServerConfig::default());
    let c = client(PeerClientConfig::default());
    let addr = server.local_addr();

    let got = c.read(addr, 7, 0, 100).unwrap();
    assert_bytes_eq(&got, &small, "small slice");
    let got = c.read(addr, 7, 10, 20).unwrap();
    assert_bytes_eq(&got, &small[10..30], "part of the small slice");
    // 8 MiB: two requests of the client's 4 MiB on one connection.
    let got = c.read(addr, 8, 0, 8 << 20).unwrap();
    assert_bytes_eq(&got, &large, "8 MiB slice");
    // 6 MiB from an odd offset: again two requests.
    let got = c.read(addr, 8, (1 << 20) + 3, 6 << 20).unwrap();
    assert_bytes_eq(
        &got,
        &large[(1 << 20) + 3..(7 << 20) + 3],
        "range across pieces",
    );
    assert!(c.read(addr, 7, 5, 0).unwrap().is_empty(), "empty read");

    assert_eq!(
        c.stats().connects,
        1,
        "one pooled connection serves every read"
    );
    assert_eq!(c.stats().reads, 5);
    let prioritised = source.prioritised.lock().clone();
    assert!(
        prioritised.contains(&7) && prioritised.contains(&8),
        "{prioritised:?}"
    );
    let stats = server.stats();
    assert_eq!(stats.reads_served, 7, "{stats:?}");
    assert_eq!(stats.bytes_served, 100 + 20 + (8 << 20) + (6 << 20));
}

#[test]
fn a_read_is_split_to_what_the_server_allows() {
    let data = random_bytes(3, 3 << 20);
    let source = Arc::new(MemSlices::with(&[(1, data.clone())]));
    let config = PeerServerConfig {
        max_read_bytes: 1 << 20,
        ..PeerServerConfig::default()
    };
    let server = serve(source.clone(), config);
    let got = client(PeerClientConfig::default())
        .read(server.local_addr(), 1, 0, 3 << 20)
        .unwrap();
    assert_bytes_eq(&got, &data, "3 MiB in 1 MiB requests");
    assert_eq!(source.reads.load(Ordering::SeqCst), 3);
    assert_eq!(server.stats().refused, 0);
}

#[test]
fn a_client_without_the_secret_is_refused_and_reads_nothing() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(4, 1000))]));
    let server = serve(source.clone(), PeerServerConfig::default());
    let stranger = PeerClient::new(VOLUME, b"another secret, also 32 bytes...", quick()).unwrap();
    match stranger.read(server.local_addr(), 1, 0, 1000) {
        Err(PeerError::Refused {
            code: ErrorCode::AuthFailed,
            ..
        }) => {}
        other => panic!("expected an authentication refusal, got {other:?}"),
    }
    assert_eq!(
        source.reads.load(Ordering::SeqCst),
        0,
        "the source was never asked"
    );
    assert!(source.prioritised.lock().is_empty());
    assert_eq!(server.stats().auth_failures, 1);
}

#[test]
fn a_mount_of_another_volume_is_refused() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(5, 1000))]));
    let server = serve(source.clone(), PeerServerConfig::default());
    let other = PeerClient::new(*b"another volume!!", SECRET, quick()).unwrap();
    match other.read(server.local_addr(), 1, 0, 1000) {
        Err(
            e @ PeerError::Refused {
                code: ErrorCode::WrongVolume,
                ..
            },
        ) => assert_eq!(e.errno(), libc::EACCES),
        other => panic!("expected a wrong-volume refusal, got {other:?}"),
    }
    assert_eq!(source.reads.load(Ordering::SeqCst), 0);
}

#[test]
fn secrets_shorter_than_128_bits_are_rejected() {
    let source = Arc::new(MemSlices::default());
    let err = PeerServer::start(
        loopback(),
        VOLUME,
        b"short",
        source,
        PeerServerConfig::default(),
    )
    .err()
    .expect("a 5-byte secret is refused");
    assert!(err.to_string().contains("5 bytes"), "{err}");
    assert!(PeerClient::new(VOLUME, b"short", quick()).is_err());
}

#[test]
fn an_unknown_slice_is_not_staged_and_the_connection_stays_usable() {
    let data = random_bytes(6, 5000);
    let source = Arc::new(MemSlices::with(&[(1, data.clone())]));
    let server = serve(source, PeerServerConfig::default());
    let c = client(quick());
    let addr = server.local_addr();
    match c.read(addr, 99, 0, 10) {
        Err(PeerError::NotStaged { slice: 99, .. }) => {}
        other => panic!("expected NotStaged, got {other:?}"),
    }
    assert_bytes_eq(&c.read(addr, 1, 0, 5000).unwrap(), &data, "after NotStaged");
    assert_eq!(c.stats().connects, 1);
    assert_eq!(c.stats().failures, 1);
    assert_eq!(server.stats().not_staged, 1);
}

#[test]
fn a_failed_read_of_the_log_is_reported_with_its_cause() {
    let source = Arc::new(MemSlices {
        broken: Some(3),
        ..MemSlices::with(&[(3, random_bytes(7, 100))])
    });
    let server = serve(source, PeerServerConfig::default());
    match client(quick()).read(server.local_addr(), 3, 0, 100) {
        Err(PeerError::ReadFailed { message, .. }) => {
            assert!(message.contains("failed its CRC"), "{message}")
        }
        other => panic!("expected ReadFailed, got {other:?}"),
    }
    assert_eq!(server.stats().read_failures, 1);
}

#[test]
fn a_silent_server_times_out_the_client() {
    // Accepts and never says hello.
    let listener = TcpListener::bind(loopback()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(5));
        drop(conn);
    });
    let started = Instant::now();
    match client(quick()).read(addr, 1, 0, 10) {
        Err(e @ PeerError::Timeout { .. }) => assert_eq!(e.errno(), libc::ETIMEDOUT),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_stalled_read_times_out_the_client() {
    let source = Arc::new(MemSlices {
        delay: Duration::from_secs(20),
        ..MemSlices::with(&[(1, random_bytes(8, 100))])
    });
    let server = serve(source, PeerServerConfig::default());
    let started = Instant::now();
    match client(quick()).read(server.local_addr(), 1, 0, 100) {
        Err(PeerError::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn nobody_listening_is_unreachable() {
    let addr = {
        let l = TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    match client(quick()).read(addr, 1, 0, 10) {
        Err(PeerError::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[test]
fn connections_beyond_the_limit_are_refused_busy() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(9, 100))]));
    let config = PeerServerConfig {
        max_connections: 1,
        ..PeerServerConfig::default()
    };
    let server = serve(source, config);
    let mut first = TcpStream::connect(server.local_addr()).unwrap();
    read_frame(&mut first).expect("hello");
    match client(quick()).read(server.local_addr(), 1, 0, 100) {
        Err(PeerError::Refused {
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("expected Busy, got {other:?}"),
    }
    drop(first);
    // The slot is free again once the server sees the connection end.
    let c = client(quick());
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.read(server.local_addr(), 1, 0, 100).is_err() {
        assert!(Instant::now() < deadline, "the slot was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.stats().busy >= 1);
}

#[test]
fn a_connection_the_server_closed_while_pooled_is_replaced() {
    let data = random_bytes(10, 100);
    let source = Arc::new(MemSlices::with(&[(1, data.clone())]));
    let config = PeerServerConfig {
        idle_timeout: Duration::from_millis(100),
        ..PeerServerConfig::default()
    };
    let server = serve(source, config);
    let c = client(quick());
    assert_bytes_eq(
        &c.read(server.local_addr(), 1, 0, 100).unwrap(),
        &data,
        "first",
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_bytes_eq(
        &c.read(server.local_addr(), 1, 0, 100).unwrap(),
        &data,
        "second",
    );
    assert_eq!(c.stats().connects, 2, "the stale connection was replaced");
    assert_eq!(c.stats().failures, 0);
}

/// Reads one frame from a raw connection (test side: any size up to 64 MiB).
fn read_frame(stream: &mut TcpStream) -> Option<Frame> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut header = [0u8; protocol::FRAME_HEADER_LEN];
    stream.read_exact(&mut header).ok()?;
    let (kind, len) = protocol::parse_header(&header, 64 << 20).ok()?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    protocol::decode_body(kind, Bytes::from(body)).ok()
}

/// Whether the server closed `stream` (EOF or reset) within a few seconds.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    !matches!(stream.read(&mut byte), Ok(n) if n > 0)
}

fn hello_nonce(stream: &mut TcpStream) -> [u8; protocol::NONCE_LEN] {
    match read_frame(stream) {
        Some(Frame::Hello(h)) => {
            assert_eq!(h.version, protocol::VERSION);
            h.nonce
        }
        other => panic!("expected a hello, got {other:?}"),
    }
}

fn signed_request(nonce: &[u8; 32], request_id: u64, slice: u64, len: u32) -> Vec<u8> {
    let key = protocol::PeerKey::new(SECRET).unwrap();
    let mut q = ReadRequest {
        version: protocol::VERSION,
        request_id,
        volume: VOLUME,
        slice,
        offset: 0,
        len,
        mac: [0; 32],
    };
    q.mac = protocol::read_mac(&key, nonce, &q);
    protocol::encode(&Frame::Read(q))
}

#[test]
fn a_request_with_a_wrong_mac_gets_one_refusal_and_nothing_else() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(11, 100))]));
    let server = serve(source.clone(), PeerServerConfig::default());
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let nonce = hello_nonce(&mut s);
    let mut request = signed_request(&nonce, 1, 1, 100);
    let last = request.len() - 1;
    request[last] ^= 1; // one bit of the MAC
    s.write_all(&request).unwrap();
    match read_frame(&mut s) {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::AuthFailed);
            assert_eq!(e.mac, [0; 32]);
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
    assert!(closed(&mut s), "the connection ends after the refusal");
    assert_eq!(source.reads.load(Ordering::SeqCst), 0);
}

#[test]
fn a_replayed_request_is_refused() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(12, 100))]));
    let server = serve(source.clone(), PeerServerConfig::default());
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let nonce = hello_nonce(&mut s);
    let request = signed_request(&nonce, 5, 1, 100);
    s.write_all(&request).unwrap();
    assert!(matches!(read_frame(&mut s), Some(Frame::Data(d)) if d.data.len() == 100));
    s.write_all(&request).unwrap();
    assert!(matches!(read_frame(&mut s), Some(Frame::Error(e)) if e.code == ErrorCode::Replay));
    assert!(closed(&mut s));
    // And on another connection (another nonce) the recorded request is not valid at all.
    let mut s2 = TcpStream::connect(server.local_addr()).unwrap();
    hello_nonce(&mut s2);
    s2.write_all(&request).unwrap();
    assert!(
        matches!(read_frame(&mut s2), Some(Frame::Error(e)) if e.code == ErrorCode::AuthFailed)
    );
    assert_eq!(source.reads.load(Ordering::SeqCst), 1);
}

#[test]
fn a_request_above_the_limit_is_refused_and_the_connection_goes_on() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(13, 4096))]));
    let config = PeerServerConfig {
        max_read_bytes: 1024,
        ..PeerServerConfig::default()
    };
    let server = serve(source.clone(), config);
    let mut s = TcpStream::connect(server.local_addr()).unwrap();
    let nonce = hello_nonce(&mut s);
    s.write_all(&signed_request(&nonce, 1, 1, 4096)).unwrap();
    assert!(matches!(read_frame(&mut s), Some(Frame::Error(e)) if e.code == ErrorCode::TooLarge));
    s.write_all(&signed_request(&nonce, 2, 1, 1024)).unwrap();
    assert!(matches!(read_frame(&mut s), Some(Frame::Data(d)) if d.data.len() == 1024));
    assert_eq!(
        source.reads.load(Ordering::SeqCst),
        1,
        "the large read never reached the log"
    );
}

#[test]
fn garbage_and_truncated_frames_never_stop_the_server() {
    let data = random_bytes(14, 300);
    let source = Arc::new(MemSlices::with(&[(1, data.clone())]));
    let config = PeerServerConfig {
        io_timeout: Duration::from_millis(300),
        ..PeerServerConfig::default()
    };
    let server = serve(source.clone(), config);
    let addr = server.local_addr();
    let mut rng = Rng::new(15);
    let valid = signed_request(&[0; 32], 1, 1, 300);
    let mut inputs: Vec<Vec<u8>> = vec![
        u32::MAX.to_le_bytes().into_iter().chain([2]).collect(), // 4 GiB frame
        vec![0, 0, 0, 0, 2],                                     // empty frame
        vec![10, 0, 0, 0, 77, 1, 2, 3, 4, 5, 6, 7, 8, 9],        // unknown kind
        vec![3, 0, 0, 0, 2, 1, 2],                               // short read body
        valid[..valid.len() / 2].to_vec(),                       // truncated, then silence
        protocol::encode(&Frame::Hello(protocol::Hello {
            version: 1,
            max_read: 5,
            nonce: [0; 32],
        })), // a frame only a server sends
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for _ in 0..30 {
        let len = 1 + rng.below(200) as usize;
        inputs.push(rng.bytes(len));
    }
    for input in &inputs {
        let mut s = TcpStream::connect(addr).unwrap();
        hello_nonce(&mut s);
        let _ = s.write_all(input);
        // Whatever the server answers, it ends the connection: the input was not a valid
        // request (the truncated one by the io timeout).
        let mut rest = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_end(&mut rest);
        // (A reset can cut the answer short when the server left input unread.)
        match protocol::decode(&rest, protocol::MAX_ERROR_FRAME) {
            Ok(None) => {}
            Ok(Some((Frame::Error(e), _))) => assert!(
                matches!(e.code, ErrorCode::BadFrame | ErrorCode::AuthFailed),
                "{e:?}"
            ),
            other => panic!("unexpected answer {other:?} to {input:?}"),
        }
    }
    assert_eq!(source.reads.load(Ordering::SeqCst), 0);
    assert!(server.stats().bad_frames >= 5, "{:?}", server.stats());
    let got = client(quick()).read(addr, 1, 0, 300).unwrap();
    assert_bytes_eq(&got, &data, "a read after the garbage");
}

#[test]
fn a_reply_with_a_bad_crc_or_mac_is_rejected() {
    // A fake server that answers with a valid MAC over a wrong CRC, then with a bad MAC.
    let listener = TcpListener::bind(loopback()).unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let key = protocol::PeerKey::new(SECRET).unwrap();
        for corrupt_mac in [false, true] {
            let (mut s, _) = listener.accept().unwrap();
            let nonce = [7u8; 32];
            let hello = Frame::Hello(protocol::Hello {
                version: protocol::VERSION,
                max_read: 1 << 20,
                nonce,
            });
            s.write_all(&protocol::encode(&hello)).unwrap();
            let Some(Frame::Read(q)) = read_frame(&mut s) else {
                panic!("expected a request")
            };
            assert!(protocol::verify_read(&key, &nonce, &q), "the client's MAC");
            let data = Bytes::from(vec![0xAB; q.len as usize]);
            let crc = crc32c::crc32c(&data) ^ u32::from(!corrupt_mac);
            let mut mac = protocol::data_mac(&key, &nonce, q.request_id, crc, q.len);
            mac[0] ^= u8::from(corrupt_mac);
            let reply = Frame::Data(protocol::DataReply {
                request_id: q.request_id,
                crc,
                mac,
                data,
            });
            s.write_all(&protocol::encode(&reply)).unwrap();
        }
    });
    let c = client(quick());
    match c.read(addr, 1, 0, 64) {
        Err(e @ PeerError::Checksum { .. }) => assert_eq!(e.errno(), libc::EIO),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    match c.read(addr, 1, 0, 64) {
        Err(PeerError::Protocol { detail, .. }) => assert!(detail.contains("MAC"), "{detail}"),
        other => panic!("expected an unauthenticated reply, got {other:?}"),
    }
    fake.join().unwrap();
}

#[test]
fn concurrent_clients_read_their_own_bytes() {
    let slices: Vec<(u64, Vec<u8>)> = (1..=16u64)
        .map(|id| (id, random_bytes(100 + id, 1000 + 37_000 * id as usize)))
        .collect();
    let source = Arc::new(MemSlices::with(&slices));
    let server = serve(source, PeerServerConfig::default());
    let addr = server.local_addr();
    let shared = Arc::new(client(PeerClientConfig::default()));
    let slices = Arc::new(slices);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let slices = slices.clone();
            let c = if t % 2 == 0 {
                shared.clone()
            } else {
                Arc::new(client(PeerClientConfig::default()))
            };
            std::thread::spawn(move || {
                let mut rng = Rng::new(200 + t);
                for _ in 0..40 {
                    let (id, data) = &slices[rng.below(slices.len() as u64) as usize];
                    let off = rng.below(data.len() as u64) as usize;
                    let len = rng.below((data.len() - off) as u64 + 1) as usize;
                    let got = c.read(addr, *id, off as u32, len as u32).unwrap();
                    assert_bytes_eq(&got, &data[off..off + len], "concurrent read");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.stats().reads_served, 8 * 40);
    assert!(shared.stats().connects <= 4, "{:?}", shared.stats());
}

#[test]
fn the_advertised_address_is_one_other_hosts_can_use() {
    let source = Arc::new(MemSlices::default());
    let server = serve(source.clone(), PeerServerConfig::default());
    assert_eq!(server.advertised_addr().unwrap(), server.local_addr());
    let any = PeerServer::start(
        "0.0.0.0:0".parse().unwrap(),
        VOLUME,
        SECRET,
        source,
        PeerServerConfig::default(),
    )
    .unwrap();
    // A machine without a route or a resolvable host name says so; otherwise the address
    // is a concrete one, with the port actually bound.
    match any.advertised_addr() {
        Ok(addr) => {
            assert!(!addr.ip().is_unspecified(), "{addr}");
            assert_eq!(addr.port(), any.local_addr().port());
        }
        Err(e) => assert!(e.to_string().contains("explicitly"), "{e}"),
    }
}

#[test]
fn forgetting_a_peer_closes_its_pooled_connections() {
    let source = Arc::new(MemSlices::with(&[(1, random_bytes(16, 10))]));
    let server = serve(source, PeerServerConfig::default());
    let c = client(quick());
    c.read(server.local_addr(), 1, 0, 10).unwrap();
    c.read(server.local_addr(), 1, 0, 10).unwrap();
    assert_eq!(c.stats().connects, 1);
    c.forget(server.local_addr());
    c.read(server.local_addr(), 1, 0, 10).unwrap();
    assert_eq!(c.stats().connects, 2);
}
