//! Content-coding decisions for route compression, as pure functions: what a client's
//! `Accept-Encoding` accepts, whether a response from the origin is compressed before it is
//! stored, whether a stored response is decoded for a client, and the header changes each
//! brings. `compression.rs` applies them in Pingora's phases.
//!
//! One encoding is stored per object: fills ask the origin for [`UPSTREAM_ACCEPT_ENCODING`]
//! whatever the client sent, so the stored response does not depend on the client's
//! `Accept-Encoding`, and the cache key does not vary on it.

use crate::config::{Coding, CompressionSpec};
use http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::StatusCode;
use pingora_error::Result;
use pingora_http::ResponseHeader;

/// What a fill asks the origin for: every coding verge can decode.
pub const UPSTREAM_ACCEPT_ENCODING: &str = "br, gzip";

/// The codings a request's `Accept-Encoding` accepts (RFC 9110 §12.5.3), read once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AcceptEncoding {
    /// `(coding, weight)` for `br` and `gzip` (`x-gzip`) when named.
    named: Vec<(Coding, f32)>,
    /// The weight of `*`, when present.
    any: Option<f32>,
}

impl AcceptEncoding {
    /// Read every `Accept-Encoding` line of a request (their values' bytes). A request without
    /// one accepts no coding here (RFC 9110 would allow any; like nginx, verge sends such
    /// clients identity, which every client reads).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> AcceptEncoding {
        let mut out = AcceptEncoding::default();
        for member in lines
            .into_iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
        {
            let mut parts = member.split(';');
            let name = parts.next().unwrap_or_default().trim();
            if name.is_empty() {
                continue;
            }
            let mut weight = Some(1.0);
            for p in parts {
                let p = p.trim();
                let Some(q) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) else {
                    continue;
                };
                weight = parse_weight(q.trim());
            }
            // a member with an unreadable weight is ignored
            let Some(w) = weight else { continue };
            if name == "*" {
                out.any = Some(w);
            } else if let Some(c) = Coding::from_token(name) {
                out.named.push((c, w));
            }
        }
        out
    }

    /// Whether `coding` is acceptable: named with a weight above 0, or, when not named, `*`
    /// with a weight above 0.
    pub fn accepts(&self, coding: Coding) -> bool {
        match self.named.iter().find(|(c, _)| *c == coding) {
            Some((_, w)) => *w > 0.0,
            None => self.any.is_some_and(|w| w > 0.0),
        }
    }
}

/// A weight (`qvalue`, RFC 9110 §12.4.2): `0` to `1` with at most three decimals.
fn parse_weight(text: &str) -> Option<f32> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !matches!(int, "0" | "1") || frac.len() > 3 || !digits(frac) {
        return None;
    }
    let w: f32 = text.parse().ok()?;
    (w <= 1.0).then_some(w)
}

/// The single content coding a response carries, read from `Content-Encoding`: `None` for
/// none (or `identity`), `Some(Err(()))` for one verge cannot decode (another coding, or
/// several).
pub fn content_coding(resp: &ResponseHeader) -> Option<Result<Coding, ()>> {
    let mut codings = resp
        .headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    let first = codings.next()?;
    if codings.next().is_some() {
        return Some(Err(()));
    }
    Some(Coding::from_token(first).ok_or(()))
}

/// Whether the response says `Cache-Control: no-transform` (RFC 9111 §5.2.2.6): no proxy
/// changes its content, so verge neither compresses nor decodes it.
pub fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            d.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("no-transform"))
        })
}

/// Whether a response of this status can carry a body verge may compress (not `1xx`, `204`,
/// `205`, `206` or `304`).
fn has_whole_body(status: StatusCode) -> bool {
    !status.is_informational() && !matches!(status.as_u16(), 204 | 205 | 206 | 304)
}

/// What happens to an origin's response before it is stored (or streamed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// It goes on as the origin sent it.
    AsSent,
    /// Its body is compressed with this coding.
    Compress(Coding),
}

