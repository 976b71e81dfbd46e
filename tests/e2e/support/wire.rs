//! Raw HTTP/1 on a TCP connection, for what a client library would hide: send bytes, read what
//! comes back until a condition holds or the connection closes, and parse the response as it
//! stands (complete, or cut short of what its framing announced).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection and everything read on it so far.
pub struct Conn {
    stream: TcpStream,
    pub bytes: Vec<u8>,
    pub closed: bool,
}

impl Conn {
    /// Connect to `addr` (from source address `from`, when given).
    pub async fn open(addr: SocketAddr, from: Option<IpAddr>) -> Conn {
        let stream = match from {
            None => TcpStream::connect(addr).await.expect("connect"),
            Some(ip) => {
                let socket = tokio::net::TcpSocket::new_v4().expect("socket");
                socket
                    .bind(SocketAddr::new(ip, 0))
                    .expect("bind client source");
                socket.connect(addr).await.expect("connect")
            }
        };
        Conn {
            stream,
            bytes: Vec::new(),
            closed: false,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Like [`send`](Self::send), for a peer that may have closed already: whether it went out.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Read until `done(self)` holds, the connection closes, or `within` passes. Returns
    /// whether `done` held.
    pub async fn read_until(&mut self, within: Duration, done: impl Fn(&Conn) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 16384];
        while !done(self) {
            if self.closed {
                return false;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.bytes.extend_from_slice(&buf[..n]),
                Err(_) => return false,
            }
        }
        true
    }

    /// Read until the peer closes or `within` passes; whether it closed.
    pub async fn read_to_close(&mut self, within: Duration) -> bool {
        self.read_until(within, |c| c.closed).await
    }

    /// The response read so far (`head_only`: it answers a HEAD).
    pub fn response(&self, head_only: bool) -> Parsed {
        parse(&self.bytes, self.closed, head_only)
    }

    /// Read until a whole response arrived (or the connection closed, or `within` passed);
    /// returns it as it stands.
    pub async fn read_response(&mut self, within: Duration, head_only: bool) -> Parsed {
        self.read_until(within, |c| c.response(head_only).is_complete())
            .await;
        self.response(head_only)
    }
}

/// Send `request` on a new connection and read until the server closes it or `within` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], within: Duration) -> Conn {
    let mut c = Conn::open(addr, None).await;
    c.send(request).await;
    c.read_to_close(within).await;
    c
}

/// [`exchange`] as text, with `<no close>` appended when the connection stayed open.
pub async fn raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> String {
    let c = exchange(addr, bytes, within).await;
    let mut text = String::from_utf8_lossy(&c.bytes).into_owned();
    if !c.closed {
        text.push_str("<no close>");
    }
    text
}

/// Where the head ends in `bytes` (just past its empty line).
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// A response head and its body as far as it arrived.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    /// The status line and fields, each line ending in CRLF (without the empty line).
    pub head: String,
    /// The body (dechunked), as far as it arrived; for a response without one by its framing
    /// (HEAD, 101, 204, 304), every byte that followed its head.
    pub body: Vec<u8>,
    /// The body is whole by its framing (`Content-Length` reached, the last chunk and the
    /// trailers' end seen, or, with neither, the connection closed).
    pub complete: bool,
    /// Bytes of the connection this response took, head included (the whole of what arrived,
    /// for a chunked or close-delimited body).
    pub len: usize,
}

impl Response {
    /// The first value of field `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// Every value of field `name`.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// What a client read off the wire for one request.
#[derive(Clone)]
pub enum Parsed {
    /// No byte.
    Nothing,
    /// Bytes that are not (yet) a response head.
    Unparseable(String),
    Response(Response),
}

impl Parsed {
    pub fn is_complete(&self) -> bool {
        matches!(self, Parsed::Response(r) if r.complete)
    }

    pub fn response(&self) -> Option<&Response> {
        match self {
            Parsed::Response(r) => Some(r),
            _ => None,
        }
    }
}

/// At most 300 characters of `bytes`, for failure messages.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], bytes.len()),
        None => text.into_owned(),
    }
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parsed::Nothing => write!(f, "Nothing"),
            Parsed::Unparseable(t) => write!(f, "Unparseable({})", excerpt(t.as_bytes())),
            Parsed::Response(r) => write!(
                f,
                "{}({}{})",
                if r.complete { "Complete" } else { "Truncated" },
                excerpt(r.head.as_bytes()),
                excerpt(&r.body)
            ),
        }
    }
}

/// Parse the response in `bytes` (`closed`: nothing more will come; `head_only`: it answers
/// a HEAD). Informational (1xx) heads before the final one are skipped.
pub fn parse(all: &[u8], closed: bool, head_only: bool) -> Parsed {
    let mut bytes = all;
    loop {
        if bytes.is_empty() {
            return Parsed::Nothing;
        }
        let Some(end) = head_end(bytes) else {
            return Parsed::Unparseable(String::from_utf8_lossy(bytes).into_owned());
        };
        let head = String::from_utf8_lossy(&bytes[..end - 2]).into_owned();
        let rest = &bytes[end..];
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status else {
            return Parsed::Unparseable(head);
        };
        if (100..200).contains(&status) && status != 101 {
            bytes = rest;
            continue;
        }
        let taken = all.len() - bytes.len() + end;
        let mut r = Response {
            status,
            head,
            body: Vec::new(),
            complete: true,
            len: taken,
        };
        if head_only || matches!(status, 101 | 204 | 304) {
            // no body by framing: whatever follows is kept, so a test can see a stray one
            r.body = rest.to_vec();
            return Parsed::Response(r);
        }
        let chunked = r
            .headers("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length = r
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            let (body, complete) = dechunk(rest);
            (r.body, r.complete, r.len) = (body, complete, all.len());
        } else if let Some(n) = length {
            r.body = rest[..rest.len().min(n)].to_vec();
            r.complete = rest.len() >= n;
            r.len = taken + r.body.len();
        } else {
            r.body = rest.to_vec();
            r.complete = closed;
            r.len = all.len();
        }
        return Parsed::Response(r);
    }
}

/// Decode a chunked body as far as it goes: the data, and whether the last chunk and the end
/// of the trailers arrived.
pub fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|t| t.split(';').next())
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok());
        let Some(size) = size else {
            return (body, false);
        };
        rest = &rest[eol + 2..];
        if size == 0 {
            // trailers end with an empty line
            loop {
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                    return (body, false);
                };
                if eol == 0 {
                    return (body, true);
                }
                rest = &rest[eol + 2..];
            }
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}
