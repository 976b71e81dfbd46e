//! HTTP/2 caps (`listeners[].limits.h2`), read off the wire: the SETTINGS and connection
//! WINDOW_UPDATE verge sends a new h2c client, with the defaults and with configured values,
//! and a request whose header list is over the cap refused with 431 before the origin.

use crate::support::{Config, Limits, Listener, Origin, Pool, Route, Verge};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

async fn h2c_verge(o: &Origin, limits: Limits) -> Verge {
    Verge::start(
        &Config::new()
            .listener(Listener::new().h2c().limits(limits))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await
}

/// What verge announced to a new HTTP/2 connection: its SETTINGS, and the connection window
/// (65535 plus the WINDOW_UPDATEs on stream 0 it sent before answering a PING sent once it
/// acknowledged our SETTINGS).
async fn announced(v: &Verge) -> (BTreeMap<u16, u32>, u64) {
    let mut s = tokio::net::TcpStream::connect(v.http)
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let mut settings = BTreeMap::new();
    let mut window = 65_535u64;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            // take whole frames off the front of the buffer
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match (kind, flags & 1) {
                    // SETTINGS (not an ACK)
                    (4, 0) => {
                        for e in payload.chunks_exact(6) {
                            let id = u16::from_be_bytes([e[0], e[1]]);
                            settings.insert(id, u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
                        }
                    }
                    // SETTINGS ACK: verge has our SETTINGS; a PING round trip flushes the rest
                    (4, 1) => {
                        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00verge-h2";
                        if s.write_all(ping).await.is_err() {
                            return;
                        }
                    }
                    // PING ACK
                    (6, 1) => return,
                    (8, _) if stream == 0 => {
                        let inc =
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        window += u64::from(inc & 0x7fff_ffff);
                    }
                    _ => {}
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("SETTINGS in time");
    (settings, window)
}

#[tokio::test]
async fn default_h2_caps_are_announced() {
    let o = Origin::start("o").await;
    let v = h2c_verge(&o, Limits::new()).await;
    let (settings, window) = announced(&v).await;
    assert_eq!(
        settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&100),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(&(64 << 10)),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&(64 << 10)),
        "{settings:?}"
    );
    assert_eq!(window, 1 << 20);
}

#[tokio::test]
async fn configured_h2_caps_are_announced_and_enforced() {
    let o = Origin::start("o").await;
    let h2 = "{max_concurrent_streams: 7, max_header_list_size: 4KiB, stream_window: 32KiB, connection_window: 2MiB}";
    let v = h2c_verge(&o, Limits::new().set("h2", h2)).await;
    let (settings, window) = announced(&v).await;
    assert_eq!(settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS), Some(&7));
    assert_eq!(settings.get(&SETTINGS_MAX_HEADER_LIST_SIZE), Some(&4096));
    assert_eq!(
        settings.get(&SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&(32 << 10))
    );
    assert_eq!(window, 2 << 20);

    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let over = c
        .get(v.url("/big"))
        .header("x-big", "b".repeat(5000))
        .send()
        .await
        .expect("answered");
    assert_eq!(over.status(), 431);
    let under = c
        .get(v.url("/small"))
        .header("x-small", "s".repeat(2000))
        .send()
        .await
        .expect("answered");
    assert_eq!(under.status(), 200);
    assert_eq!(under.version(), reqwest::Version::HTTP_2);
    assert_eq!(o.hits("/big"), 0, "never reached the origin");
    assert_eq!(o.hits("/small"), 1);
}

/// Found by scripts/soak: on an h2c listener, a connection that sent fewer bytes than the HTTP/2
/// preface (nothing at all, or the start of a request line) was never closed, whatever
/// `header_timeout` said, because the protocol sniffing waited for 24 bytes without a deadline.
#[tokio::test]
async fn h2c_listener_closes_connections_that_never_send_a_preface() {
    let o = Origin::start("o").await;
    let v = h2c_verge(&o, Limits::new().header_timeout("1s")).await;
    for sent in [&b""[..], b"GET / HT"] {
        let mut s = tokio::net::TcpStream::connect(v.http)
            .await
            .expect("connect");
        s.write_all(sent).await.expect("write");
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open after 5 s with {sent:?} sent: {read:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{sent:?}");
    }
    // HTTP/1 and HTTP/2 still work on the listener
    let ok = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
        .get(v.url("/h2"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(ok.status(), 200);
    let ok = reqwest::get(v.url("/h1")).await.expect("http/1 request");
    assert_eq!(ok.status(), 200);
}
