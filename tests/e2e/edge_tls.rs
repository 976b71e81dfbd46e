//! TLS listeners through real sockets, with a rustls client: certificates chosen by SNI with a
//! default, the minimum TLS version and ALPN, and certificates and ALPN changed by a reload (or
//! certificates by a file renewal) without dropping open connections.

use crate::support::wire::{parse, Response};
use crate::support::{assert_eventually, Config, Listener, Origin, Pool, Route, Verge};
use pingora_core::tls::{
    version, CertificateDer, ClientConfig, DigitallySignedStruct, HandshakeSignatureValid,
    RusTlsError, ServerCertVerified, ServerCertVerifier, ServerName, SignatureScheme, TlsConnector,
    UnixTime,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cert(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/test-certs")
        .join(file)
}

/// The DER of the first certificate in a PEM file.
fn der_of(file: &Path) -> Vec<u8> {
    let pem = std::fs::read(file).expect("pem");
    let first = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")
        .expect("decodes");
    first.as_ref().to_vec()
}

/// Accepts any certificate: the tests compare what was presented with the files.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RusTlsError> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA512,
        ]
    }
}

/// A TLS connection from a rustls client.
struct Tls {
    stream: pingora_core::tls::ClientTlsStream<TcpStream>,
}

impl Tls {
    /// Connect to `addr` naming `sni` (an IP address sends no SNI), as a TLS 1.2-only client when
    /// `tls12_only`, offering `alpn`.
    async fn connect(
        addr: SocketAddr,
        sni: &str,
        tls12_only: bool,
        alpn: &[&str],
    ) -> std::io::Result<Tls> {
        Self::connect_after(addr, b"", sni, tls12_only, alpn).await
    }

    /// [`connect`](Self::connect), sending `preamble` (a PROXY protocol header) before the
    /// handshake.
    async fn connect_after(
        addr: SocketAddr,
        preamble: &[u8],
        sni: &str,
        tls12_only: bool,
        alpn: &[&str],
    ) -> std::io::Result<Tls> {
        pingora_core::tls::install_default_crypto_provider();
        let builder = if tls12_only {
            ClientConfig::builder_with_protocol_versions(&[&version::TLS12])
        } else {
            ClientConfig::builder()
        };
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(sni.to_string()).expect("server name");
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(preamble).await?;
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(Tls { stream })
    }

