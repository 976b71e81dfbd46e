//! What a client's request directives do, and how `Cache-Status` reports it: a fresh entry the
//! request refused is `fwd=request` (RFC 9211 §2.2), and `max-stale` obeys `must-revalidate`
//! from the field that governs this cache (`CDN-Cache-Control` replaces `Cache-Control`,
//! RFC 9213 §2.1).

use crate::support::Origin;
use crate::support::{cached_verge, fetch, RouteCache};

#[tokio::test]
async fn a_fresh_entry_refused_by_the_request_is_fwd_request() {
    let o = Origin::start("o").await;
    o.set_headers("/r", &[("cache-control", "max-age=600")]);
    o.set_etag("/r", "\"r1\"");
    o.set_headers("/plain", &[("cache-control", "max-age=600")]);
    let v = cached_verge(o.addr, RouteCache::new()).await;
    let first = fetch(&v, "/r", &[]).await;
    assert!(
        first.cache_status.contains("fwd=uri-miss"),
        "{}",
        first.cache_status
    );
    let mut expected_hits = 1;
    for h in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "min-fresh=3600"),
        ("pragma", "no-cache"),
    ] {
        let g = fetch(&v, "/r", &[h]).await;
        expected_hits += 1;
        assert_eq!(g.status, 200, "{h:?}");
        assert_eq!(g.body, first.body, "{h:?}: the stored body, revalidated");
        assert!(
            g.cache_status
                .starts_with("verge; fwd=request; fwd-status=304"),
            "{h:?}: {}",
            g.cache_status
        );
        assert_eq!(
            o.hits("/r"),
            expected_hits,
            "{h:?}: one conditional request"
        );
    }
    assert_eq!(o.not_modified("/r"), 4);
    // without a validator the entry is fetched again in full, and stored
    let plain = fetch(&v, "/plain", &[]).await;
    let g = fetch(&v, "/plain", &[("cache-control", "no-cache")]).await;
    assert!(
        g.cache_status.starts_with("verge; fwd=request; stored"),
        "{}",
        g.cache_status
    );
    assert_ne!(g.body, plain.body);
    assert_eq!(o.hits("/plain"), 2);
    // an ordinary request is a hit again
    let g = fetch(&v, "/plain", &[]).await;
    assert!(
        g.cache_status.starts_with("verge; hit"),
        "{}",
        g.cache_status
    );
    assert_eq!(o.hits("/plain"), 2);
}

#[tokio::test]
async fn a_stale_entry_revalidated_for_a_no_cache_request_stays_fwd_stale() {
    let o = Origin::start("o").await;
    // stored, but stale from the start
    o.set_headers("/s", &[("cache-control", "max-age=0")]);
    o.set_etag("/s", "\"s1\"");
    let v = cached_verge(o.addr, RouteCache::new()).await;
    fetch(&v, "/s", &[]).await;
    let g = fetch(&v, "/s", &[("cache-control", "no-cache")]).await;
    assert!(
        g.cache_status
            .starts_with("verge; fwd=stale; fwd-status=304"),
        "{}",
        g.cache_status
    );
    assert_eq!((o.hits("/s"), o.not_modified("/s")), (2, 1));
}

#[tokio::test]
async fn max_stale_obeys_must_revalidate_in_cdn_cache_control() {
    let o = Origin::start("o").await;
    // Both entries are stored stale at once (max-age=0), so max-stale alone would serve them.
    // Here the governing field says must-revalidate (or proxy-revalidate)...
    let targeted = [
        ("/cdn-mr", "max-age=0, must-revalidate"),
        ("/cdn-pr", "max-age=0, proxy-revalidate"),
    ];
    for (path, cdn) in targeted {
        o.set_headers(
            path,
            &[("cache-control", "max-age=0"), ("cdn-cache-control", cdn)],
        );
    }
    // ...here only Cache-Control does, and CDN-Cache-Control replaces it for this cache.
    o.set_headers(
        "/cc-mr",
        &[
            ("cache-control", "max-age=0, must-revalidate"),
            ("cdn-cache-control", "max-age=0"),
        ],
    );
    let v = cached_verge(o.addr, RouteCache::new()).await;
    for (path, cdn) in targeted {
        let first = fetch(&v, path, &[]).await;
        assert!(
            first.cache_status.contains("stored"),
            "{}",
            first.cache_status
        );
        let g = fetch(&v, path, &[("cache-control", "max-stale=600")]).await;
        assert_eq!(
            o.hits(path),
            2,
            "{path}: must-revalidate sends it to the origin"
        );
        assert_ne!(g.body, first.body, "{path}: not the stale copy");
        assert!(
            !g.cache_status.contains("hit"),
            "{path}: {}",
            g.cache_status
        );
        // the targeted field reaches the client as the origin sent it
        assert_eq!(g.header("cdn-cache-control"), Some(cdn));
    }
    let first = fetch(&v, "/cc-mr", &[]).await;
    assert!(
        first.cache_status.contains("stored"),
        "{}",
        first.cache_status
    );
    let g = fetch(&v, "/cc-mr", &[("cache-control", "max-stale=600")]).await;
    assert_eq!(o.hits("/cc-mr"), 1, "served stale without the origin");
    assert_eq!(g.body, first.body);
    assert!(g.cache_status.contains("hit"), "{}", g.cache_status);
}
