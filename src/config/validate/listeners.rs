//! The `listeners` section: addresses, TLS files and per-listener limits (HTTP/1 and HTTP/2).

use super::Errors;
use crate::config::edge::{Alpn, SniCertificate, TlsVersion};
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::units::{ConfDuration, ConfSize};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Parse `ip:port` (or `host:port`, resolved once now) into a socket address.
pub(super) fn parse_listen_addr(path: &str, text: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match resolve_addr(text) {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

pub(super) fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !text.contains(':') {
        return Err(format!("{text:?} is not host:port"));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {text:?}: {e}")),
    }
}

pub(super) fn validate_listeners(
    value: Option<serde_yaml::Value>,
    admin: SocketAddr,
    errs: &mut Errors,
) -> Vec<ListenerSpec> {
    let Some(value) = value else {
        errs.push("listeners", "at least one listener is required");
        return Vec::new();
    };
    let Some(items) = errs.decode::<Vec<serde_yaml::Value>>("listeners", value) else {
        return Vec::new();
    };
    if items.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let mut out = Vec::new();
    let mut seen_addrs = HashSet::new();
    let mut seen_names = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(raw) = errs.decode::<RawListener>(&path, item) else {
            continue;
        };
        let Some(addr) = parse_listen_addr(&format!("{path}.listen"), &raw.listen, errs) else {
            continue;
        };
        if addr == admin {
            errs.push(
                format!("{path}.listen"),
                format!("{addr} is also the admin listener"),
            );
        }
        if !seen_addrs.insert(addr) {
            errs.push(
                format!("{path}.listen"),
                format!("{addr} is used by another listener"),
            );
        }
        let name = raw.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if !seen_names.insert(name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let tls = raw
            .tls
            .as_ref()
            .and_then(|t| validate_listener_tls(&format!("{path}.tls"), t, errs));
        let limits = validate_limits(&format!("{path}.limits"), raw.limits, errs);
        let trusted_forwarding = raw
            .trusted_forwarding
            .map(|t| validate_trusted_forwarding(&format!("{path}.trusted_forwarding"), t, errs))
            .unwrap_or_default();
        let proxy_protocol = raw.proxy_protocol.map(|p| ProxyProtocol {
            from: proxy_sources(&format!("{path}.proxy_protocol.from"), &p.from, errs),
        });
        let error_pages = raw
            .error_pages
            .map(|p| super::error_pages::error_pages(&format!("{path}.error_pages"), p, errs))
            .unwrap_or_default();
        let deny = super::address_blocks(&format!("{path}.deny"), &raw.deny, errs);
        let allow = super::address_blocks(&format!("{path}.allow"), &raw.allow, errs);
        out.push(ListenerSpec {
            name,
            addr,
            h2c: raw.h2c,
            tls,
            limits,
            trusted_forwarding,
            proxy_protocol,
            error_pages,
            deny,
            allow,
        });
    }
    out
}

/// The proxies whose PROXY protocol header a listener reads: at least one address or block.
fn proxy_sources(path: &str, from: &[String], errs: &mut Errors) -> Vec<IpNet> {
    if from.is_empty() {
        errs.push(path, "list the proxies' addresses");
    }
    super::address_blocks(path, from, errs)
}

/// The hops whose forwarding fields a listener keeps: addresses, and the forwarding fields
/// (`forwarded`, `x-forwarded-*`, `x-real-ip`) they may set.
fn validate_trusted_forwarding(
    path: &str,
    raw: RawTrustedForwarding,
    errs: &mut Errors,
) -> ForwardingTrust {
    let mut out = ForwardingTrust::default();
    if raw.from.is_empty() {
        errs.push(format!("{path}.from"), "list the trusted hops' addresses");
    }
    for (i, text) in raw.from.iter().enumerate() {
        match IpNet::parse(text) {
            Ok(n) => out.from.push(n),
            Err(e) => errs.push(format!("{path}.from[{i}]"), e),
        }
    }
    if raw.fields.is_empty() {
        errs.push(format!("{path}.fields"), "list the fields the hops may set");
    }
    for (i, text) in raw.fields.iter().enumerate() {
        let lower = text.trim().to_ascii_lowercase();
        let forwarding =
            lower == "forwarded" || lower == "x-real-ip" || lower.starts_with("x-forwarded-");
        match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(name) if forwarding => out.fields.push(name),
            _ => errs.push(
                format!("{path}.fields[{i}]"),
                format!("{text:?} is not a forwarding field (forwarded, x-forwarded-*, x-real-ip)"),
            ),
        }
    }
    out
}

