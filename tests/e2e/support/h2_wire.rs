//! Raw HTTP/2 for what a client library would never send: frames built by hand, header blocks of
//! HPACK literals (any bytes, any order, no Huffman), and a reader that reports how verge
//! answered a stream (a status, RST_STREAM, GOAWAY, a close).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const PROTOCOL_ERROR: u32 = 0x1;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: length, type, flags, stream, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing (new names, no Huffman), in this order,
/// whatever the bytes: pseudo-headers are fields whose name starts with `:`.
pub fn block(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// The pseudo-headers of a plain GET for `path` on `c.test`.
pub fn get_fields(path: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (":method", b"GET".to_vec()),
        (":scheme", b"http".to_vec()),
        (":authority", b"c.test".to_vec()),
        (":path", path.as_bytes().to_vec()),
    ]
}

/// How verge answered a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status (0: a status this reader cannot decode).
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
    /// The connection closed without either.
    Closed,
    /// Nothing within the time allowed.
    Silent,
}

/// A frame as read: type, stream, payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        self.payload
            .get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Huffman codes (RFC 7541 Appendix B) of the digits, for the `:status` of a literal field.
const DIGIT_CODES: [(u32, u32); 10] = [
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
];

fn huffman_digits(bytes: &[u8]) -> Option<u16> {
    let mut bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut value = 0u16;
    for _ in 0..3 {
        let digit = DIGIT_CODES.iter().position(|&(code, len)| {
            let len = len as usize;
            bits.len() >= len
                && bits[..len].iter().fold(0u32, |n, b| n << 1 | u32::from(*b)) == code
        })?;
        bits.drain(..DIGIT_CODES[digit].1 as usize);
        value = value * 10 + digit as u16;
    }
    Some(value)
}

/// The `:status` at the start of a response header block (indexed, or a literal with the
/// static name `:status`, plain or Huffman-coded); 0 if it is something else.
pub fn status_of(block: &[u8]) -> u16 {
    const INDEXED: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let Some(&first) = block.first() else {
        return 0;
    };
    if (0x88..=0x8e).contains(&first) {
        return INDEXED[usize::from(first - 0x88)];
    }
    // literal with an indexed name 8..=14 (`:status`): 6-bit (indexing) or 4-bit prefix
    let name = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name) || block.len() < 2 {
        return 0;
    }
    let (huffman, len) = (block[1] & 0x80 != 0, usize::from(block[1] & 0x7f));
    let Some(text) = block.get(2..2 + len) else {
        return 0;
    };
    if huffman {
        return huffman_digits(text).unwrap_or(0);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Reads frames off one side of a connection.
pub struct FrameReader<R> {
    read: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(read: R) -> Self {
        FrameReader {
            read,
            buf: Vec::new(),
        }
    }

    /// The next frame, or `None` at a close or after `within`.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 16384];
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let b = &self.buf;
                    let f = Frame {
                        kind: b[3],
                        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                        payload: b[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Read until verge answers stream `id` (or gives up on the connection).
    pub async fn outcome(&mut self, id: u32, within: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next_frame(left).await else {
                return if left.is_zero() {
                    Outcome::Silent
                } else {
                    Outcome::Closed
                };
            };
            match f.kind {
                HEADERS if f.stream == id => return Outcome::Status(status_of(&f.payload)),
                RST_STREAM if f.stream == id => return Outcome::Reset(f.error_code()),
                GOAWAY => return Outcome::GoAway(f.error_code()),
                _ => {}
            }
        }
    }
}

/// A raw HTTP/2 client connection (prior knowledge).
pub struct H2Conn {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl H2Conn {
    /// Connect and send the preface and an empty SETTINGS.
    pub async fn open(addr: SocketAddr) -> H2Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, mut writer) = stream.into_split();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        writer.write_all(&hello).await.expect("preface");
        H2Conn {
            reader: FrameReader::new(read),
            writer,
        }
    }

    /// Write bytes; whether they went out (verge may have closed already).
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok()
    }

    /// Send one request with exactly these fields on stream `id` (no body), and read how verge
    /// answered it.
    pub async fn request(&mut self, id: u32, fields: &[(&str, &[u8])]) -> Outcome {
        let headers = frame(HEADERS, END_STREAM | END_HEADERS, id, &block(fields));
        if !self.send(&headers).await {
            return Outcome::Closed;
        }
        self.reader.outcome(id, Duration::from_secs(10)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode() {
        assert_eq!(status_of(&[0x88]), 200);
        assert_eq!(status_of(&[0x8c]), 400);
        assert_eq!(status_of(b"\x48\x03431"), 431);
        // "408" Huffman-coded: 011010 00000 011110, padded with ones
        assert_eq!(status_of(&[0x48, 0x83, 0x68, 0x0f, 0x7f]), 408);
    }
}
