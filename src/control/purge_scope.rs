//! What a token may purge: how broad an invalidation is (a URL, tag or prefix below a host's
//! root; a whole host; everything) against the token's purge scope, and its targets against
//! the hosts the token is limited to. Pure.

use super::plane::InvalidationRequest;
use super::settings::{Scope, Token};
use crate::cache::invalidation::{parse_target, InvalidationKind, Target};
use crate::http_syntax::host::canonical_host;

/// A host a token may purge: one name, or every name under a domain (`*.example.com`, not
/// `example.com` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this canonical host.
    Exact(String),
    /// Any host ending in this suffix (with its leading dot).
    Under(String),
}

impl HostPattern {
    /// `example.com` or `*.example.com`, in any case; `None` if it is not a host.
    pub fn parse(text: &str) -> Option<HostPattern> {
        match text.strip_prefix("*.") {
            Some(domain) => canonical_host(domain)
                .filter(|d| !d.starts_with('['))
                .map(|d| HostPattern::Under(format!(".{d}"))),
            None => canonical_host(text).map(HostPattern::Exact),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Under(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// How much of the cache one invalidation reaches; each needs its own scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Breadth {
    /// A URL, a tag, or a prefix below a host's root: `purge:url`.
    Narrow,
    /// A whole host, or a prefix that covers one (`example.com/`): `purge:host` (or `purge`).
    Host,
    /// Everything: `purge:all`.
    All,
}

impl Breadth {
    fn of(target: &Target) -> Breadth {
        match target {
            Target::Url { .. } | Target::Tag(_) => Breadth::Narrow,
            Target::Prefix { prefix, .. } if prefix.trim_end_matches('/').is_empty() => {
                Breadth::Host
            }
            Target::Prefix { .. } => Breadth::Narrow,
            Target::Host(_) => Breadth::Host,
            Target::All => Breadth::All,
        }
    }

    /// The broadest invalidations `scope` allows, if any.
    fn allowed_by(scope: Scope) -> Option<Breadth> {
        match scope {
            Scope::PurgeUrl => Some(Breadth::Narrow),
            Scope::Purge | Scope::PurgeHost => Some(Breadth::Host),
            Scope::PurgeAll => Some(Breadth::All),
            Scope::Read | Scope::PolicyWrite => None,
        }
    }

    fn scope(self) -> &'static str {
        match self {
            Breadth::Narrow => "purge:url (or a broader purge scope)",
            Breadth::Host => "purge:host (or purge)",
            Breadth::All => "purge:all",
        }
    }
}

/// Whether `token` may ask for every one of `requests`; the error names the first it may not.
/// A target that does not parse is left to the control plane, which refuses it with 400.
pub fn authorize(token: &Token, requests: &[InvalidationRequest]) -> Result<(), String> {
    let widest = token
        .scopes
        .iter()
        .filter_map(|s| Breadth::allowed_by(*s))
        .max();
    for r in requests {
        let target = match r.kind {
            InvalidationKind::All => Target::All,
            kind => match parse_target(kind, &r.target) {
                Ok(t) => t,
                Err(_) => continue,
            },
        };
        let breadth = Breadth::of(&target);
        if widest.is_none_or(|w| w < breadth) {
            return Err(format!(
                "token {:?} lacks the scope for this {} purge: {}",
                token.name,
                r.kind.as_str(),
                breadth.scope()
            ));
        }
        if token.hosts.is_empty() {
            continue;
        }
        let host = match &target {
            Target::Url { host, .. } | Target::Prefix { host, .. } | Target::Host(host) => host,
            Target::Tag(_) | Target::All => {
                return Err(format!(
                    "token {:?} is limited to hosts, and a {} purge reaches every host",
                    token.name,
                    r.kind.as_str()
                ))
            }
        };
        if !token.hosts.iter().any(|p| p.matches(host)) {
            return Err(format!(
                "token {:?} may not purge host {host:?}",
                token.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[Scope], hosts: &[&str]) -> Token {
        Token {
            name: "t".into(),
            secret: "s3cret-s3cret-s3cret".into(),
            scopes: scopes.iter().copied().collect(),
            hosts: hosts.iter().filter_map(|h| HostPattern::parse(h)).collect(),
        }
    }

    fn ask(kind: InvalidationKind, target: &str) -> Vec<InvalidationRequest> {
        vec![InvalidationRequest {
            kind,
            target: target.into(),
            soft: false,
            id: None,
            expected_version: None,
            nodes: None,
        }]
    }

    #[test]
    fn a_whole_host_needs_more_than_a_url() {
        use InvalidationKind::*;
        let narrow = token(&[Scope::PurgeUrl], &[]);
        for (kind, target) in [(Url, "a.test/x"), (Tag, "t1"), (Prefix, "a.test/static")] {
            assert!(authorize(&narrow, &ask(kind, target)).is_ok(), "{target}");
        }
        for (kind, target) in [
            (Host, "a.test"),
            (Prefix, "a.test/"),
            (Prefix, "a.test"),
            (All, ""),
        ] {
            let e = authorize(&narrow, &ask(kind, target)).unwrap_err();
            assert!(e.contains("lacks the scope"), "{target}: {e}");
        }
        for broad in [Scope::Purge, Scope::PurgeHost] {
            let t = token(&[broad], &[]);
            assert!(authorize(&t, &ask(Host, "a.test")).is_ok());
            assert!(authorize(&t, &ask(Prefix, "a.test/")).is_ok());
            assert!(authorize(&t, &ask(Url, "a.test/x")).is_ok());
            assert!(authorize(&t, &ask(All, "")).is_err());
        }
        assert!(authorize(&token(&[Scope::PurgeAll], &[]), &ask(All, "")).is_ok());
        assert!(authorize(&token(&[Scope::Read], &[]), &ask(Url, "a.test/x")).is_err());
    }

    #[test]
    fn a_token_limited_to_hosts_purges_only_those() {
        use InvalidationKind::*;
        let t = token(&[Scope::Purge], &["shop.test", "*.img.test"]);
        assert!(authorize(&t, &ask(Url, "http://SHOP.test/a")).is_ok());
        assert!(authorize(&t, &ask(Host, "shop.test")).is_ok());
        assert!(authorize(&t, &ask(Prefix, "cdn.img.test/x")).is_ok());
        for (kind, target) in [
            (Url, "blog.test/a"),
            (Host, "img.test"),
            (Prefix, "evil-img.test/x"),
            (Tag, "t1"),
        ] {
            assert!(authorize(&t, &ask(kind, target)).is_err(), "{target}");
        }
        let mixed = [ask(Url, "shop.test/a"), ask(Url, "blog.test/a")].concat();
        assert!(
            authorize(&t, &mixed).is_err(),
            "one refused item refuses all"
        );
        assert_eq!(HostPattern::parse("not a host"), None);
    }
}