fn validate_listener_tls(path: &str, raw: &RawListenerTls, errs: &mut Errors) -> Option<TlsSpec> {
    let before = errs.len();
    check_pem(&format!("{path}.cert"), &raw.cert, PemKind::Cert, errs);
    check_pem(&format!("{path}.key"), &raw.key, PemKind::Key, errs);
    let alpn = match (&raw.alpn, raw.h2) {
        (Some(_), Some(_)) => {
            errs.push(format!("{path}.h2"), "give alpn or h2, not both");
            Alpn::default()
        }
        (Some(list), None) => {
            let names: Vec<&str> = list.iter().map(String::as_str).collect();
            match names.as_slice() {
                ["h2", "http/1.1"] => Alpn::H2H1,
                ["http/1.1"] => Alpn::H1,
                ["h2"] => Alpn::H2,
                _ => {
                    errs.push(
                        format!("{path}.alpn"),
                        format!("must be [h2, http/1.1], [http/1.1] or [h2], not {names:?}"),
                    );
                    Alpn::default()
                }
            }
        }
        (None, Some(false)) => Alpn::H1,
        (None, _) => Alpn::H2H1,
    };
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            errs.push(
                format!("{path}.min_version"),
                format!("must be \"1.2\" or \"1.3\", not {other:?}"),
            );
            TlsVersion::V1_2
        }
    };
    let mut certificates = Vec::new();
    let mut named = HashSet::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let at = format!("{path}.certificates[{i}]");
        check_pem(&format!("{at}.cert"), &c.cert, PemKind::Cert, errs);
        check_pem(&format!("{at}.key"), &c.key, PemKind::Key, errs);
        if c.hosts.is_empty() {
            errs.push(format!("{at}.hosts"), "list the server names it is for");
        }
        let mut hosts = Vec::new();
        for (j, h) in c.hosts.iter().enumerate() {
            match sni_host(h) {
                Ok(h) if !named.insert(h.clone()) => errs.push(
                    format!("{at}.hosts[{j}]"),
                    format!("{h:?} is named by another certificate of this listener"),
                ),
                Ok(h) => hosts.push(h),
                Err(e) => errs.push(format!("{at}.hosts[{j}]"), e),
            }
        }
        certificates.push(SniCertificate {
            hosts,
            cert: c.cert.clone().into(),
            key: c.key.clone().into(),
        });
    }
    (errs.len() == before).then(|| TlsSpec {
        cert: raw.cert.clone().into(),
        key: raw.key.clone().into(),
        alpn,
        certificates,
        min_version,
    })
}

/// A server name a certificate is chosen for: a DNS name, or `*.` and one (lowercase). Pure.
fn sni_host(text: &str) -> Result<String, String> {
    let lower = text.trim().to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{text:?} is not a server name (a.example, or *.a.example for one more label)"
        ));
    }
    Ok(lower)
}

enum PemKind {
    Cert,
    Key,
}

