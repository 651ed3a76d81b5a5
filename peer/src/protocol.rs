//! The peer protocol's frames, their encoding, and the MACs that authenticate them
//! (docs/FORMAT.md, "Peer protocol").
//!
//! Every frame is `len: u32 LE | kind: u8 | body`, where `len` counts the kind byte and the body.
//! A receiver checks `len` against the largest frame it expects before it allocates anything,
//! and every decoder returns an error, never panics, on bytes it does not accept.

use bytes::Bytes;
use ring::hmac;

/// The first four bytes of a server's hello.
pub const MAGIC: [u8; 4] = *b"SPFP";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Bytes of the server's per-connection nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Bytes of a volume id (a UUID).
pub const VOLUME_ID_LEN: usize = 16;
/// `len: u32` and `kind: u8`.
pub const FRAME_HEADER_LEN: usize = 5;
/// The shortest secret accepted: 128 bits.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest error message a server sends (longer ones are cut).
pub const MAX_ERROR_MESSAGE: usize = 1024;

const HELLO_BODY: usize = 4 + 2 + 4 + NONCE_LEN;
const READ_BODY: usize = 2 + 8 + VOLUME_ID_LEN + 8 + 4 + 4 + MAC_LEN;
const DATA_HEAD: usize = 8 + 4 + 4 + MAC_LEN;
const ERROR_HEAD: usize = 8 + 2 + MAC_LEN + 2;

/// The largest frame a client ever sends (`len`, so kind and body): a read request.
pub const MAX_REQUEST_FRAME: u32 = 1 + READ_BODY as u32;
/// The largest error frame (`len`).
pub const MAX_ERROR_FRAME: u32 = (1 + ERROR_HEAD + MAX_ERROR_MESSAGE) as u32;

/// Domain tags: a MAC made for one kind of message can never pass for another.
const TAG_READ: &[u8] = b"spoolfs-peer/1 read\0";
const TAG_DATA: &[u8] = b"spoolfs-peer/1 data\0";
const TAG_ERROR: &[u8] = b"spoolfs-peer/1 error\0";

/// Frame kinds.
pub const KIND_HELLO: u8 = 1;
pub const KIND_READ: u8 = 2;
pub const KIND_DATA: u8 = 3;
pub const KIND_ERROR: u8 = 4;

/// Why bytes from the network are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is longer than the {max} accepted here")]
    TooLong { len: u32, max: u32 },
    #[error("frame length {0} is too short to hold a kind")]
    Empty(u32),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{what} frame has {got} body bytes, expected {expected}")]
    BadLength {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("hello does not start with the peer protocol's magic")]
    BadMagic,
    #[error("error message of {0} bytes; at most {MAX_ERROR_MESSAGE} are sent")]
    LongMessage(usize),
    #[error("error message is not UTF-8")]
    BadMessage,
}

/// A server's first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The most bytes one read request may ask for.
    pub max_read: u32,
    /// Fresh random bytes: every MAC on this connection covers them, so nothing recorded on
    /// another connection can be replayed on this one.
    pub nonce: [u8; NONCE_LEN],
}

/// A client's request for bytes `[offset, offset + len)` of staged slice `slice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub version: u16,
    /// Strictly increasing on a connection (a replayed request is refused).
    pub request_id: u64,
    pub volume: [u8; VOLUME_ID_LEN],
    pub slice: u64,
    pub offset: u32,
    pub len: u32,
    /// [`read_mac`] of the fields above.
    pub mac: [u8; MAC_LEN],
}

/// The bytes a read asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataReply {
    pub request_id: u64,
    /// CRC-32C of `data`, computed by the owner from the bytes it read from its staging log.
    pub crc: u32,
    /// [`data_mac`] of the request id, CRC and length.
    pub mac: [u8; MAC_LEN],
    pub data: Bytes,
}

