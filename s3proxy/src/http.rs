//! Just enough HTTP/1.1 to relay requests and responses byte for byte: message heads, and
//! bodies framed by `Content-Length`, by chunked transfer encoding, or (responses only) by the
//! end of the connection. Nothing is rewritten: SigV4 signs the request line and headers.

use std::io::{self, BufRead, Read, Write};

/// Longest message head accepted (request or status line plus headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest request body accepted (the proxy holds a request in memory before forwarding it).
pub const MAX_BODY_BYTES: u64 = 1 << 30;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// A parsed message head; `raw` is exactly what was received.
#[derive(Debug)]
pub struct Head {
    pub raw: Vec<u8>,
    /// Request: method, target, version. Response: version, status, reason.
    pub first: [String; 3],
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True if a comma-separated header (any occurrence) lists `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn http10(&self, version: &str) -> bool {
        version.eq_ignore_ascii_case("HTTP/1.0")
    }

    /// Whether the connection stays open after this message (version `self.first[idx]`).
    pub fn keep_alive(&self, version_idx: usize) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        if self.http10(&self.first[version_idx]) {
            return self.has_token("connection", "keep-alive");
        }
        true
    }

    /// The body framing of a request (a request without either header has no body).
    pub fn request_framing(&self) -> io::Result<Framing> {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.content_length()? {
            Some(0) | None => Ok(Framing::None),
            Some(n) => Ok(Framing::Length(n)),
        }
    }

    /// The body framing of a response to a request with method `method`.
    pub fn response_framing(&self, method: &str) -> io::Result<Framing> {
        let status = self.status();
        if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            return Ok(Framing::None);
        }
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.content_length()? {
            Some(0) => Ok(Framing::None),
            Some(n) => Ok(Framing::Length(n)),
            None => Ok(Framing::UntilClose),
        }
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        match self.header("content-length") {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| bad(format!("invalid Content-Length {v:?}"))),
        }
    }

    /// The status code of a response head (0 if unparsable).
    pub fn status(&self) -> u16 {
        self.first[1].parse().unwrap_or(0)
    }
}

pub fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line (up to and including `\n`) into `out`; returns the bytes read (0 at EOF).
fn read_line_raw(r: &mut impl BufRead, out: &mut Vec<u8>, limit: usize) -> io::Result<usize> {
    let start = out.len();
    let n = r.take(limit as u64 + 1).read_until(b'\n', out)?;
    if n > limit {
        return Err(bad("line too long"));
    }
    if n > 0 && out[start + n - 1] != b'\n' {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a line",
        ));
    }
    Ok(n)
}

/// Reads a message head. Returns `None` on a clean end of stream before its first byte
/// (empty lines before a request line are skipped, as RFC 9112 allows).
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    // The first line, skipping stray CRLFs.
    loop {
        raw.clear();
        if read_line_raw(r, &mut raw, MAX_HEAD_BYTES)? == 0 {
            return Ok(None);
        }
        if raw != b"\r\n" && raw != b"\n" {
            break;
        }
    }
    let first_line = String::from_utf8_lossy(&raw).trim_end().to_string();
    let mut parts = first_line.splitn(3, ' ');
    let first = [
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    ];
    if first[0].is_empty() || first[1].is_empty() {
        return Err(bad(format!("malformed first line {first_line:?}")));
    }
    let mut headers = Vec::new();
    loop {
        let start = raw.len();
        let left = MAX_HEAD_BYTES.saturating_sub(start);
        if left == 0 {
            return Err(bad("message head too long"));
        }
        if read_line_raw(r, &mut raw, left)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a message head",
            ));
        }
        let line = String::from_utf8_lossy(&raw[start..]).into_owned();
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some(Head {
        raw,
        first,
        headers,
    }))
}

/// Reads a request body in its framing, keeping the raw bytes (chunk framing included).
pub fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    copy_body(r, &mut out, framing, MAX_BODY_BYTES)?;
    Ok(out)
}

/// Copies a body in its framing from `r` to `w`, byte for byte; at most `limit` bytes of data.
/// Returns the number of bytes written.
/// Reads one line (at most `max` bytes) into `line` and writes it on; returns its length. The
/// connection closing first is an error that says `where` it closed.
fn relay_line(
    r: &mut impl BufRead,
    w: &mut impl Write,
    line: &mut Vec<u8>,
    max: usize,
    place: &str,
) -> io::Result<u64> {
    line.clear();
    if read_line_raw(r, line, max)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed {place}"),
        ));
    }
    w.write_all(line)?;
    Ok(line.len() as u64)
}

pub fn copy_body(
    r: &mut impl BufRead,
    w: &mut impl Write,
    framing: Framing,
    limit: u64,
) -> io::Result<u64> {
    match framing {
        Framing::None => Ok(0),
        Framing::Length(n) => {
            if n > limit {
                return Err(bad(format!("body of {n} bytes is too large")));
            }
            copy_exact(r, w, n)
        }
        Framing::UntilClose => io::copy(&mut r.take(limit), w),
        Framing::Chunked => {
            let mut total = 0u64;
            let mut data = 0u64;
            let mut line = Vec::new();
            loop {
                total += relay_line(r, w, &mut line, 4096, "before the last chunk")?;
                let text = String::from_utf8_lossy(&line);
                let size_text = text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_text, 16)
                    .map_err(|_| bad(format!("invalid chunk size {size_text:?}")))?;
                if size == 0 {
                    // Trailer section, up to an empty line.
                    loop {
                        total += relay_line(r, w, &mut line, 8192, "in the chunked trailer")?;
                        if line == b"\r\n" || line == b"\n" {
                            return Ok(total);
                        }
                    }
                }
                data += size;
                if data > limit {
                    return Err(bad("chunked body too large"));
                }
                // The chunk data and its CRLF.
                total += copy_exact(r, w, size)?;
                line.clear();
                read_line_raw(r, &mut line, 2)?;
                if line != b"\r\n" && line != b"\n" {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                w.write_all(&line)?;
                total += line.len() as u64;
            }
        }
    }
}

fn copy_exact(r: &mut impl BufRead, w: &mut impl Write, n: u64) -> io::Result<u64> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed after {copied} of {n} body bytes"),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn request_with_length_body() {
        let msg = b"\r\nPUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET";
        let mut r = BufReader::new(&msg[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head.first[0], "PUT");
        assert_eq!(head.first[1], "/b/k");
        assert!(head.raw.starts_with(b"PUT /b/k"));
        assert!(head.raw.ends_with(b"\r\n\r\n"));
        assert_eq!(head.request_framing().unwrap(), Framing::Length(5));
        assert!(head.keep_alive(2));
        assert_eq!(read_body(&mut r, Framing::Length(5)).unwrap(), b"hello");
    }

    #[test]
    fn chunked_body_is_kept_raw() {
        let body = b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        let mut msg = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        msg.extend_from_slice(body);
        msg.extend_from_slice(b"rest");
        let mut r = BufReader::new(&msg[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!(head.request_framing().unwrap(), Framing::Chunked);
        assert_eq!(read_body(&mut r, Framing::Chunked).unwrap(), body);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"rest");
    }

    #[test]
    fn truncated_and_malformed_messages_fail() {
        let mut r = BufReader::new(&b"PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc"[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert!(read_body(&mut r, head.request_framing().unwrap()).is_err());
        let mut r = BufReader::new(&b"PUT / HTTP/1.1\r\nno colon\r\n\r\n"[..]);
        assert!(read_head(&mut r).is_err());
        let mut r = BufReader::new(&b"PUT / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(read_head(&mut r).is_err());
        let mut r = BufReader::new(&b""[..]);
        assert!(read_head(&mut r).unwrap().is_none());
    }

    #[test]
    fn response_framing() {
        let parse = |s: &[u8]| read_head(&mut BufReader::new(s)).unwrap().unwrap();
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(h.status(), 200);
        assert_eq!(h.response_framing("GET").unwrap(), Framing::Length(10));
        assert_eq!(h.response_framing("HEAD").unwrap(), Framing::None);
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.response_framing("GET").unwrap(), Framing::UntilClose);
        let h = parse(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.response_framing("DELETE").unwrap(), Framing::None);
        let h = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive(0));
        let h = parse(b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n");
        assert!(!h.keep_alive(0));
    }
}