/// Pingora's TLS setup panics on unreadable files, so check them here first.
fn check_pem(path: &str, file: &str, kind: PemKind, errs: &mut Errors) -> bool {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => {
            errs.push(path, format!("cannot read {file:?}: {e}"));
            return false;
        }
    };
    let mut reader = std::io::BufReader::new(&data[..]);
    let ok = match kind {
        PemKind::Cert => rustls_pemfile::certs(&mut reader).any(|c| c.is_ok()),
        PemKind::Key => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if !ok {
        let what = match kind {
            PemKind::Cert => "a PEM certificate",
            PemKind::Key => "a PEM private key",
        };
        errs.push(path, format!("{file:?} does not contain {what}"));
    }
    ok
}

fn validate_limits(path: &str, raw: Option<RawLimits>, errs: &mut Errors) -> Limits {
    let d = Limits::default();
    let Some(raw) = raw else { return d };
    let mut size = |key: &str, v: Option<ConfSize>, default: usize| -> usize {
        match v {
            None => default,
            Some(s) if (64..=(1 << 20)).contains(&s.0) => s.0 as usize,
            Some(_) => {
                errs.push(format!("{path}.{key}"), "must be between 64 bytes and 1MiB");
                default
            }
        }
    };
    let max_request_line = size("max_request_line", raw.max_request_line, d.max_request_line);
    let max_header_line = size("max_header_line", raw.max_header_line, d.max_header_line);
    let max_headers_size = size("max_headers_size", raw.max_headers_size, d.max_headers_size);
    let max_headers = match raw.max_headers {
        None => d.max_headers,
        Some(n) if (1..=256).contains(&n) => n,
        Some(_) => {
            errs.push(format!("{path}.max_headers"), "must be between 1 and 256");
            d.max_headers
        }
    };
    let mut positive = |key: &str, v: Option<ConfDuration>, default: Duration| match v {
        None => default,
        Some(x) if !x.0.is_zero() => x.0,
        Some(_) => {
            errs.push(format!("{path}.{key}"), "must be greater than zero");
            default
        }
    };
    let header_timeout = positive("header_timeout", raw.header_timeout, d.header_timeout);
    let keepalive_timeout = positive(
        "keepalive_timeout",
        raw.keepalive_timeout,
        d.keepalive_timeout,
    );
    let body_timeout = positive("body_timeout", raw.body_timeout, d.body_timeout);
    let send_timeout = positive("send_timeout", raw.send_timeout, d.send_timeout);
    let max_body = match raw.max_body {
        None => d.max_body,
        Some(s) if s.0 <= (16u64 << 30) => s.0,
        Some(_) => {
            errs.push(format!("{path}.max_body"), "must be at most 16GiB");
            d.max_body
        }
    };
    let body_min_rate = match raw.body_min_rate {
        None => d.body_min_rate,
        Some(s) if s.0 <= (1 << 30) => s.0,
        Some(_) => {
            errs.push(
                format!("{path}.body_min_rate"),
                "must be at most 1GiB (bytes per second)",
            );
            d.body_min_rate
        }
    };
    let max_connections = match raw.max_connections {
        None => d.max_connections,
        Some(n) if (1..=1_000_000).contains(&n) => n,
        Some(_) => {
            errs.push(
                format!("{path}.max_connections"),
                "must be between 1 and 1000000",
            );
            d.max_connections
        }
    };
    let h2 = validate_h2_limits(&format!("{path}.h2"), raw.h2, errs);
    Limits {
        max_request_line,
        max_header_line,
        max_headers_size,
        max_headers,
        header_timeout,
        keepalive_timeout,
        keepalive_requests: raw.keepalive_requests.unwrap_or(d.keepalive_requests),
        max_body,
        body_timeout,
        body_min_rate,
        send_timeout,
        max_connections,
        h2,
    }
}