/// Why a request was not answered with data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The request refused, 0 when the failure is not about one request.
    pub request_id: u64,
    pub code: ErrorCode,
    /// [`error_mac`] when the request's own MAC was valid; zeros otherwise (the server cannot
    /// prove anything to a client that does not hold the secret).
    pub mac: [u8; MAC_LEN],
    pub message: String,
}

/// What an error frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The slice is not staged on this node (uploaded since, or never here).
    NotStaged,
    /// The request's MAC is wrong: the client does not hold the volume's secret.
    AuthFailed,
    /// The request is authenticated but names another volume.
    WrongVolume,
    /// The read asks for more than the hello's `max_read`.
    TooLarge,
    /// The owner failed to read its staging log.
    ReadFailed,
    /// The server has as many connections as it accepts.
    Busy,
    /// The bytes received are not a frame the server accepts.
    BadFrame,
    /// The request speaks another protocol version.
    UnsupportedVersion,
    /// The request id is not above the previous one on this connection.
    Replay,
    /// A code this version does not know.
    Unknown(u16),
}

impl ErrorCode {
    pub fn to_wire(self) -> u16 {
        match self {
            ErrorCode::NotStaged => 1,
            ErrorCode::AuthFailed => 2,
            ErrorCode::WrongVolume => 3,
            ErrorCode::TooLarge => 4,
            ErrorCode::ReadFailed => 5,
            ErrorCode::Busy => 6,
            ErrorCode::BadFrame => 7,
            ErrorCode::UnsupportedVersion => 8,
            ErrorCode::Replay => 9,
            ErrorCode::Unknown(c) => c,
        }
    }

    pub fn from_wire(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::NotStaged,
            2 => ErrorCode::AuthFailed,
            3 => ErrorCode::WrongVolume,
            4 => ErrorCode::TooLarge,
            5 => ErrorCode::ReadFailed,
            6 => ErrorCode::Busy,
            7 => ErrorCode::BadFrame,
            8 => ErrorCode::UnsupportedVersion,
            9 => ErrorCode::Replay,
            c => ErrorCode::Unknown(c),
        }
    }
}

/// Any frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Read(ReadRequest),
    Data(DataReply),
    Error(ErrorReply),
}

/// Checks a frame header and returns the kind and the number of body bytes that follow.
/// `max_len` bounds `len` (kind and body): nothing longer is ever allocated.
pub fn parse_header(
    header: &[u8; FRAME_HEADER_LEN],
    max_len: u32,
) -> Result<(u8, usize), FrameError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len == 0 {
        return Err(FrameError::Empty(len));
    }
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    let kind = header[4];
    if !(KIND_HELLO..=KIND_ERROR).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    Ok((kind, len as usize - 1))
}