/// Whether an origin's response is compressed: the origin was not asked with HEAD
/// (`head_request`; a fill behind a client's HEAD asks with GET), the status has a whole body, there is no `Content-Encoding` or `Content-Range`, no
/// `no-transform`, a `Content-Type` in the route's types, and a `Content-Length` (when
/// announced) of at least `min_size`. A body without `Content-Length` is compressed: a
/// streamed body is seldom tiny, and its size is only known at its end.
pub fn fill_decision(spec: &CompressionSpec, head_request: bool, resp: &ResponseHeader) -> Fill {
    let h = &resp.headers;
    let typed = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| spec.compresses_type(t));
    let big_enough = match h.get(CONTENT_LENGTH) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= spec.min_size && n > 0),
    };
    let compress = !head_request
        && has_whole_body(resp.status)
        && content_coding(resp).is_none()
        && !h.contains_key(CONTENT_RANGE)
        && typed
        && big_enough
        && !no_transform(resp);
    if compress {
        Fill::Compress(spec.coding)
    } else {
        Fill::AsSent
    }
}

/// The head of a response whose body verge compresses with `coding` (before it is stored):
/// the coding is named, the length (unknown until the end) and ranges go, the validator is
/// weakened, and `Vary: Accept-Encoding` says clients get it by their `Accept-Encoding`.
pub fn compressed_head(resp: &mut ResponseHeader, coding: Coding) -> Result<()> {
    resp.insert_header(CONTENT_ENCODING, coding.token())?;
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    resp.remove_header("content-md5");
    weaken_etag(resp)?;
    add_vary_accept_encoding(resp)
}

