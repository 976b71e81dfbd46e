//! Header edits on the way upstream and back: forwarding headers, the canonical Host, route
//! header ops (values with request variables), prefix strip.

use super::context::RequestCtx;
use crate::config::{HeaderOps, HeaderTemplate, ValuePart};
use crate::http_syntax::path_and_query;
use crate::snapshot::Route;
use http::header::{HeaderName, HeaderValue, HOST, VIA as VIA_HEADER};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use std::io::Write;
use std::net::IpAddr;

/// What verge adds to `Via`.
pub const VIA: &str = "1.1 verge";

/// Client-sent fields that could steer the origin or poison what it answers, besides every
/// `X-Forwarded-*` field ([`FORWARDED_PREFIX`]). verge drops them and writes its own forwarding
/// fields from what it saw itself.
pub const UNTRUSTED_REQUEST_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Every client field whose name starts with this is dropped, whatever comes after it
/// (`X-Forwarded-Scheme`, `X-Forwarded-Server`, …): origins and frameworks read many of them.
pub const FORWARDED_PREFIX: &str = "x-forwarded-";

/// Whether verge drops a client field named `name` (lowercase, as `http` stores names) before
/// the origin sees it: a forwarding or override field, or a name with `_`. Many origins (CGI,
/// PHP, WSGI, Rack) read `_` and `-` alike, so `Transfer_Encoding` or `X_Forwarded_For` could
/// reach them as the field verge checked or wrote itself; nginx drops such names too.
pub fn dropped_request_field(name: &str) -> bool {
    name.starts_with(FORWARDED_PREFIX)
        || name.contains('_')
        || UNTRUSTED_REQUEST_HEADERS.contains(&name)
}

pub use crate::config::ForwardingTrust;

/// Replace client-sent forwarding fields with verge's own view of the connection, except the
/// `trusted` ones a trusted hop sent: those stay, and a trusted `X-Forwarded-For` gets the
/// client's address appended. Underscore names go too ([`dropped_request_field`]).
pub fn set_forwarding_headers(
    req: &mut RequestHeader,
    client_ip: Option<IpAddr>,
    scheme: &str,
    host: &str,
    trusted: &[HeaderName],
) -> Result<()> {
    let dropped: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| dropped_request_field(name.as_str()) && !trusted.contains(name))
        .cloned()
        .collect();
    for name in &dropped {
        req.remove_header(name);
    }
    // what a trusted hop set is kept; verge's own value otherwise
    let kept = |req: &RequestHeader, name: &HeaderName| {
        trusted.contains(name) && req.headers.contains_key(name)
    };
    if let Some(ip) = client_ip {
        let address = AddressText::of(ip)?;
        let mut chain = Vec::new();
        if kept(req, &X_FORWARDED_FOR) {
            for (i, hop) in req.headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
                if i > 0 {
                    chain.extend_from_slice(b", ");
                }
                chain.extend_from_slice(hop.as_bytes());
            }
        }
        if chain.is_empty() {
            // the usual case: one copy of the address, the size it is
            let value = HeaderValue::from_bytes(address.as_bytes())
                .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?;
            req.insert_header("x-forwarded-for", value)?;
        } else {
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(address.as_bytes());
            req.insert_header("x-forwarded-for", chain)?;
        }
    }
    if !kept(req, &X_FORWARDED_PROTO) {
        match scheme {
            // the usual two without copying them
            "https" => req.insert_header("x-forwarded-proto", HeaderValue::from_static("https"))?,
            "http" => req.insert_header("x-forwarded-proto", HeaderValue::from_static("http"))?,
            other => req.insert_header("x-forwarded-proto", other)?,
        }
    }
    if !host.is_empty() && !kept(req, &X_FORWARDED_HOST) {
        req.insert_header("x-forwarded-host", host)?;
    }
    // named by a static string: a `HeaderName` would have its name copied for the case map
    match req.headers.get(VIA_HEADER).map(|v| v.as_bytes()) {
        Some(existing) if !existing.is_empty() => {
            let via = append_via(Some(existing));
            via.map(|via| req.insert_header("via", via)).transpose()?;
        }
        // the usual case, without copying the value
        _ => req.insert_header("via", HeaderValue::from_static(VIA))?,
    }
    Ok(())
}

