//! How the front door's lanes route a plain request, once for both: its canonical host and its
//! route, when the listener lets a lane answer at all.

use super::hit_lane::PlainRequest;
use crate::config::{EdgeRules, LogField, Rewrite};
use crate::http_syntax::host::canonical_host;
use crate::snapshot::{Route, SharedSnapshot, Snapshot};
use std::sync::Arc;

/// A plain request's canonical host and the route the table gives it, with the snapshot that
/// routed it (the lanes decide by it too, without loading it again).
pub struct Routed {
    /// The canonical host (lowercase, no port).
    pub host: String,
    /// The route.
    pub route: Arc<Route>,
    /// The snapshot the route came from.
    pub snapshot: Arc<Snapshot>,
    /// The listener answers verge's own errors with pages of its own (`error_pages`): the pass
    /// lane then leaves failures, and so its requests, to the full path.
    pub listener_pages: bool,
}

/// The routing the lanes of one listener share.
pub struct LaneRoutes {
    snapshot: SharedSnapshot,
    listener: String,
    /// The listener terminates TLS.
    tls: bool,
}

impl LaneRoutes {
    /// Routing for the listener `listener` (terminating TLS or not) serving `snapshot`.
    pub fn new(snapshot: SharedSnapshot, listener: &str, tls: bool) -> Self {
        LaneRoutes {
            snapshot,
            listener: listener.to_string(),
            tls,
        }
    }

    /// The route of `req`, as the full path would pick it. `None` (the full path answers) when
    /// the host is not one the table reads, no route matches, the listener's access rules must
    /// judge the client (they refuse clients of every lane too), or the access log records the
    /// TLS version, which the lanes do not read.
    pub fn route(&self, req: &PlainRequest<'_>) -> Option<Routed> {
        let host = canonical_host(req.host)?;
        let snapshot = self.snapshot.load_full();
        if self.tls && snapshot.logs_field(LogField::TlsVersion) {
            return None;
        }
        let listener = snapshot.config.listener(&self.listener);
        if listener.is_some_and(|l| l.has_access_rules()) {
            return None;
        }
        let listener_pages = listener.is_some_and(|l| !l.error_pages.is_empty());
        let route = snapshot.table.lookup(&host, req.path)?.clone();
        Some(Routed {
            host,
            route,
            snapshot,
            listener_pages,
        })
    }
}

/// Whether a route has no edge rule: every one acts before a lane could answer (a refusal, a
/// rate limit's count, a redirect, a request id on every response, a path rewrite that the key
/// and the origin read), so the full path applies them. Every field is classified here, with no
/// `..`: a new rule does not compile until someone says what the lanes do with it.
pub fn edge_free(edge: &EdgeRules) -> bool {
    let EdgeRules {
        deny,
        allow,
        rate_limit,
        https_redirect,
        redirect,
        request_id,
        rewrite,
    } = edge;
    let Rewrite {
        path,
        host: _, // shapes the forwarded request only (`headers::prepare_upstream`)
    } = rewrite;
    deny.is_empty()
        && allow.is_empty()
        && rate_limit.is_none()
        && !https_redirect
        && redirect.is_none()
        && request_id.is_none()
        && path.is_none()
}