    /// The DER of the certificate the server presented.
    fn presented(&self) -> Vec<u8> {
        let (_, conn) = self.stream.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    fn version(&self) -> String {
        format!("{:?}", self.stream.get_ref().1.protocol_version())
    }

    fn alpn(&self) -> Option<String> {
        let (_, conn) = self.stream.get_ref();
        conn.alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// `GET path` for `host` on this connection (kept open), and its response.
    async fn get(&mut self, host: &str, path: &str) -> Response {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.stream.write_all(head.as_bytes()).await.expect("send");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = parse(&buf, false, false).response() {
                if r.complete {
                    return r.clone();
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(n > 0, "closed before a whole response: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn sni_listener(second_cert: &Path, second_key: &Path) -> Listener {
    Listener::new().name("tls").set(
        "tls",
        &format!(
            "{{cert: \"{}\", key: \"{}\", certificates: [{{hosts: [second.test, \"*.second.test\"], \
             cert: \"{}\", key: \"{}\"}}]}}",
            cert("server.crt").display(),
            cert("server.key").display(),
            second_cert.display(),
            second_key.display(),
        ),
    )
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_with_the_first_as_default() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .listener(sni_listener(&cert("second.crt"), &cert("second.key")))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let (default, second) = (der_of(&cert("server.crt")), der_of(&cert("second.crt")));
    assert_ne!(default, second);
    let mut c = Tls::connect(v.http, "second.test", false, &[])
        .await
        .expect("handshake");
    assert!(c.presented() == second, "the certificate named by SNI");
    assert_eq!(c.get("second.test", "/s").await.status, 200);
    let c = Tls::connect(v.http, "www.second.test", false, &[])
        .await
        .expect("handshake");
    assert!(c.presented() == second, "a wildcard name");
    let mut c = Tls::connect(v.http, "localhost", false, &[])
        .await
        .expect("handshake");
    assert!(
        c.presented() == default,
        "no certificate names it: the default"
    );
    assert_eq!(c.get("localhost", "/d").await.status, 200);
    let c = Tls::connect(v.http, "127.0.0.1", false, &[])
        .await
        .expect("handshake");
    assert!(c.presented() == default, "no SNI at all: the default");
    assert_eq!(o.hits("/s") + o.hits("/d"), 2);
}

#[tokio::test]
async fn the_minimum_version_and_alpn_are_what_the_listener_says() {
    let o = Origin::start("o").await;
    let tls = |extra: &str| {
        Listener::new().set(
            "tls",
            &format!(
                "{{cert: \"{}\", key: \"{}\"{extra}}}",
                cert("server.crt").display(),
                cert("server.key").display()
            ),
        )
    };
    let config = |listener| {
        Config::new()
            .listener(listener)
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p"))
    };
    let strict = Verge::start(&config(tls(", min_version: \"1.3\", alpn: [http/1.1]"))).await;
    assert!(
        Tls::connect(strict.http, "localhost", true, &[])
            .await
            .is_err(),
        "a TLS 1.2 client is refused"
    );
    let mut c = Tls::connect(strict.http, "localhost", false, &["h2", "http/1.1"])
        .await
        .expect("a TLS 1.3 client");
    assert_eq!(c.version(), "Some(TLSv1_3)");
    assert_eq!(c.alpn().as_deref(), Some("http/1.1"), "h2 is not offered");
    assert_eq!(c.get("localhost", "/a").await.status, 200);
    assert!(
        Tls::connect(strict.http, "localhost", false, &["h2"])
            .await
            .is_err(),
        "no protocol in common"
    );

    let default = Verge::start(&config(tls(""))).await;
    let c = Tls::connect(default.http, "localhost", true, &["h2", "http/1.1"])
        .await
        .expect("TLS 1.2 by default");
    assert_eq!(c.version(), "Some(TLSv1_2)");
    assert_eq!(c.alpn().as_deref(), Some("h2"));
    let h2_only = Verge::start(&config(tls(", alpn: [h2]"))).await;
    assert!(
        Tls::connect(h2_only.http, "localhost", false, &["http/1.1"])
            .await
            .is_err()
    );
    let c = Tls::connect(h2_only.http, "localhost", false, &["http/1.1", "h2"])
        .await
        .expect("h2");
    assert_eq!(c.alpn().as_deref(), Some("h2"));
}

#[tokio::test]
async fn a_reload_or_a_renewed_file_swaps_certificates_and_open_connections_stay() {
    let o = Origin::start("o").await;
    let files = tempfile::tempdir().expect("tempdir");
    let (crt, key) = (files.path().join("site.crt"), files.path().join("site.key"));
    std::fs::copy(cert("second.crt"), &crt).expect("copy");
    std::fs::copy(cert("second.key"), &key).expect("copy");
    let config = |c: &Path, k: &Path| {
        Config::new()
            .listener(sni_listener(c, k))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p"))
    };
    let v = Verge::start(&config(&crt, &key)).await;
    let (second, renewed) = (der_of(&cert("second.crt")), der_of(&cert("renewed.crt")));
    let presented = || async {
        Tls::connect(v.http, "second.test", false, &[])
            .await
            .map(|c| c.presented())
            .unwrap_or_default()
    };
    let mut open = Tls::connect(v.http, "second.test", false, &[])
        .await
        .expect("handshake");
    assert!(open.presented() == second);
    assert_eq!(open.get("second.test", "/1").await.status, 200);

    // a reload pointing the listener at other files
    v.reload_with(&config(&cert("renewed.crt"), &cert("renewed.key")));
    assert_eventually(
        Duration::from_secs(10),
        "new handshakes get the reloaded certificate",
        presented,
        |p| *p == renewed,
    )
    .await;
    assert_eq!(
        open.get("second.test", "/2").await.status,
        200,
        "the connection opened before the reload still serves"
    );

    // back to the copied files, then renewed in place (no reload)
    v.reload_with(&config(&crt, &key));
    assert_eventually(
        Duration::from_secs(10),
        "the copied files again",
        presented,
        |p| *p == second,
    )
    .await;
    std::fs::copy(cert("renewed.crt"), &crt).expect("copy");
    std::fs::copy(cert("renewed.key"), &key).expect("copy");
    assert_eventually(
        Duration::from_secs(10),
        "files renewed in place are read again",
        presented,
        |p| *p == renewed,
    )
    .await;
    assert_eq!(open.get("second.test", "/3").await.status, 200);
    assert_eq!(o.hits("/1") + o.hits("/2") + o.hits("/3"), 3);
}

/// An HTTP/2 client on a connection that negotiated `h2`.
async fn h2_client(tls: Tls) -> h2::client::SendRequest<bytes::Bytes> {
    let (send, connection) = h2::client::handshake(tls.stream)
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// `GET path` as one more stream of an HTTP/2 connection; its status, once the body is read.
async fn h2_get(send: &h2::client::SendRequest<bytes::Bytes>, path: &str) -> u16 {
    let mut ready = send
        .clone()
        .ready()
        .await
        .expect("the connection takes a stream");
    let request = http::Request::get(format!("https://localhost{path}"))
        .body(())
        .expect("request");
    let (response, _) = ready.send_request(request, true).expect("sent");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("a response in time")
        .expect("a response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(piece) = body.data().await {
        let piece = piece.expect("body");
        let _ = body.flow_control().release_capacity(piece.len());
    }
    status
}

#[tokio::test]
async fn a_reload_changes_alpn_for_new_connections_and_open_ones_stay() {
    let o = Origin::start("o").await;
    let config = |alpn: &str| {
        Config::new()
            .listener(Listener::new().name("tls").set(
                "tls",
                &format!(
                    "{{cert: \"{}\", key: \"{}\", alpn: {alpn}}}",
                    cert("server.crt").display(),
                    cert("server.key").display()
                ),
            ))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p"))
    };
    let both = ["h2", "http/1.1"];
    let v = Verge::start(&config("[h2, http/1.1]")).await;
    let first = Tls::connect(v.http, "localhost", false, &both)
        .await
        .expect("handshake");
    assert_eq!(first.alpn().as_deref(), Some("h2"));
    let h2 = h2_client(first).await;
    assert_eq!(h2_get(&h2, "/1").await, 200);
    let mut h1 = Tls::connect(v.http, "localhost", false, &["http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(h1.alpn().as_deref(), Some("http/1.1"));
    assert_eq!(h1.get("localhost", "/2").await.status, 200);

    // only HTTP/1.1 from now on
    v.reload_with(&config("[http/1.1]"));
    let http = v.http;
    let agreed = |offer: &'static [&'static str]| async move {
        match Tls::connect(http, "localhost", false, offer).await {
            Ok(c) => c.alpn().unwrap_or_else(|| "none".into()),
            Err(_) => "refused".into(),
        }
    };
    assert_eventually(
        Duration::from_secs(10),
        "a client offering h2 and http/1.1 gets http/1.1",
        || agreed(&["h2", "http/1.1"]),
        |p| p == "http/1.1",
    )
    .await;
    let mut c = Tls::connect(v.http, "localhost", false, &both)
        .await
        .expect("handshake");
    assert_eq!(c.get("localhost", "/3").await.status, 200);
    assert_eq!(agreed(&["h2"]).await, "refused", "no protocol in common");
    assert_eq!(
        h2_get(&h2, "/4").await,
        200,
        "the HTTP/2 connection opened before the reload still serves"
    );

    // only HTTP/2 from now on
    v.reload_with(&config("[h2]"));
    assert_eventually(
        Duration::from_secs(10),
        "a client offering only http/1.1 is refused",
        || agreed(&["http/1.1"]),
        |p| p == "refused",
    )
    .await;
    assert_eq!(agreed(&["h2", "http/1.1"]).await, "h2");
    assert_eq!(
        h1.get("localhost", "/5").await.status,
        200,
        "the HTTP/1.1 connection opened before the reloads still serves"
    );
    assert_eq!(h2_get(&h2, "/6").await, 200);
    for path in ["/1", "/2", "/3", "/4", "/5", "/6"] {
        assert_eq!(o.hits(path), 1, "{path} at the origin");
    }
}

#[tokio::test]
async fn a_proxy_protocol_header_comes_before_the_handshake() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .listener(
                Listener::new()
                    .name("tls")
                    .set(
                        "tls",
                        &format!(
                            "{{cert: \"{}\", key: \"{}\"}}",
                            cert("server.crt").display(),
                            cert("server.key").display()
                        ),
                    )
                    .set("proxy_protocol", "{from: [127.0.0.1]}"),
            )
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let header = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 443\r\n";
    let mut c = Tls::connect_after(v.http, header, "localhost", false, &["http/1.1"])
        .await
        .expect("a handshake after the header");
    assert_eq!(c.get("localhost", "/p").await.status, 200);
    let seen = o.seen_for("/p");
    assert_eq!(
        seen.last().and_then(|s| s.header("x-forwarded-for")),
        Some("198.51.100.9")
    );
    assert!(
        Tls::connect(v.http, "localhost", false, &[]).await.is_err(),
        "a trusted source without a header is closed"
    );
}
