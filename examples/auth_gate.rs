//! An API-key gate: requests without a valid key get `401` with `WWW-Authenticate` before any
//! cache lookup or origin request. Keys come from `VERGE_API_KEYS` (`name:key,name:key`) and are
//! sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
//!
//! The origin never sees a key: `on_upstream_request` removes it and sends `X-API-Client: NAME`
//! instead. `on_request` only checks, and changes nothing: verge runs it again on a copy of the
//! request when it refreshes a stale cache entry in the background, and that copy must pass.
//!
//! The gated route in `conf/examples/auth_gate.yaml` caches with `public: true`, so requests
//! carrying `Authorization` may use the cache and every authorised client shares its copies.
//! That is right for content that is the same for every authorised client; per-client content
//! belongs on a route without `cache:`.

use anyhow::Context;
use verge::http::{header, HeaderValue};
use verge::{
    async_trait, Config, Decision, Filter, FilterCtx, FilterError, Reply, RequestHeader, Verge,
};

/// The client a valid key belongs to (kept in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiClient(String);

/// The gate: the known keys and the client name of each.
struct AuthGate {
    keys: Vec<(String, Vec<u8>)>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Invalid,
}

impl AuthGate {
    /// Parse `name:key,name:key`.
    fn from_spec(spec: &str) -> anyhow::Result<AuthGate> {
        let mut keys = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, key) = item
                .split_once(':')
                .filter(|(n, k)| !n.is_empty() && k.len() >= 8)
                .with_context(|| {
                    format!("{item:?}: expected name:key with a key of at least 8 characters")
                })?;
            keys.push((name.to_string(), key.as_bytes().to_vec()));
        }
        anyhow::ensure!(!keys.is_empty(), "no keys given");
        Ok(AuthGate { keys })
    }

    /// The client whose key the request carries.
    fn check(&self, req: &RequestHeader) -> Result<ApiClient, Refusal> {
        let presented = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| req.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .ok_or(Refusal::Missing)?;
        // compare with every key, each in constant time, so timing tells nothing about keys
        let mut found = None;
        for (name, key) in &self.keys {
            if constant_time_eq(presented.as_bytes(), key) {
                found = Some(name);
            }
        }
        found.map(|n| ApiClient(n.clone())).ok_or(Refusal::Invalid)
    }
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 401 for a refusal (RFC 6750 §3).
fn unauthorized(refusal: Refusal) -> Reply {
    let (challenge, text) = match refusal {
        Refusal::Missing => ("Bearer realm=\"verge\"", "an API key is required"),
        Refusal::Invalid => (
            "Bearer realm=\"verge\", error=\"invalid_token\"",
            "the API key is not valid",
        ),
    };
    Reply::text(401, text)
        .header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )
        .header(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

#[async_trait]
impl Filter for AuthGate {
    fn name(&self) -> &str {
        "auth"
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        match self.check(req) {
            Ok(client) => {
                ctx.extensions_mut().insert(client);
                Ok(Decision::Continue)
            }
            Err(refusal) => Ok(Decision::Respond(unauthorized(refusal))),
        }
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        let Some(ApiClient(name)) = ctx.extensions().get::<ApiClient>() else {
            return Err(FilterError::internal("no client recorded by on_request"));
        };
        // the key stops here: the origin gets the client's name instead
        upstream.remove_header(&header::AUTHORIZATION);
        upstream.remove_header("x-api-key");
        upstream
            .insert_header("x-api-client", name.as_str())
            .map_err(|e| FilterError::internal(e.to_string()))
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "conf/examples/auth_gate.yaml".into());
    let spec = std::env::var("VERGE_API_KEYS")
        .context("set VERGE_API_KEYS=name:key[,name:key...] (keys of 8 characters or more)")?;
    let gate = AuthGate::from_spec(&spec).context("VERGE_API_KEYS")?;
    let config = Config::load(path.as_ref())?;
    Verge::builder(config).filter(gate).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).expect("h");
        }
        r
    }

    #[test]
    fn keys_parse_and_match() {
        let gate = AuthGate::from_spec("alice:key-alice-1, bob:key-bob-22").expect("spec");
        assert_eq!(
            gate.check(&req(&[("authorization", "Bearer key-alice-1")])),
            Ok(ApiClient("alice".into()))
        );
        assert_eq!(
            gate.check(&req(&[("x-api-key", "key-bob-22")])),
            Ok(ApiClient("bob".into()))
        );
        assert_eq!(gate.check(&req(&[])), Err(Refusal::Missing));
        assert_eq!(
            gate.check(&req(&[("authorization", "Basic a2V5")])),
            Err(Refusal::Missing)
        );
        assert_eq!(
            gate.check(&req(&[("x-api-key", "key-alice-")])),
            Err(Refusal::Invalid)
        );
        assert!(AuthGate::from_spec("").is_err());
        assert!(AuthGate::from_spec("alice:short").is_err());
        assert!(AuthGate::from_spec(":key-without-name").is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

// Run it (a demo origin on :9000, verge on :8080):
//
//   cargo run --example demo_origin -- --listen 127.0.0.1:9000 &
//   VERGE_API_KEYS=demo:let-me-in cargo run --example auth_gate -- conf/examples/auth_gate.yaml
//
//   curl -si localhost:8080/obj/64                                   # 401, WWW-Authenticate: Bearer
//   curl -si localhost:8080/obj/64 -H 'x-api-key: wrong-key'         # 401, error="invalid_token"
//   curl -si localhost:8080/obj/64 -H 'authorization: Bearer let-me-in'   # 200, then a cache hit
//   curl -si localhost:8080/public/hello                             # open route: 200, no key