/// Mark a stored response that carries a content coding with `Vary: Accept-Encoding`, since
/// what a client gets of it depends on its `Accept-Encoding`. The hit lane serves such a
/// response only as stored, to a client that accepts its coding; the phases decode it for
/// the others.
pub fn add_vary_accept_encoding(resp: &mut ResponseHeader) -> Result<()> {
    let present = resp
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| {
            let n = n.trim();
            n == "*" || n.eq_ignore_ascii_case("accept-encoding")
        });
    if !present {
        resp.append_header(VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// Weaken a strong `ETag` (`"x"` becomes `W/"x"`): the bytes verge sends are not the origin's
/// (RFC 9110 §8.8.1). An `ETag` that is not a quoted string is removed.
fn weaken_etag(resp: &mut ResponseHeader) -> Result<()> {
    let Some(tag) = resp.headers.get(ETAG).map(|v| v.as_bytes().to_vec()) else {
        return Ok(());
    };
    if tag.starts_with(b"W/") {
        return Ok(());
    }
    if !tag.starts_with(b"\"") {
        resp.remove_header(&ETAG);
        return Ok(());
    }
    let weak = [b"W/".as_slice(), &tag].concat();
    match HeaderValue::from_bytes(&weak) {
        Ok(v) => resp.insert_header(ETAG, v),
        Err(_) => {
            resp.remove_header(&ETAG);
            Ok(())
        }
    }
}

/// How a response (stored or streaming in) goes to one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// As it is: it has no coding, the client accepts its coding, or verge cannot (or may
    /// not: `no-transform`) decode it.
    AsStored,
    /// Decoded from this coding, for a client that does not accept it.
    Decode(Coding),
}

/// How a response with this head goes to a client with this `Accept-Encoding`. A `206` from
/// the origin (a part of a coded body cannot be decoded alone) goes as it is.
pub fn serve_decision(accept: &AcceptEncoding, resp: &ResponseHeader) -> Serve {
    if resp.status == StatusCode::PARTIAL_CONTENT {
        return Serve::AsStored;
    }
    match content_coding(resp) {
        Some(Ok(c)) if !accept.accepts(c) && !no_transform(resp) => Serve::Decode(c),
        _ => Serve::AsStored,
    }
}

/// The head of a response verge decodes for the client: no coding, no length (known only
/// once decoded) but chunked framing, no ranges, a weak validator. `Vary` stays.
pub fn decoded_head(resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&CONTENT_ENCODING);
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    if resp.status != StatusCode::NOT_MODIFIED {
        resp.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    weaken_etag(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MediaRange;

    fn accept(value: &str) -> AcceptEncoding {
        AcceptEncoding::parse([value.as_bytes()])
    }

    fn resp(fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).expect("head");
        for (k, v) in fields {
            r.append_header(k.to_string(), *v).expect("field");
        }
        r
    }

    #[test]
    fn accept_encoding_reads_weights_and_the_wildcard() {
        let a = accept("gzip, br;q=0.5");
        assert!(a.accepts(Coding::Gzip) && a.accepts(Coding::Br));
        let a = accept("br;q=0, gzip");
        assert!(!a.accepts(Coding::Br) && a.accepts(Coding::Gzip));
        let a = accept("*");
        assert!(a.accepts(Coding::Br) && a.accepts(Coding::Gzip));
        let a = accept("*;q=0.1, br;q=0");
        assert!(!a.accepts(Coding::Br) && a.accepts(Coding::Gzip));
        let a = accept("*;q=0");
        assert!(!a.accepts(Coding::Br) && !a.accepts(Coding::Gzip));
        let a = accept("identity, deflate, zstd");
        assert!(!a.accepts(Coding::Br) && !a.accepts(Coding::Gzip));
        let a = accept("X-GZIP ; Q=1.000, BR;q=0.000");
        assert!(a.accepts(Coding::Gzip) && !a.accepts(Coding::Br));
        // an unreadable weight drops the member
        let a = accept("br;q=2, gzip;q=abc, *;q=0.5.1");
        assert_eq!(a, AcceptEncoding::default());
        // no header: identity only
        let none = AcceptEncoding::parse(std::iter::empty());
        assert!(!none.accepts(Coding::Br) && !none.accepts(Coding::Gzip));
        // several lines are one list
        let a = AcceptEncoding::parse([b"gzip;q=0".as_slice(), b"br"]);
        assert!(a.accepts(Coding::Br) && !a.accepts(Coding::Gzip));
    }

    #[test]
    fn a_response_is_compressed_only_when_every_condition_holds() {
        let spec = CompressionSpec::default();
        let text = [
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "5000"),
        ];
        assert_eq!(
            fill_decision(&spec, false, &resp(&text)),
            Fill::Compress(Coding::Br)
        );
        // no length announced: compressed
        let streamed = resp(&[("content-type", "application/json")]);
        assert_eq!(
            fill_decision(&spec, false, &streamed),
            Fill::Compress(Coding::Br)
        );
        let refused: [&[(&str, &str)]; 8] = [
            &[("content-type", "image/png"), ("content-length", "5000")],
            &[("content-type", "text/html"), ("content-length", "1023")],
            &[("content-type", "text/html"), ("content-length", "0")],
            &[("content-type", "text/html"), ("content-encoding", "gzip")],
            &[("content-type", "text/html"), ("content-encoding", "zstd")],
            &[
                ("content-type", "text/html"),
                ("cache-control", "max-age=60, No-Transform"),
            ],
            &[
                ("content-type", "text/html"),
                ("content-range", "bytes 0-1/2"),
            ],
            &[("content-length", "5000")],
        ];
        for fields in refused {
            assert_eq!(
                fill_decision(&spec, false, &resp(fields)),
                Fill::AsSent,
                "{fields:?}"
            );
        }
        assert_eq!(
            fill_decision(&spec, true, &resp(&text)),
            Fill::AsSent,
            "HEAD"
        );
        for status in [204, 206, 304] {
            let mut r = resp(&text);
            r.set_status(status).expect("status");
            assert_eq!(fill_decision(&spec, false, &r), Fill::AsSent, "{status}");
        }
        let mut r = resp(&text);
        r.set_status(404).expect("status");
        assert_eq!(fill_decision(&spec, false, &r), Fill::Compress(Coding::Br));
        // identity is no coding
        let identity = resp(&[
            ("content-type", "text/css"),
            ("content-encoding", "identity"),
        ]);
        assert_eq!(
            fill_decision(&spec, false, &identity),
            Fill::Compress(Coding::Br)
        );
        // the route's own types, coding and size
        let custom = CompressionSpec {
            coding: Coding::Gzip,
            level: 1,
            min_size: 10,
            types: vec![MediaRange::AnySubtype("image".into())],
        };
        let png = resp(&[("content-type", "image/png"), ("content-length", "10")]);
        assert_eq!(
            fill_decision(&custom, false, &png),
            Fill::Compress(Coding::Gzip)
        );
        assert_eq!(fill_decision(&custom, false, &resp(&text)), Fill::AsSent);
    }

    #[test]
    fn a_compressed_head_names_its_coding_and_varies() {
        let mut r = resp(&[
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("vary", "Accept-Language"),
        ]);
        compressed_head(&mut r, Coding::Br).expect("head");
        let h = &r.headers;
        assert_eq!(h.get("content-encoding").expect("ce"), "br");
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        assert_eq!(h.get("etag").expect("etag"), "W/\"v1\"");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Language", "Accept-Encoding"]);
        // once is enough; weak stays weak; a malformed tag goes
        let mut r = resp(&[("vary", "accept-encoding"), ("etag", "W/\"x\"")]);
        compressed_head(&mut r, Coding::Gzip).expect("head");
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
        assert_eq!(r.headers.get("etag").expect("etag"), "W/\"x\"");
        let mut r = resp(&[("etag", "bare")]);
        compressed_head(&mut r, Coding::Gzip).expect("head");
        assert!(r.headers.get("etag").is_none());
    }

    #[test]
    fn a_stored_coding_is_decoded_only_for_clients_that_do_not_accept_it() {
        let br = resp(&[("content-encoding", "br"), ("content-length", "10")]);
        assert_eq!(serve_decision(&accept("br"), &br), Serve::AsStored);
        assert_eq!(
            serve_decision(&accept("gzip"), &br),
            Serve::Decode(Coding::Br)
        );
        assert_eq!(
            serve_decision(&accept("br;q=0, *"), &br),
            Serve::Decode(Coding::Br)
        );
        let none = AcceptEncoding::default();
        assert_eq!(serve_decision(&none, &br), Serve::Decode(Coding::Br));
        let gz = resp(&[("content-encoding", "GZIP")]);
        assert_eq!(serve_decision(&accept("gzip, br"), &gz), Serve::AsStored);
        assert_eq!(serve_decision(&none, &gz), Serve::Decode(Coding::Gzip));
        // what verge cannot or may not undo goes as it is
        for fields in [
            &[("content-encoding", "zstd")][..],
            &[("content-encoding", "gzip, br")],
            &[
                ("content-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
            &[("content-type", "text/plain")],
        ] {
            assert_eq!(
                serve_decision(&none, &resp(fields)),
                Serve::AsStored,
                "{fields:?}"
            );
        }
        let mut part = resp(&[
            ("content-encoding", "gzip"),
            ("content-range", "bytes 0-9/99"),
        ]);
        part.set_status(206).expect("status");
        assert_eq!(serve_decision(&none, &part), Serve::AsStored);
        let mut r = resp(&[
            ("content-encoding", "br"),
            ("content-length", "10"),
            ("etag", "\"v1\""),
            ("vary", "Accept-Encoding"),
        ]);
        decoded_head(&mut r).expect("head");
        let h = &r.headers;
        assert!(h.get("content-encoding").is_none() && h.get("content-length").is_none());
        assert_eq!(h.get("transfer-encoding").expect("te"), "chunked");
        assert_eq!(h.get("etag").expect("etag"), "W/\"v1\"");
        assert_eq!(h.get("vary").expect("vary"), "Accept-Encoding");
    }
}
