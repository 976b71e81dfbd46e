//! Routing by exact host, wildcard host and longest path prefix; forwarding hygiene.

use crate::harness::{get, Verge};
use crate::origin::Origin;

#[tokio::test]
async fn routes_by_host_wildcard_and_longest_prefix() {
    let (www, wild, api, any) = (
        Origin::start("www").await,
        Origin::start("wild").await,
        Origin::start("api").await,
        Origin::start("any").await,
    );
    let v = Verge::start(&format!(
        r#"
pools:
  www: {{backends: ["{}"]}}
  wild: {{backends: ["{}"]}}
  api: {{backends: ["{}"]}}
  any: {{backends: ["{}"]}}
routes:
  - {{hosts: [www.example.com], pool: www}}
  - {{hosts: ["*.example.com"], pool: wild}}
  - {{hosts: [www.example.com], path: /api, pool: api, strip_prefix: true}}
  - {{hosts: ["*"], pool: any}}
"#,
        www.addr, wild.addr, api.addr, any.addr
    ))
    .await;

    assert_eq!(get(&v, "www.example.com", "/").await.1, "www");
    assert_eq!(get(&v, "WWW.Example.com:8080", "/page").await.1, "www");
    assert_eq!(get(&v, "img.example.com", "/").await.1, "wild");
    assert_eq!(get(&v, "a.b.example.com", "/").await.1, "wild");
    assert_eq!(
        get(&v, "example.com", "/").await.1,
        "any",
        "bare domain is not *.example.com"
    );
    assert_eq!(get(&v, "other.org", "/").await.1, "any");

    let (status, origin, body) = get(&v, "www.example.com", "/api/users?id=7").await;
    assert_eq!((status, origin.as_str()), (200, "api"));
    assert!(
        body.contains("uri=/users?id=7"),
        "prefix stripped upstream: {body}"
    );
    assert_eq!(
        get(&v, "www.example.com", "/apix").await.1,
        "www",
        "prefix matches whole segments"
    );
    assert_eq!(api.hits("/users"), 1);
    assert_eq!(www.hits("/apix"), 1);
}

#[tokio::test]
async fn unknown_host_is_404_and_reaches_no_origin() {
    let o = Origin::start("o").await;
    let v = Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [known.com], pool: p}}]\n",
        o.addr
    ))
    .await;
    let (status, _, body) = get(&v, "unknown.com", "/").await;
    assert_eq!(status, 404);
    assert!(body.contains("no route for host \"unknown.com\""), "{body}");
    let (status, _, _) = get(&v, "bad host!", "/").await;
    assert_eq!(status, 400);
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn forwarding_headers_are_verges_own_and_header_ops_apply() {
    let o = Origin::start("o").await;
    let v = Verge::start(&format!(
        r#"
pools: {{p: {{backends: ["{}"]}}}}
routes:
  - hosts: [a.com]
    pool: p
    request_headers: {{set: {{x-edge: verge}}, remove: [x-debug]}}
    response_headers: {{set: {{x-served: edge}}, remove: [x-origin]}}
"#,
        o.addr
    ))
    .await;
    let r = crate::harness::client()
        .get(v.url("/f"))
        .header("host", "a.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.com")
        .header("x-original-url", "/admin")
        .header("x-debug", "1")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("x-served").map(|h| h.as_bytes()),
        Some(&b"edge"[..])
    );
    assert!(
        r.headers().get("x-origin").is_none(),
        "response header removed"
    );
    let seen = o.last_seen().expect("origin saw the request");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("a.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 verge"));
    assert_eq!(seen.header("x-original-url"), None);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-edge"), Some("verge"));
}