/// A client address as text, as `Display` writes it, kept on the stack: an IPv4 address is
/// written digit by digit, without the formatting machinery, which cost more than the rest of
/// its `X-Forwarded-For`.
struct AddressText {
    bytes: [u8; 48],
    len: usize,
}

impl AddressText {
    fn of(ip: IpAddr) -> Result<Self> {
        let mut text = AddressText {
            bytes: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                // at most 45 bytes (`ffff:…:255.255.255.255`)
                let mut rest = &mut text.bytes[..];
                write!(rest, "{v6}")
                    .map_err(|e| Error::because(ErrorType::InternalError, "x-forwarded-for", e))?;
                text.len = 48 - rest.len();
            }
        }
        Ok(text)
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The `Via` value after verge's hop is appended to an existing one.
fn append_via(existing: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut v = match existing {
        Some(e) if !e.is_empty() => {
            let mut v = e.to_vec();
            v.extend_from_slice(b", ");
            v
        }
        _ => Vec::new(),
    };
    v.extend_from_slice(VIA.as_bytes());
    Some(v)
}

/// The request values a route's header values may name.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderVars<'a> {
    /// `${client_ip}`: the address the route's edge rules read (`server.client_ip`).
    pub client_ip: Option<IpAddr>,
    /// `${request_id}`.
    pub request_id: Option<&'a str>,
    /// `${route}`.
    pub route: &'a str,
    /// `${scheme}`.
    pub scheme: &'a str,
    /// `${host}`: canonical.
    pub host: &'a str,
}