fn validate_h2_limits(path: &str, raw: Option<RawH2Limits>, errs: &mut Errors) -> H2Limits {
    let d = H2Limits::default();
    let Some(raw) = raw else { return d };
    let mut within =
        |key: &str, v: Option<u64>, default: u64, range: (u64, u64), unit: &str| match v {
            None => default,
            Some(n) if (range.0..=range.1).contains(&n) => n,
            Some(_) => {
                errs.push(
                    format!("{path}.{key}"),
                    format!("must be between {}{unit} and {}{unit}", range.0, range.1),
                );
                default
            }
        };
    let size = |s: Option<ConfSize>| s.map(|s| s.0);
    let count = |n: Option<usize>| n.map(|n| n as u64);
    let max_concurrent_streams = within(
        "max_concurrent_streams",
        raw.max_concurrent_streams.map(u64::from),
        d.max_concurrent_streams.into(),
        (1, 1000),
        "",
    );
    let max_header_list_size = within(
        "max_header_list_size",
        size(raw.max_header_list_size),
        d.max_header_list_size.into(),
        (1 << 10, 1 << 20),
        " bytes",
    );
    let stream_window = within(
        "stream_window",
        size(raw.stream_window),
        d.stream_window.into(),
        (1 << 10, 16 << 20),
        " bytes",
    );
    // the connection window starts at 65535 and can only be raised
    let connection_window = within(
        "connection_window",
        size(raw.connection_window),
        d.connection_window.into(),
        (64 << 10, 64 << 20),
        " bytes",
    );
    let max_pending_resets = within(
        "max_pending_resets",
        count(raw.max_pending_resets),
        d.max_pending_resets as u64,
        (1, 1000),
        "",
    );
    let max_error_resets = within(
        "max_error_resets",
        count(raw.max_error_resets),
        d.max_error_resets as u64,
        (1, 100_000),
        "",
    );
    let frame_budget = within(
        "frame_budget",
        raw.frame_budget.map(u64::from),
        d.frame_budget.into(),
        (10, 1_000_000),
        "",
    );
    let frame_rate = within(
        "frame_rate",
        raw.frame_rate.map(u64::from),
        d.frame_rate.into(),
        (1, 1_000_000),
        "",
    );
    // every value was range-checked above, so these conversions cannot fail
    let u32_of = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    H2Limits {
        max_concurrent_streams: u32_of(max_concurrent_streams),
        max_header_list_size: u32_of(max_header_list_size),
        stream_window: u32_of(stream_window),
        connection_window: u32_of(connection_window),
        max_pending_resets: usize_of(max_pending_resets),
        max_error_resets: usize_of(max_error_resets),
        frame_budget: u32_of(frame_budget),
        frame_rate: u32_of(frame_rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_certificates_alpn_and_minimum_version_validate_at_their_key_paths() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let good = format!(
            r#"
listeners:
  - listen: 127.0.0.1:8443
    tls:
      cert: {dir}/conf/test-certs/server.crt
      key: {dir}/conf/test-certs/server.key
      alpn: [http/1.1]
      min_version: "1.3"
      certificates:
        - {{hosts: [Second.Test, "*.second.test"], cert: {dir}/conf/test-certs/second.crt, key: {dir}/conf/test-certs/second.key}}
pools: {{p: {{backends: ["127.0.0.1:1"]}}}}
routes: [{{hosts: ["*"], pool: p}}]
"#
        );
        let c = Config::from_yaml_str(&good).expect("valid");
        let tls = c.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.alpn, Alpn::H1);
        assert_eq!(tls.min_version, TlsVersion::V1_3);
        assert_eq!(tls.certificates[0].hosts, ["second.test", "*.second.test"]);
        let bad = format!(
            r#"
listeners:
  - listen: 127.0.0.1:8443
    tls:
      cert: {dir}/conf/test-certs/server.crt
      key: {dir}/conf/test-certs/server.key
      h2: true
      alpn: [spdy]
      min_version: "1.1"
      certificates:
        - {{hosts: [], cert: /nonexistent.crt, key: {dir}/conf/test-certs/second.key}}
        - {{hosts: ["bad name", a.test, a.test], cert: {dir}/conf/test-certs/second.crt, key: {dir}/conf/test-certs/second.key}}
pools: {{p: {{backends: ["127.0.0.1:1"]}}}}
routes: [{{hosts: ["*"], pool: p}}]
"#
        );
        let errs = Config::from_yaml_str(&bad).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].tls.h2",
                "listeners[0].tls.min_version",
                "listeners[0].tls.certificates[0].cert",
                "listeners[0].tls.certificates[0].hosts",
                "listeners[0].tls.certificates[1].hosts[0]",
                "listeners[0].tls.certificates[1].hosts[2]",
            ]
        );
    }

    #[test]
    fn missing_tls_files_are_errors_not_panics() {
        let bad = r#"
listeners:
  - listen: 127.0.0.1:8443
    tls: {cert: /nonexistent/cert.pem, key: /nonexistent/key.pem}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes: [{hosts: ["*"], pool: p}]
"#;
        let errs = Config::from_yaml_str(bad).expect_err("tls").errors;
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].path, "listeners[0].tls.cert");
    }

    #[test]
    fn trusted_forwarding_names_hops_and_forwarding_fields_only() {
        let good = r#"
listeners:
  - listen: 127.0.0.1:8080
    trusted_forwarding: {from: [10.0.0.0/8], fields: [X-Forwarded-For, forwarded]}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes: [{hosts: ["*"], pool: p}]
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        let t = &c.listeners[0].trusted_forwarding;
        assert_eq!(t.fields, ["x-forwarded-for", "forwarded"]);
        assert_eq!(t.fields_for("10.1.2.3".parse().ok()).len(), 2);
        assert!(t.fields_for("192.0.2.1".parse().ok()).is_empty());
        let bad = r#"
listeners:
  - listen: 127.0.0.1:8080
    trusted_forwarding: {from: [nope], fields: [host, "x forwarded"]}
  - listen: 127.0.0.1:8081
    trusted_forwarding: {from: [], fields: []}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes: [{hosts: ["*"], pool: p}]
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].trusted_forwarding.from[0]",
                "listeners[0].trusted_forwarding.fields[0]",
                "listeners[0].trusted_forwarding.fields[1]",
                "listeners[1].trusted_forwarding.from",
                "listeners[1].trusted_forwarding.fields",
            ]
        );
    }

    #[test]
    fn proxy_protocol_names_its_sources() {
        let yaml = |from: &str| {
            format!(
                "listeners:\n  - listen: 127.0.0.1:8080\n    proxy_protocol: {{from: {from}}}\n\
                 pools: {{p: {{backends: [\"127.0.0.1:1\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p}}]\n"
            )
        };
        let c = Config::from_yaml_str(&yaml("[10.0.0.0/8, 192.0.2.1]")).expect("valid");
        let spec = c.listeners[0].proxy_protocol.as_ref().expect("read");
        assert!(spec.trusts("10.9.8.7".parse().expect("ip")));
        assert!(spec.trusts("192.0.2.1".parse().expect("ip")));
        assert!(!spec.trusts("192.0.2.2".parse().expect("ip")));
        for (from, path) in [
            ("[]", "listeners[0].proxy_protocol.from"),
            ("[10.0.0.0/8, nope]", "listeners[0].proxy_protocol.from[1]"),
        ] {
            let errs = Config::from_yaml_str(&yaml(from))
                .expect_err("invalid")
                .errors;
            let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths, [path], "{from}");
        }
    }

    #[test]
    fn h2_limits_validate() {
        let good = r#"
listeners:
  - listen: "127.0.0.1:8080"
  - listen: "127.0.0.1:8081"
    limits: {h2: {max_concurrent_streams: 10, max_header_list_size: 16KiB, stream_window: 1MiB, connection_window: 4MiB, max_pending_resets: 5, max_error_resets: 50}}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes: [{hosts: [a.com], pool: p}]
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        assert_eq!(c.listeners[0].limits.h2, H2Limits::default());
        assert_eq!(
            c.listeners[1].limits.h2,
            H2Limits {
                max_concurrent_streams: 10,
                max_header_list_size: 16 << 10,
                stream_window: 1 << 20,
                connection_window: 4 << 20,
                max_pending_resets: 5,
                max_error_resets: 50,
                ..H2Limits::default()
            }
        );
        let bad = r#"
listeners:
  - listen: "127.0.0.1:8080"
    limits: {h2: {max_concurrent_streams: 0, max_header_list_size: 2MiB, stream_window: 100, connection_window: 1KiB, max_pending_resets: 0, max_error_resets: 0, max_streams: 3}}
  - listen: "127.0.0.1:8081"
    limits: {h2: {max_concurrent_streams: 5000, max_header_list_size: 2MiB, stream_window: 100, connection_window: 1KiB, max_pending_resets: 0, max_error_resets: 0}}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes: [{hosts: [a.com], pool: p}]
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].starts_with("listeners[0]") && text[0].contains("max_streams"),
            "an unknown key: {text:#?}"
        );
        assert!(
            text[0].starts_with("listeners[0].limits.h2: unknown field `max_streams`"),
            "{text:#?}"
        );
        // the unknown key does not hide the errors in the values beside it
        for i in [0, 1] {
            for key in [
                "max_concurrent_streams: must be between 1 and 1000",
                "max_header_list_size: must be between 1024 bytes and 1048576 bytes",
                "stream_window",
                "connection_window",
                "max_pending_resets",
                "max_error_resets",
            ] {
                let p = format!("listeners[{i}].limits.h2.{key}");
                assert!(text.iter().any(|t| t.starts_with(&p)), "{p}: {text:#?}");
            }
        }
        assert_eq!(text.len(), 13, "{text:#?}");
    }

    #[test]
    fn body_pace_send_timeout_and_frame_budget_validate() {
        let yaml = |limits: &str| {
            format!(
                "listeners:\n  - listen: 127.0.0.1:8080\n    limits: {limits}\npools: {{p: {{backends: [\"127.0.0.1:1\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p}}]\n"
            )
        };
        let c = Config::from_yaml_str(&yaml("{}")).expect("defaults");
        assert_eq!(c.listeners[0].limits.body_timeout, Duration::from_secs(15));
        assert_eq!(c.listeners[0].limits.body_min_rate, 512);
        let c =
            Config::from_yaml_str(&yaml("{body_timeout: 3s, body_min_rate: 2KiB}")).expect("valid");
        assert_eq!(c.listeners[0].limits.body_timeout, Duration::from_secs(3));
        assert_eq!(c.listeners[0].limits.body_min_rate, 2048);
        let off = Config::from_yaml_str(&yaml("{body_min_rate: 0}")).expect("valid");
        assert_eq!(off.listeners[0].limits.body_min_rate, 0);
        let c =
            Config::from_yaml_str(&yaml("{h2: {frame_budget: 50, frame_rate: 5}}")).expect("valid");
        assert_eq!(c.listeners[0].limits.h2.frame_budget, 50);
        assert_eq!(c.listeners[0].limits.h2.frame_rate, 5);
        let c = Config::from_yaml_str(&yaml("{send_timeout: 5s}")).expect("valid");
        assert_eq!(c.listeners[0].limits.send_timeout, Duration::from_secs(5));
        let bad = "{body_timeout: 0s, send_timeout: 0s, body_min_rate: 2GiB, h2: {frame_budget: 1, frame_rate: 0}}";
        let errs = Config::from_yaml_str(&yaml(bad))
            .expect_err("invalid")
            .errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].limits.body_timeout",
                "listeners[0].limits.send_timeout",
                "listeners[0].limits.body_min_rate",
                "listeners[0].limits.h2.frame_budget",
                "listeners[0].limits.h2.frame_rate"
            ]
        );
    }
}
