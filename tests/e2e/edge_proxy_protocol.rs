//! The PROXY protocol on a plain listener through real sockets: versions 1 and 2 from a trusted
//! source name the client that edge rules, `X-Forwarded-For`, the access log and the hit lane
//! see; a trusted source without a header is closed; anyone else is read as it comes. (Before
//! TLS: `edge_tls`.)

use crate::support::metrics::{metric_eventually, sum_eventually};
use crate::support::wire::Conn;
use crate::support::{assert_eventually, Config, Listener, Origin, Pool, Route, RouteCache, Verge};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// A version 2 header carrying TCP over IPv6 from `[2001:db8::7]:80`, or a `LOCAL` one.
fn v2(local: bool) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(if local { 0x20 } else { 0x21 });
    out.push(0x21);
    out.extend_from_slice(&36u16.to_be_bytes());
    let src: std::net::Ipv6Addr = "2001:db8::7".parse().expect("ip");
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    out.extend_from_slice(&80u16.to_be_bytes());
    out.extend_from_slice(&8080u16.to_be_bytes());
    out
}

/// The status `request` gets when sent after `preamble` from `from`, on a new connection
/// (`None`: the connection closed without a response).
async fn status(v: &Verge, from: Option<IpAddr>, preamble: &[u8], path: &str) -> Option<u16> {
    let mut c = Conn::open(v.http, from).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n");
    c.send(&[preamble, request.as_bytes()].concat()).await;
    c.read_response(Duration::from_secs(5), false)
        .await
        .response()
        .map(|r| r.status)
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\n").into_bytes()
}

#[tokio::test]
async fn a_trusted_proxys_header_names_the_client_everything_after_sees() {
    let o = Origin::start("o").await;
    o.set_headers("/h", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .raw("access_log: {path: \"{dir}/access.log\", fields: [client, path, cache]}")
            .listener(
                Listener::new()
                    .name("behind-lb")
                    .set("proxy_protocol", "{from: [127.0.0.1/32]}"),
            )
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("denying")
                    .path("/denied")
                    .set("deny", "[203.0.113.0/24]"),
            )
            .route(Route::to("p").name("site").cache(RouteCache::new())),
    )
    .await;
    let forwarded_for = |path: &str| {
        o.seen_for(path)
            .last()
            .and_then(|s| s.header("x-forwarded-for").map(str::to_string))
    };
    assert_eq!(status(&v, None, &v1("198.51.100.9"), "/a").await, Some(200));
    assert_eq!(forwarded_for("/a").as_deref(), Some("198.51.100.9"));
    assert_eq!(status(&v, None, &v2(false), "/b").await, Some(200));
    assert_eq!(forwarded_for("/b").as_deref(), Some("2001:db8::7"));
    // LOCAL: the proxy speaking for itself keeps the connection's address
    assert_eq!(status(&v, None, &v2(true), "/c").await, Some(200));
    assert_eq!(forwarded_for("/c").as_deref(), Some("127.0.0.1"));
    // the route's access rules read the carried client
    assert_eq!(
        status(&v, None, &v1("203.0.113.5"), "/denied/x").await,
        Some(403)
    );
    assert_eq!(
        status(&v, None, &v1("198.51.100.9"), "/denied/y").await,
        Some(200)
    );
    assert_eq!(o.hits("/denied/x"), 0);

    // a fill, then a hit the lane answers, each logged with its own carried client
    assert_eq!(status(&v, None, &v1("198.51.100.1"), "/h").await, Some(200));
    // (the client can have the whole body a moment before the fill is stored)
    metric_eventually(
        &v,
        Duration::from_secs(5),
        "verge_cache_objects",
        &[],
        |n| n == Some(1.0),
    )
    .await;
    let lane_before = v.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    assert_eq!(status(&v, None, &v1("198.51.100.2"), "/h").await, Some(200));
    // (the lane counts a hit once it has written it: a moment after the client has it)
    let lanes = "verge_cache_fast_hits_total";
    let m = sum_eventually(&v, Duration::from_secs(5), lanes, &[], |n| n > lane_before).await;
    assert_eq!(
        m.sum(lanes, &[]),
        lane_before + 1.0,
        "the hit was the lane's"
    );
    assert_eq!(o.hits("/h"), 1);
    let log = v.dir().join("access.log");
    let lines = assert_eventually(
        Duration::from_secs(5),
        "both lines for /h",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("\"path\":\"/h\""))
                .map(str::to_string)
                .collect::<Vec<_>>()
        },
        |l| l.len() == 2,
    )
    .await;
    assert!(
        lines[0].contains("\"client\":\"198.51.100.1\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("\"client\":\"198.51.100.2\"") && lines[1].contains("\"hit\""),
        "{}",
        lines[1]
    );

    // a trusted source must send a header: without one (or a broken one) it is closed
    let rejected = || async {
        v.metrics().await.sum(
            "verge_requests_rejected_total",
            &[("reason", "proxy_protocol")],
        )
    };
    assert_eq!(status(&v, None, b"", "/none").await, None);
    assert_eq!(
        status(&v, None, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "/bad").await,
        None
    );
    assert_eq!(rejected().await, 2.0);
    assert_eq!(o.hits("/none") + o.hits("/bad"), 0);

    // anyone else is read as it comes: its own address, and a header is no request
    let other = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(status(&v, other, b"", "/d").await, Some(200));
    assert_eq!(forwarded_for("/d").as_deref(), Some("127.0.0.2"));
    assert_eq!(
        status(&v, other, &v1("198.51.100.9"), "/e").await,
        Some(400)
    );
    assert_eq!(o.hits("/e"), 0);
}
