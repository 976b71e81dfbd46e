//! HTTP/1 request lines as verge accepts them (RFC 9112 §3): `method SP request-target SP
//! HTTP-version`, single spaces, an uppercase method, an origin-form target, HTTP/1.0 or 1.1.
//! Anything else is refused before routing, so the router, the cache key and the origin never
//! read one request line three ways.

use super::target::{check_target, BadTarget};

/// Why a request line is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequestLine {
    /// Not three parts separated by single spaces (`GET /a b HTTP/1.1`, a tab, two spaces).
    Shape,
    /// A method that is not `[A-Z_-]+`: `gET` or `get` is not `GET`, and an origin that reads
    /// methods without regard to case would answer a request the cache took for another.
    Method,
    /// A target that is not a plain origin-form target.
    Target(BadTarget),
    /// Not `HTTP/1.0` or `HTTP/1.1`.
    Version,
}

impl BadRequestLine {
    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            BadRequestLine::Shape => "bad_request_line",
            BadRequestLine::Method => "bad_method",
            BadRequestLine::Target(t) => t.reason(),
            BadRequestLine::Version => "bad_http_version",
        }
    }
}

/// A request line verge accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// The method, `[A-Z_-]+`.
    pub method: &'a [u8],
    /// The origin-form target (or `*` for `OPTIONS`), as sent.
    pub target: &'a [u8],
    /// The version is HTTP/1.0 (else HTTP/1.1).
    pub http10: bool,
}

/// Whether `method` is a method token verge forwards: uppercase letters, `_` and `-` only, as
/// nginx requires. Every registered method is written so.
pub fn method_allowed(method: &[u8]) -> bool {
    !method.is_empty()
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
}

/// Parse a request line (without its CRLF). Pure.
pub fn parse(line: &[u8]) -> Result<RequestLine<'_>, BadRequestLine> {
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequestLine::Shape);
    };
    if !method_allowed(method) {
        return Err(BadRequestLine::Method);
    }
    check_target(method, target).map_err(BadRequestLine::Target)?;
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(BadRequestLine::Version),
    };
    Ok(RequestLine {
        method,
        target,
        http10,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_request_lines_pass() {
        let line = parse(b"GET /a/b?x=1&y[]=2 HTTP/1.1").expect("plain");
        assert_eq!(
            (line.method, line.target, line.http10),
            (&b"GET"[..], &b"/a/b?x=1&y[]=2"[..], false)
        );
        assert!(parse(b"OPTIONS * HTTP/1.0").expect("star").http10);
        for ok in [
            "PROPFIND / HTTP/1.1",
            "VERSION-CONTROL / HTTP/1.1",
            "M_X /%20 HTTP/1.1",
        ] {
            assert!(parse(ok.as_bytes()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let target = |t| BadRequestLine::Target(t);
        for (line, want) in [
            ("GET /a b HTTP/1.1", BadRequestLine::Shape),
            ("GET  / HTTP/1.1", BadRequestLine::Shape),
            ("GET /\tHTTP/1.1", BadRequestLine::Shape),
            ("GET / HTTP/1.1 ", BadRequestLine::Shape),
            ("GET /", BadRequestLine::Shape),
            ("gET / HTTP/1.1", BadRequestLine::Method),
            ("get / HTTP/1.1", BadRequestLine::Method),
            ("G3T / HTTP/1.1", BadRequestLine::Method),
            (" / HTTP/1.1", BadRequestLine::Method),
            ("GET !foo HTTP/1.1", target(BadTarget::NotOriginForm)),
            ("GET http://a/ HTTP/1.1", target(BadTarget::NotOriginForm)),
            ("CONNECT a:443 HTTP/1.1", target(BadTarget::NotOriginForm)),
            ("GET * HTTP/1.1", target(BadTarget::NotOriginForm)),
            ("options * HTTP/1.1", BadRequestLine::Method),
            ("GET /a#b HTTP/1.1", target(BadTarget::BadByte)),
            ("GET /caf\u{e9} HTTP/1.1", target(BadTarget::BadByte)),
            ("GET /a/../b HTTP/1.1", target(BadTarget::DotSegment)),
            ("GET / HTTP/1.2", BadRequestLine::Version),
            ("GET / HTTP/2.0", BadRequestLine::Version),
            ("GET / http/1.1", BadRequestLine::Version),
        ] {
            assert_eq!(parse(line.as_bytes()), Err(want), "{line:?}");
        }
    }
}