/// A header value with the request's values in place of its variables (an absent one is
/// empty). `None`: the result is not a valid field value. Pure.
pub fn fill(template: &HeaderTemplate, vars: &HeaderVars<'_>) -> Option<HeaderValue> {
    let parts = match template {
        HeaderTemplate::Fixed(value) => return Some(value.clone()),
        HeaderTemplate::Parts(parts) => parts,
    };
    let mut out = String::with_capacity(64);
    for part in parts {
        match part {
            ValuePart::Literal(text) => out.push_str(text),
            ValuePart::ClientIp => {
                if let Some(ip) = vars.client_ip {
                    out.push_str(&ip.to_string());
                }
            }
            ValuePart::RequestId => out.push_str(vars.request_id.unwrap_or("")),
            ValuePart::Route => out.push_str(vars.route),
            ValuePart::Scheme => out.push_str(vars.scheme),
            ValuePart::Host => out.push_str(vars.host),
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// Apply a route's request header edits (removals first, then sets).
pub fn apply_request_ops(
    req: &mut RequestHeader,
    ops: &HeaderOps,
    vars: &HeaderVars<'_>,
) -> Result<()> {
    for name in &ops.remove {
        req.remove_header(name);
    }
    for (name, template) in &ops.set {
        if let Some(value) = fill(template, vars) {
            req.insert_header(name.clone(), value)?;
        }
    }
    Ok(())
}

/// Apply a route's response header edits (removals first, then sets).
pub fn apply_response_ops(
    resp: &mut ResponseHeader,
    ops: &HeaderOps,
    vars: &HeaderVars<'_>,
) -> Result<()> {
    for name in &ops.remove {
        resp.remove_header(name);
    }
    for (name, template) in &ops.set {
        if let Some(value) = fill(template, vars) {
            resp.insert_header(name.clone(), value)?;
        }
    }
    Ok(())
}

/// Remove from an upstream response the fields its `Connection` header lists: they were for
/// the hop between verge and the origin, not for the client or the cache.
pub fn strip_connection_listed(resp: &mut ResponseHeader) {
    for name in crate::http_syntax::fields::connection_tokens(&resp.headers) {
        resp.remove_header(name.as_str());
    }
}

/// `path_and_query` without the route's `prefix` (always starting with `/`).
pub fn strip_path_prefix(path_and_query: &str, prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let rest = path_and_query
        .strip_prefix(prefix)
        .unwrap_or(path_and_query);
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

/// The fields of `sent` whose name `kept` lacks altogether, in order (every value of each).
pub fn missing_from(
    sent: &http::HeaderMap,
    kept: &http::HeaderMap,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    sent.iter()
        .filter(|(name, _)| !kept.contains_key(*name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Add back `fields` whose name `resp` does not carry (a name it has is left as it is).
pub fn restore_fields(
    resp: &mut ResponseHeader,
    fields: Vec<(http::HeaderName, http::HeaderValue)>,
) -> Result<()> {
    let absent: Vec<_> = fields
        .into_iter()
        .filter(|(name, _)| !resp.headers.contains_key(name))
        .collect();
    for (name, value) in absent {
        resp.append_header(name, value)?;
    }
    Ok(())
}

/// `upstream_request_filter`: what verge writes into the forwarded request before user
/// filters see it: the Host the router and the cache key used (canonical: lowercase, no port,
/// no trailing dot) or the route's `rewrite.host`, the rewritten path, forwarding fields from what verge saw (`trusted`: those a trusted hop may
/// set), the route's prefix strip and header edits, and an explicit empty body where a GET/HEAD
/// body is dropped.
pub fn prepare_upstream(
    upstream: &mut RequestHeader,
    route: &Route,
    ctx: &RequestCtx,
    client: Option<IpAddr>,
    vars: &HeaderVars<'_>,
    trusted: &[HeaderName],
) -> Result<()> {
    let scheme = vars.scheme;
    match &route.spec.edge.rewrite.host {
        Some(host) => upstream.insert_header(HOST, host)?,
        None if !ctx.host.is_empty() => upstream.insert_header(HOST, &ctx.host)?,
        None => {}
    }
    set_forwarding_headers(upstream, client, scheme, &ctx.host, trusted)?;
    if let Some(target) = &ctx.rewritten {
        let uri = http::Uri::try_from(target.as_str())
            .map_err(|e| Error::because(ErrorType::InternalError, "rewrite path", e))?;
        upstream.set_uri(uri);
    }
    if route.spec.strip_prefix {
        let new = strip_path_prefix(path_and_query(&upstream.uri), &route.spec.path_prefix);
        let uri = http::Uri::try_from(new)
            .map_err(|e| Error::because(ErrorType::InternalError, "rewrite path", e))?;
        upstream.set_uri(uri);
    }
    apply_request_ops(upstream, &route.spec.request_headers, vars)?;
    body_framing(upstream, ctx)
}

/// A request body discarded as it arrives (`drop_body`) is announced upstream as an explicit
/// empty length.
pub fn body_framing(upstream: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    if ctx.drop_body {
        upstream.remove_header(&http::header::TRANSFER_ENCODING);
        upstream.insert_header(http::header::CONTENT_LENGTH, "0")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;

    #[test]
    fn fields_left_out_of_the_stored_head_are_given_back_once() {
        let mut sent = ResponseHeader::build(200, None).expect("resp");
        for (n, v) in [("age", "30"), ("a", "1"), ("a", "2"), ("etag", "\"x\"")] {
            sent.append_header(n, v).expect("h");
        }
        let mut stored = ResponseHeader::build(200, None).expect("resp");
        stored.append_header("etag", "\"x\"").expect("h");
        let missing = missing_from(&sent.headers, &stored.headers);
        assert_eq!(missing.len(), 3);
        stored.append_header("age", "5").expect("h");
        restore_fields(&mut stored, missing).expect("restore");
        let values = |n: &str| -> Vec<&str> {
            stored
                .headers
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(values("a"), ["1", "2"]);
        assert_eq!(values("age"), ["5"], "a field the head has is left alone");
        assert_eq!(values("etag"), ["\"x\""]);
    }

    #[test]
    fn forwarding_headers_replace_client_copies() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("x-forwarded-for", "6.6.6.6").expect("h");
        req.insert_header("x-forwarded-host", "evil.com")
            .expect("h");
        req.insert_header("x-original-url", "/admin").expect("h");
        req.insert_header("via", "1.1 cdn").expect("h");
        req.insert_header("x-forwarded-scheme", "evil").expect("h");
        req.insert_header("X-Forwarded-Server", "evil").expect("h");
        req.insert_header("x-forwarded-anything-else", "evil")
            .expect("h");
        for name in [
            "transfer_encoding",
            "content_length",
            "x_forwarded_for",
            "x_a",
        ] {
            req.insert_header(name, "evil").expect("h");
        }
        req.insert_header("x-kept", "1").expect("h");
        set_forwarding_headers(
            &mut req,
            Some("10.0.0.1".parse().expect("ip")),
            "https",
            "a.com",
            &[],
        )
        .expect("ok");
        for (name, value) in req.headers.iter() {
            assert_ne!(value, "evil", "{name} kept");
        }
        assert!(req.headers.contains_key("x-kept"));
        let get = |n: &str| {
            req.headers
                .get(n)
                .map(|v| v.to_str().unwrap_or("?").to_string())
        };
        assert_eq!(get("x-forwarded-for").as_deref(), Some("10.0.0.1"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(get("x-forwarded-host").as_deref(), Some("a.com"));
        assert_eq!(get("x-original-url"), None);
        assert_eq!(get("via").as_deref(), Some("1.1 cdn, 1.1 verge"));
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    /// `set_forwarding_headers` as it was before the cuts: `Via` named by its `HeaderName`,
    /// the address formatted by `Display` into a 48-byte buffer.
    fn set_forwarding_headers_before(
        req: &mut RequestHeader,
        client_ip: Option<IpAddr>,
        scheme: &str,
        host: &str,
        trusted: &[HeaderName],
    ) -> Result<()> {
        let dropped: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|name| dropped_request_field(name.as_str()) && !trusted.contains(name))
            .cloned()
            .collect();
        for name in &dropped {
            req.remove_header(name);
        }
        let kept = |req: &RequestHeader, name: &HeaderName| {
            trusted.contains(name) && req.headers.contains_key(name)
        };
        if let Some(ip) = client_ip {
            let mut value = Vec::with_capacity(48);
            if kept(req, &X_FORWARDED_FOR) {
                for (i, hop) in req.headers.get_all(&X_FORWARDED_FOR).iter().enumerate() {
                    if i > 0 {
                        value.extend_from_slice(b", ");
                    }
                    value.extend_from_slice(hop.as_bytes());
                }
            }
            if !value.is_empty() {
                value.extend_from_slice(b", ");
            }
            write!(value, "{ip}").expect("write");
            req.insert_header("x-forwarded-for", value)?;
        }
        if !kept(req, &X_FORWARDED_PROTO) {
            match scheme {
                "https" => {
                    req.insert_header("x-forwarded-proto", HeaderValue::from_static("https"))?
                }
                "http" => {
                    req.insert_header("x-forwarded-proto", HeaderValue::from_static("http"))?
                }
                other => req.insert_header("x-forwarded-proto", other)?,
            }
        }
        if !host.is_empty() && !kept(req, &X_FORWARDED_HOST) {
            req.insert_header("x-forwarded-host", host)?;
        }
        match req.headers.get(VIA_HEADER).map(|v| v.as_bytes()) {
            Some(existing) if !existing.is_empty() => {
                let via = append_via(Some(existing));
                via.map(|via| req.insert_header(VIA_HEADER, via))
                    .transpose()?;
            }
            _ => req.insert_header(VIA_HEADER, HeaderValue::from_static(VIA))?,
        }
        Ok(())
    }

    /// xorshift64: the draws below repeat run to run.
    fn draw(state: &mut u64, n: usize) -> usize {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state % n as u64) as usize
    }

    #[test]
    fn forwarding_fields_are_what_they_were_before_the_cuts() {
        const NAMES: &[&str] = &[
            "X-Forwarded-For",
            "x-forwarded-for",
            "X-Forwarded-Proto",
            "x-forwarded-host",
            "X-Forwarded-Server",
            "Via",
            "via",
            "VIA",
            "Forwarded",
            "X-Real-IP",
            "x_forwarded_for",
            "Host",
            "Accept",
            "User-Agent",
            "X-Kept",
        ];
        const VALUES: &[&str] = &[
            "",
            "1.1.1.1",
            "2.2.2.2, 3.3.3.3",
            "1.1 cdn",
            "https",
            "a.com",
        ];
        let trusted_sets: [Vec<HeaderName>; 3] = [
            vec![],
            vec![X_FORWARDED_FOR.clone()],
            vec![
                X_FORWARDED_FOR.clone(),
                X_FORWARDED_PROTO.clone(),
                X_FORWARDED_HOST.clone(),
                HeaderName::from_static("x-forwarded-server"),
            ],
        ];
        let mut state = 0x0f0f_2026_u64;
        let mut ips: Vec<Option<IpAddr>> = vec![
            None,
            Some("0.0.0.0".parse().expect("ip")),
            Some("255.255.255.255".parse().expect("ip")),
            Some("::".parse().expect("ip")),
            Some("::ffff:10.0.0.1".parse().expect("ip")),
            Some("2001:db8::1".parse().expect("ip")),
            Some(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                    .parse()
                    .expect("ip"),
            ),
        ];
        for _ in 0..2_000 {
            let v4 =
                std::net::Ipv4Addr::from(u32::try_from(draw(&mut state, 1 << 32)).expect("u32"));
            let octets: [u8; 16] = std::array::from_fn(|_| draw(&mut state, 3) as u8 * 127);
            ips.push(Some(IpAddr::V4(v4)));
            ips.push(Some(IpAddr::V6(std::net::Ipv6Addr::from(octets))));
        }
        for ip in ips.iter().flatten() {
            let text = AddressText::of(*ip).expect("text");
            assert_eq!(text.as_bytes(), ip.to_string().as_bytes());
        }
        for round in 0..20_000 {
            let mut req = if draw(&mut state, 4) == 0 {
                RequestHeader::build_no_case("GET", b"/", None).expect("req")
            } else {
                RequestHeader::build("GET", b"/", Some(draw(&mut state, 4))).expect("req")
            };
            for _ in 0..draw(&mut state, 8) {
                let name = NAMES[draw(&mut state, NAMES.len())];
                let value = VALUES[draw(&mut state, VALUES.len())];
                req.append_header(name.to_string(), value).expect("h");
            }
            let ip = ips[round % ips.len()];
            let scheme = ["http", "https", "ws"][draw(&mut state, 3)];
            let host = ["", "a.com", "b.example:8080"][draw(&mut state, 3)];
            let trusted = &trusted_sets[draw(&mut state, 3)];
            let mut before = req.clone();
            set_forwarding_headers_before(&mut before, ip, scheme, host, trusted).expect("before");
            set_forwarding_headers(&mut req, ip, scheme, host, trusted).expect("now");
            let wire = |r: &RequestHeader| {
                let mut buf = Vec::new();
                r.header_to_h1_wire(&mut buf);
                buf
            };
            assert_eq!(
                String::from_utf8_lossy(&wire(&req)),
                String::from_utf8_lossy(&wire(&before))
            );
            assert_eq!(req.headers, before.headers);
        }
    }

    #[test]
    fn a_trusted_hop_keeps_the_fields_it_may_set() {
        let trust = ForwardingTrust {
            from: vec![IpNet::parse("10.0.0.0/8").expect("net")],
            fields: ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-scheme"]
                .map(HeaderName::from_static)
                .to_vec(),
        };
        let hop: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(trust.fields_for(Some(stranger)).is_empty());
        assert!(trust.fields_for(None).is_empty());
        assert!(ForwardingTrust::default().fields_for(Some(hop)).is_empty());
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.append_header("x-forwarded-for", "1.1.1.1").expect("h");
        req.append_header("x-forwarded-for", "2.2.2.2").expect("h");
        req.insert_header("x-forwarded-proto", "https").expect("h");
        req.insert_header("x-forwarded-scheme", "https").expect("h");
        req.insert_header("x-forwarded-host", "evil.com")
            .expect("h");
        set_forwarding_headers(
            &mut req,
            Some(hop),
            "http",
            "a.com",
            trust.fields_for(Some(hop)),
        )
        .expect("ok");
        let get = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("x-forwarded-for"), Some("1.1.1.1, 2.2.2.2, 10.1.2.3"));
        assert_eq!(get("x-forwarded-proto"), Some("https"));
        assert_eq!(get("x-forwarded-scheme"), Some("https"));
        assert_eq!(get("x-forwarded-host"), Some("a.com"), "not trusted");
        assert_eq!(req.headers.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn fields_listed_in_connection_are_dropped() {
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        resp.append_header("connection", "a, B").expect("h");
        resp.append_header("connection", "close").expect("h");
        for n in ["a", "b", "c", "content-type"] {
            resp.append_header(n, "1").expect("h");
        }
        strip_connection_listed(&mut resp);
        assert!(resp.headers.get("a").is_none() && resp.headers.get("b").is_none());
        assert!(resp.headers.get("c").is_some() && resp.headers.get("content-type").is_some());
    }

    #[test]
    fn header_values_take_the_request_values() {
        let parts = vec![
            ValuePart::Literal("c=".into()),
            ValuePart::ClientIp,
            ValuePart::Literal(" id=".into()),
            ValuePart::RequestId,
            ValuePart::Literal(" ".into()),
            ValuePart::Scheme,
            ValuePart::Literal("://".into()),
            ValuePart::Host,
            ValuePart::Literal("/".into()),
            ValuePart::Route,
        ];
        let vars = HeaderVars {
            client_ip: "2001:db8::1".parse().ok(),
            request_id: Some("r1"),
            route: "site",
            scheme: "https",
            host: "a.com",
        };
        let filled = fill(&HeaderTemplate::Parts(parts.clone()), &vars);
        assert_eq!(
            filled.as_ref().and_then(|v| v.to_str().ok()),
            Some("c=2001:db8::1 id=r1 https://a.com/site")
        );
        let empty = fill(&HeaderTemplate::Parts(parts), &HeaderVars::default());
        assert_eq!(
            empty.as_ref().and_then(|v| v.to_str().ok()),
            Some("c= id= :///"),
            "absent values are empty"
        );
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.insert_header("x-gone", "1").expect("h");
        let ops = HeaderOps {
            set: vec![(
                HeaderName::from_static("x-route"),
                HeaderTemplate::Parts(vec![ValuePart::Route]),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        apply_request_ops(&mut req, &ops, &vars).expect("ops");
        assert_eq!(
            req.headers.get("x-route").map(|v| v.as_bytes()),
            Some(&b"site"[..])
        );
        assert!(req.headers.get("x-gone").is_none());
    }

    #[test]
    fn prefix_strip() {
        assert_eq!(strip_path_prefix("/api/users?x=1", "/api"), "/users?x=1");
        assert_eq!(strip_path_prefix("/api", "/api"), "/");
        assert_eq!(strip_path_prefix("/api?x", "/api"), "/?x");
        assert_eq!(strip_path_prefix("/api/", "/api/"), "/");
        assert_eq!(strip_path_prefix("/other", "/api"), "/other");
    }
}
