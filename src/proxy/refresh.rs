//! Background refreshes of stored responses (stale-while-revalidate, early refresh). Pingora runs
//! each one as a subrequest that it rebuilds from the client's request head written as HTTP/1
//! text (`HttpSession::to_h1_raw`), so that head must read as HTTP/1.1: an HTTP/2 head would
//! be written with the version `HTTP/2` and no `Host` (HTTP/2 carries `:authority` instead), the
//! subrequest's HTTP/1 parser refuses it, and the refresh never reaches the origin (its cache
//! lock is dropped unreleased: "Dangling cache lock").
//!
//! Pingora refreshes only entries that are already stale (stale-while-revalidate); an early
//! refresh of a fresh entry (`routes[].cache.early_refresh`) is a subrequest verge spawns
//! itself, carrying an [`EarlyRefreshTicket`].

use super::context::RequestCtx;
use crate::cache::early_refresh::{self, RefreshClaim};
use crate::cache::{rfc9111, CacheEngine};
use crate::metrics::METRICS;
use pingora_cache::key::CacheHashKey;
use pingora_cache::CacheMeta;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::sync::atomic::{AtomicBool, Ordering};

/// What an early-refresh subrequest carries (as its subrequest user context): the claim on its
/// key, released when the subrequest ends however it ends, and whether it has already had the
/// stored entry revalidated (a lock wait makes pingora look the entry up again).
#[derive(Debug)]
pub struct EarlyRefreshTicket {
    _claim: RefreshClaim,
    used: AtomicBool,
}

impl EarlyRefreshTicket {
    /// A ticket holding `claim` until the subrequest carrying it ends.
    pub fn new(claim: RefreshClaim) -> Self {
        EarlyRefreshTicket {
            _claim: claim,
            used: AtomicBool::new(false),
        }
    }

    /// `true` the first time only: this lookup is the one to revalidate.
    pub fn take_turn(&self) -> bool {
        !self.used.swap(true, Ordering::Relaxed)
    }
}

/// Make an HTTP/2 request head one Pingora can rebuild as an HTTP/1.1 request: version
/// HTTP/1.1, and a `Host` from the `:authority` when the client sent none (what an HTTP/2 to
/// HTTP/1.1 gateway must do anyway, RFC 9113 §8.3.1). Returns `true` when the head was
/// HTTP/2 (and changed), so the caller can put the version back afterwards with
/// [`restore_h2_version`]; other versions are left alone.
pub fn h1_head_for_subrequest(req: &mut RequestHeader) -> Result<bool> {
    if req.version != http::Version::HTTP_2 {
        return Ok(false);
    }
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(http::header::HOST, authority)?;
        }
    }
    req.set_version(http::Version::HTTP_11);
    Ok(true)
}

/// Undo the version change of [`h1_head_for_subrequest`] (the `Host` it added stays: it names
/// the same authority).
pub fn restore_h2_version(req: &mut RequestHeader) {
    req.set_version(http::Version::HTTP_2);
}

/// XFetch on a fresh hit (routes with `cache.early_refresh`): maybe start one background
/// refresh of the entry (none when one is already running for its key). The client is answered
/// from the entry either way.
pub fn maybe_refresh_early(
    engine: &CacheEngine,
    session: &mut Session,
    meta: &CacheMeta,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let Some(settings) = ctx
        .route
        .as_ref()
        .and_then(|r| r.spec.cache.as_ref())
        .and_then(|c| c.early_refresh)
    else {
        return Ok(());
    };
    let left = meta
        .fresh_until()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let delta = settings
        .delta
        .or_else(|| rfc9111::fetch_duration(meta))
        .unwrap_or(early_refresh::DEFAULT_DELTA);
    if session.subrequest_spawner.is_none()
        || !early_refresh::should_refresh(left, delta, settings.beta, early_refresh::unit_random())
    {
        return Ok(());
    }
    let key = CacheHashKey::combined_bin(session.cache.cache_key());
    let Some(claim) = engine.refreshing.try_start(key) else {
        return Ok(());
    };
    // the subrequest is rebuilt from this head as HTTP/1 text
    let downgraded = h1_head_for_subrequest(session.req_header_mut())?;
    if let Some(spawner) = session.subrequest_spawner.as_ref() {
        let sub = pingora_proxy::subrequest::Ctx::builder()
            .user_ctx(Box::new(EarlyRefreshTicket::new(claim)))
            .build();
        spawner.spawn_background_subrequest(session.downstream_session.as_ref(), sub);
        ctx.early_refresh = true;
        METRICS
            .cache_early_refreshes
            .with_label_values(&[ctx.route_name()])
            .inc();
    }
    if downgraded {
        restore_h2_version(session.req_header_mut());
    }
    Ok(())
}

/// Whether this request is an early refresh whose stored entry is still to be revalidated
/// (`true` once per refresh).
pub fn early_refresh_turn(session: &Session) -> bool {
    session
        .subrequest_ctx
        .as_ref()
        .and_then(|c| c.user_ctx())
        .and_then(|u| u.downcast_ref::<EarlyRefreshTicket>())
        .is_some_and(|t| t.take_turn())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_request(uri: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("req");
        req.set_uri(http::Uri::try_from(uri).expect("uri"));
        req.set_version(http::Version::HTTP_2);
        req
    }

    /// What Pingora hands the subrequest's HTTP/1 parser.
    fn wire(req: &RequestHeader) -> String {
        let buf =
            pingora_core::protocols::http::v1::client::http_req_header_to_wire(req).expect("wire");
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn an_h2_head_reads_as_http11_with_a_host() {
        let mut req = h2_request("https://example.com:8443/a?b=1");
        req.insert_header("accept", "text/html").expect("h");
        assert!(wire(&req).starts_with("GET /a?b=1 HTTP/2\r\n"));
        assert!(h1_head_for_subrequest(&mut req).expect("ok"));
        let text = wire(&req);
        assert!(text.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{text}");
        assert_eq!(
            req.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"example.com:8443"[..])
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nhost: example.com:8443\r\n"),
            "{text}"
        );
        restore_h2_version(&mut req);
        assert_eq!(req.version, http::Version::HTTP_2);
    }

    #[test]
    fn a_host_the_client_sent_is_kept() {
        let mut req = h2_request("https://example.com/a");
        req.insert_header("host", "example.com").expect("h");
        assert!(h1_head_for_subrequest(&mut req).expect("ok"));
        assert_eq!(req.headers.get_all("host").iter().count(), 1);
    }

    #[test]
    fn an_early_refresh_revalidates_once_and_frees_its_key_when_done() {
        let set: &'static crate::cache::early_refresh::RefreshSet = Box::leak(Box::default());
        let ticket = EarlyRefreshTicket::new(set.try_start([3; 16]).expect("claim"));
        assert!(set.try_start([3; 16]).is_none());
        assert!(ticket.take_turn());
        assert!(!ticket.take_turn(), "a second lookup serves what it finds");
        drop(ticket);
        assert_eq!(set.running(), 0);
    }

    #[test]
    fn http1_heads_are_left_alone() {
        let mut req = RequestHeader::build("GET", b"/a", None).expect("req");
        req.insert_header("host", "a.test").expect("h");
        let before = wire(&req);
        assert!(!h1_head_for_subrequest(&mut req).expect("ok"));
        assert_eq!(wire(&req), before);
    }
}
