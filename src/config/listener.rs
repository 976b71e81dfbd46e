//! Validated listener types: the address, TLS termination, request-head limits and client
//! timeouts, access rules, error pages and the trusted hops (forwarding fields, the PROXY
//! protocol) in front of a listener.

use super::edge::ErrorPages;
use super::model::{refused_by, IpNet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One client-facing listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Label in metrics and `/status`.
    pub name: String,
    /// The address listened on.
    pub addr: SocketAddr,
    /// Cleartext HTTP/2 (prior knowledge or upgrade) besides HTTP/1.1.
    pub h2c: bool,
    /// TLS termination on this listener.
    pub tls: Option<TlsSpec>,
    /// Request-head limits and client timeouts.
    pub limits: Limits,
    /// The hops in front of this listener whose forwarding fields are kept.
    pub trusted_forwarding: ForwardingTrust,
    /// The PROXY protocol from these sources (`None`: not read).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Pages for verge's own error answers on this listener, by status (a route's come first).
    pub error_pages: ErrorPages,
    /// Client addresses refused with 403 on every request of this listener, before routing
    /// (`deny` wins over `allow`).
    pub deny: Vec<IpNet>,
    /// When not empty: only these client addresses get through this listener.
    pub allow: Vec<IpNet>,
}

impl ListenerSpec {
    /// Whether the listener's `allow`/`deny` refuse this client address.
    pub fn refuses(&self, client: Option<std::net::IpAddr>) -> bool {
        refused_by(&self.deny, &self.allow, client)
    }

    /// Whether the listener has access rules (a hit then needs the full path).
    pub fn has_access_rules(&self) -> bool {
        !self.deny.is_empty() || !self.allow.is_empty()
    }
}

/// Server-side TLS for a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM certificate chain: the default certificate (no SNI, or no other one matches).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The protocols offered through ALPN.
    pub alpn: super::edge::Alpn,
    /// More certificates, each chosen when the client's SNI names one of its hosts.
    pub certificates: Vec<super::edge::SniCertificate>,
    /// The oldest TLS version accepted.
    pub min_version: super::edge::TlsVersion,
}

/// Request-head limits and client timeouts enforced before a request reaches the proxy logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line; longer gets 414.
    pub max_request_line: usize,
    /// Longest single header line; longer gets 431.
    pub max_header_line: usize,
    /// Largest request head in total; larger gets 431.
    pub max_headers_size: usize,
    /// Most header fields in one request; more gets 431.
    pub max_headers: usize,
    /// Time a client has to send a whole request head; slower gets 408 and a close.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: u32,
    /// Largest request body accepted (declared or streamed); larger gets 413.
    pub max_body: u64,
    /// Longest wait for the next byte of a request body; longer gets 408 and a close.
    pub body_timeout: Duration,
    /// Slowest average rate a request body may arrive at, in bytes per second, once
    /// `body_timeout` of grace is used up (0: no minimum); slower gets 408 and a close.
    pub body_min_rate: u64,
    /// Longest an HTTP/1 client may take to accept the next piece of a response; a slower one
    /// is cut off (a fill it started goes on for the others).
    pub send_timeout: Duration,
    /// Open client connections accepted at once; more are answered 503 and closed.
    pub max_connections: u32,
    /// What an HTTP/2 client may use of one connection.
    pub h2: H2Limits,
}

/// HTTP/2 caps per client connection, advertised in SETTINGS and enforced by the h2 codec.
/// Defaults: 100 streams and a 64 KiB header list (Pingora's own, Varnish's 100), a 64 KiB
/// stream and 1 MiB connection window (Envoy's edge guidance), h2's reset budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Requests in flight at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Decoded size of one request's header list (`SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: u32,
    /// Request body bytes a client may send on one stream before verge reads them
    /// (`SETTINGS_INITIAL_WINDOW_SIZE`).
    pub stream_window: u32,
    /// The same for the whole connection.
    pub connection_window: u32,
    /// Streams the client may reset before verge accepted them (Rapid Reset, CVE-2023-44487);
    /// more end the connection.
    pub max_pending_resets: usize,
    /// Streams verge may have to reset for the client's protocol errors (MadeYouReset,
    /// CVE-2025-8671); more end the connection with `ENHANCE_YOUR_CALM`.
    pub max_error_resets: usize,
    /// Frames that carry no request (PRIORITY, SETTINGS, PING, WINDOW_UPDATE, GOAWAY, empty
    /// DATA, unknown types) a connection may send at once; past its budget it gets a GOAWAY
    /// with `ENHANCE_YOUR_CALM`.
    pub frame_budget: u32,
    /// Such frames a connection earns back per second (and two per DATA frame verge sends).
    pub frame_rate: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_concurrent_streams: 100,
            max_header_list_size: 64 << 10,
            stream_window: 64 << 10,
            connection_window: 1 << 20,
            max_pending_resets: 20,
            max_error_resets: 1024,
            frame_budget: 1000,
            frame_rate: 100,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 << 10,
            max_header_line: 8 << 10,
            max_headers_size: 32 << 10,
            max_headers: 100,
            header_timeout: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            max_body: 64 << 20,
            body_timeout: Duration::from_secs(15),
            body_min_rate: 512,
            send_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            h2: H2Limits::default(),
        }
    }
}

/// Client fields a trusted hop in front of verge (a load balancer, a CDN) may set: when a
/// request comes from `from`, its `fields` reach the origin as that hop sent them, and verge
/// appends to a trusted `X-Forwarded-For` instead of replacing it. Empty (the default): no
/// client is trusted. Per listener (`listeners[].trusted_forwarding`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTrust {
    /// The hops' addresses.
    pub from: Vec<IpNet>,
    /// The fields they may set (dropped for everyone else).
    pub fields: Vec<http::HeaderName>,
}

/// `listeners[].proxy_protocol`: connections from these sources start with a PROXY protocol
/// header (version 1 or 2) naming the client they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The proxies' addresses.
    pub from: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Whether a connection from `peer` carries a header.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        self.from.iter().any(|net| net.contains(peer))
    }
}

impl ForwardingTrust {
    /// The fields trusted on a request from `client` (none when it is not a trusted hop).
    pub fn fields_for(&self, client: Option<std::net::IpAddr>) -> &[http::HeaderName] {
        match client {
            Some(ip) if self.from.iter().any(|net| net.contains(ip)) => &self.fields,
            _ => &[],
        }
    }
}