/// Decodes the body of a frame of kind `kind`. A data frame's bytes are a slice of `body`.
pub fn decode_body(kind: u8, body: Bytes) -> Result<Frame, FrameError> {
    let mut r = Cursor { buf: &body, pos: 0 };
    match kind {
        KIND_HELLO => {
            exact("hello", body.len(), HELLO_BODY)?;
            if r.array::<4>() != MAGIC {
                return Err(FrameError::BadMagic);
            }
            Ok(Frame::Hello(Hello {
                version: r.u16(),
                max_read: r.u32(),
                nonce: r.array(),
            }))
        }
        KIND_READ => {
            exact("read", body.len(), READ_BODY)?;
            Ok(Frame::Read(ReadRequest {
                version: r.u16(),
                request_id: r.u64(),
                volume: r.array(),
                slice: r.u64(),
                offset: r.u32(),
                len: r.u32(),
                mac: r.array(),
            }))
        }
        KIND_DATA => {
            at_least("data", body.len(), DATA_HEAD)?;
            let request_id = r.u64();
            let crc = r.u32();
            let len = r.u32() as usize;
            let mac = r.array();
            exact("data", body.len(), DATA_HEAD.saturating_add(len))?;
            Ok(Frame::Data(DataReply {
                request_id,
                crc,
                mac,
                data: body.slice(DATA_HEAD..),
            }))
        }
        KIND_ERROR => {
            at_least("error", body.len(), ERROR_HEAD)?;
            let request_id = r.u64();
            let code = ErrorCode::from_wire(r.u16());
            let mac = r.array();
            let len = r.u16() as usize;
            if len > MAX_ERROR_MESSAGE {
                return Err(FrameError::LongMessage(len));
            }
            exact("error", body.len(), ERROR_HEAD + len)?;
            let message = std::str::from_utf8(&body[ERROR_HEAD..])
                .map_err(|_| FrameError::BadMessage)?
                .to_string();
            Ok(Frame::Error(ErrorReply {
                request_id,
                code,
                mac,
                message,
            }))
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Decodes one frame from the start of `buf`: `Ok(None)` if `buf` holds only part of it, else
/// the frame and the bytes it took.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, body_len) = parse_header(header, max_len)?;
    let end = FRAME_HEADER_LEN + body_len;
    let Some(body) = buf.get(FRAME_HEADER_LEN..end) else {
        return Ok(None);
    };
    let frame = decode_body(kind, Bytes::copy_from_slice(body))?;
    Ok(Some((frame, end)))
}

/// The whole encoding of `frame`.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut out = encode_head(frame);
    if let Frame::Data(d) = frame {
        out.extend_from_slice(&d.data);
    }
    out
}

/// The encoding of `frame` without a data frame's data (which a sender writes after it, from
/// its own buffer).
pub fn encode_head(frame: &Frame) -> Vec<u8> {
    let (kind, body) = match frame {
        Frame::Hello(h) => {
            let mut b = Vec::with_capacity(HELLO_BODY);
            b.extend_from_slice(&MAGIC);
            b.extend_from_slice(&h.version.to_le_bytes());
            b.extend_from_slice(&h.max_read.to_le_bytes());
            b.extend_from_slice(&h.nonce);
            (KIND_HELLO, b)
        }
        Frame::Read(q) => {
            let mut b = read_fields(q);
            b.extend_from_slice(&q.mac);
            (KIND_READ, b)
        }
        Frame::Data(d) => {
            let mut b = Vec::with_capacity(DATA_HEAD);
            b.extend_from_slice(&d.request_id.to_le_bytes());
            b.extend_from_slice(&d.crc.to_le_bytes());
            b.extend_from_slice(&(d.data.len() as u32).to_le_bytes());
            b.extend_from_slice(&d.mac);
            (KIND_DATA, b)
        }
        Frame::Error(e) => {
            let message = truncate_message(&e.message);
            let mut b = Vec::with_capacity(ERROR_HEAD + message.len());
            b.extend_from_slice(&e.request_id.to_le_bytes());
            b.extend_from_slice(&e.code.to_wire().to_le_bytes());
            b.extend_from_slice(&e.mac);
            b.extend_from_slice(&(message.len() as u16).to_le_bytes());
            b.extend_from_slice(message.as_bytes());
            (KIND_ERROR, b)
        }
    };
    let data_len = match frame {
        Frame::Data(d) => d.data.len(),
        _ => 0,
    };
    let len = (1 + body.len() + data_len) as u32;
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// `message` cut to at most [`MAX_ERROR_MESSAGE`] bytes on a character boundary.
pub fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// The volume's secret as an HMAC-SHA256 key.
pub struct PeerKey(hmac::Key);

impl PeerKey {
    /// `None` if the secret is shorter than [`MIN_SECRET_LEN`].
    pub fn new(secret: &[u8]) -> Option<PeerKey> {
        (secret.len() >= MIN_SECRET_LEN).then(|| PeerKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    fn sign(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(ctx.sign().as_ref());
        mac
    }

    /// Constant-time check of `mac` against the MAC of `parts`.
    fn verify(&self, parts: &[&[u8]], mac: &[u8; MAC_LEN]) -> bool {
        let data: Vec<u8> = parts.concat();
        hmac::verify(&self.0, &data, mac).is_ok()
    }
}

/// The MAC of a read request: HMAC-SHA256(secret, tag ‖ nonce ‖ the request's fields before
/// its MAC, as encoded).
pub fn read_mac(key: &PeerKey, nonce: &[u8; NONCE_LEN], q: &ReadRequest) -> [u8; MAC_LEN] {
    key.sign(&[TAG_READ, nonce, &read_fields(q)])
}

pub fn verify_read(key: &PeerKey, nonce: &[u8; NONCE_LEN], q: &ReadRequest) -> bool {
    key.verify(&[TAG_READ, nonce, &read_fields(q)], &q.mac)
}

/// The MAC of a data reply: HMAC-SHA256(secret, tag ‖ nonce ‖ request id ‖ CRC ‖ length). The
/// data itself is covered by the CRC.
pub fn data_mac(
    key: &PeerKey,
    nonce: &[u8; NONCE_LEN],
    request_id: u64,
    crc: u32,
    len: u32,
) -> [u8; MAC_LEN] {
    key.sign(&[TAG_DATA, nonce, &data_fields(request_id, crc, len)])
}

pub fn verify_data(key: &PeerKey, nonce: &[u8; NONCE_LEN], d: &DataReply) -> bool {
    let fields = data_fields(d.request_id, d.crc, d.data.len() as u32);
    key.verify(&[TAG_DATA, nonce, &fields], &d.mac)
}

/// The MAC of an error reply: HMAC-SHA256(secret, tag ‖ nonce ‖ request id ‖ code ‖ message).
pub fn error_mac(
    key: &PeerKey,
    nonce: &[u8; NONCE_LEN],
    request_id: u64,
    code: ErrorCode,
    message: &str,
) -> [u8; MAC_LEN] {
    let message = truncate_message(message);
    key.sign(&[
        TAG_ERROR,
        nonce,
        &error_fields(request_id, code),
        message.as_bytes(),
    ])
}

pub fn verify_error(key: &PeerKey, nonce: &[u8; NONCE_LEN], e: &ErrorReply) -> bool {
    let fields = error_fields(e.request_id, e.code);
    key.verify(&[TAG_ERROR, nonce, &fields, e.message.as_bytes()], &e.mac)
}

fn read_fields(q: &ReadRequest) -> Vec<u8> {
    let mut b = Vec::with_capacity(READ_BODY);
    b.extend_from_slice(&q.version.to_le_bytes());
    b.extend_from_slice(&q.request_id.to_le_bytes());
    b.extend_from_slice(&q.volume);
    b.extend_from_slice(&q.slice.to_le_bytes());
    b.extend_from_slice(&q.offset.to_le_bytes());
    b.extend_from_slice(&q.len.to_le_bytes());
    b
}

fn data_fields(request_id: u64, crc: u32, len: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&request_id.to_le_bytes());
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b[12..].copy_from_slice(&len.to_le_bytes());
    b
}

fn error_fields(request_id: u64, code: ErrorCode) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&request_id.to_le_bytes());
    b[8..].copy_from_slice(&code.to_wire().to_le_bytes());
    b
}

fn exact(what: &'static str, got: usize, expected: usize) -> Result<(), FrameError> {
    if got == expected {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            what,
            got,
            expected,
        })
    }
}

fn at_least(what: &'static str, got: usize, expected: usize) -> Result<(), FrameError> {
    if got >= expected {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            what,
            got,
            expected,
        })
    }
}

/// Reads fixed-size fields from a body whose length was checked first.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        // The callers checked the body's length; a short one yields zeros rather than a panic.
        if let Some(src) = self.buf.get(self.pos..self.pos + N) {
            a.copy_from_slice(src);
        }
        self.pos += N;
        a
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The longest data frame (`len`) answering a read of at most `max_read` bytes.
pub fn max_data_frame(max_read: u32) -> u32 {
    (1 + DATA_HEAD as u32).saturating_add(max_read)
}
