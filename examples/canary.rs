//! Canary routing: a fixed share of users, chosen by a stable hash of their id cookie, go to the
//! `canary` pool; the rest stay on the route's own pool. `x-canary: always|never` forces either
//! way (for testers), and requests without the cookie stay stable.
//!
//! The split is deterministic: `verge::percent_bucket(id) < percent` decides, so a user stays on
//! the same track on every node and across restarts, and raising the percentage only moves
//! stable users to the canary, never back. The track is also part of the cache key, so a canary
//! response is never served to a stable user from the cache (or the other way round).

use anyhow::Context;
use verge::http::HeaderValue;
use verge::{
    async_trait, percent_bucket, Config, Decision, Filter, FilterCtx, FilterError, RequestHeader,
    ResponseHeader, Verge,
};

/// The track a request was put on, kept in the request's extensions for `on_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Stable,
    Canary,
}

impl Track {
    fn as_str(self) -> &'static str {
        match self {
            Track::Stable => "stable",
            Track::Canary => "canary",
        }
    }
}

/// Sends `percent`% of the holders of cookie `cookie` to pool `pool`.
struct Canary {
    cookie: String,
    pool: String,
    percent: u8,
}

/// The value of cookie `name` in the request's `Cookie` header(s).
fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(verge::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The track for a request: forced by `x-canary`, else by the id's bucket; no id: stable.
fn choose(force: Option<&str>, id: Option<&str>, percent: u8) -> Track {
    match force {
        Some("always") => Track::Canary,
        Some("never") => Track::Stable,
        _ => match id {
            Some(id) if !id.is_empty() && percent_bucket(id) < percent => Track::Canary,
            _ => Track::Stable,
        },
    }
}

#[async_trait]
impl Filter for Canary {
    fn name(&self) -> &str {
        "canary"
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        let force = req.headers.get("x-canary").and_then(|v| v.to_str().ok());
        let track = choose(force, cookie(req, &self.cookie), self.percent);
        if track == Track::Canary {
            // an unknown pool is a 500 and verge_filter_errors_total{filter="canary"}
            ctx.use_pool(&self.pool)?;
        }
        // on every request, so stable and canary copies never share a cache entry
        ctx.add_cache_key("track", track.as_str())?;
        ctx.extensions_mut().insert(track);
        Ok(Decision::Continue)
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        let track = ctx
            .extensions()
            .get::<Track>()
            .copied()
            .unwrap_or(Track::Stable);
        resp.insert_header("x-canary-track", HeaderValue::from_static(track.as_str()))
            .map_err(|e| FilterError::internal(e.to_string()))
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .unwrap_or_else(|| "conf/examples/canary.yaml".into());
    let percent = match args.next() {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 100)
            .context("the canary percentage must be 0 to 100")?,
        None => 10,
    };
    let config = Config::load(path.as_ref())?;
    let canary = Canary {
        cookie: "uid".into(),
        pool: "canary".into(),
        percent,
    };
    Verge::builder(config).filter(canary).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        req.append_header("cookie", "a=1; uid=u-42").expect("h");
        req.append_header("cookie", "b=2").expect("h");
        assert_eq!(cookie(&req, "uid"), Some("u-42"));
        assert_eq!(cookie(&req, "b"), Some("2"));
        assert_eq!(cookie(&req, "ui"), None);
    }

    #[test]
    fn tracks_follow_force_then_bucket() {
        assert_eq!(choose(Some("always"), None, 0), Track::Canary);
        assert_eq!(choose(Some("never"), Some("x"), 100), Track::Stable);
        assert_eq!(choose(None, None, 100), Track::Stable);
        assert_eq!(choose(None, Some(""), 100), Track::Stable);
        assert_eq!(choose(None, Some("x"), 100), Track::Canary);
        assert_eq!(choose(None, Some("x"), 0), Track::Stable);
        // raising the percentage only moves users to the canary
        for i in 0..200 {
            let id = format!("user-{i}");
            if choose(None, Some(&id), 10) == Track::Canary {
                assert_eq!(choose(None, Some(&id), 20), Track::Canary);
            }
        }
    }
}

// Run it (two demo origins: 9000 is stable, 9001 the canary; verge on :8080):
//
//   cargo run --example demo_origin -- --listen 127.0.0.1:9000 --listen 127.0.0.1:9001 &
//   cargo run --example canary -- conf/examples/canary.yaml 20      # 20% of uid cookies
//
//   curl -si localhost:8080/ -H 'cookie: uid=alice' | grep -i -e x-served-by -e x-canary-track
//   curl -si localhost:8080/ -H 'x-canary: always' | grep -i x-served-by       # 127.0.0.1:9001
//   for u in u1 u2 u3 u4 u5 u6 u7 u8 u9 u10; do
//     curl -s -o /dev/null -D - localhost:8080/ -H "cookie: uid=$u" | grep -i x-canary-track
//   done
