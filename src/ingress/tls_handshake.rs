//! TLS termination by the front door: each new connection's handshake offers the ALPN protocols
//! of its listener's current spec, so a reload changes them for new connections while open ones
//! keep what they negotiated.
//!
//! Pingora 0.9.1's rustls listener builds one `ServerConfig` when the listener starts, and the
//! ALPN list lives in it (rustls has no per-handshake ALPN callback). So a TLS listener is a plain
//! TCP listener to Pingora, and the ingress runs the handshake with one of three acceptors, one
//! per ALPN choice, all built at start around the listener's certificate resolver (which swaps
//! certificates by itself). The stream it yields is Pingora's own `TlsStream`: digests, ALPN and
//! TLS version read as they did when Pingora ran the handshake.

use super::watched_stream::{StreamWatch, Watched};
use crate::config::Alpn;
use crate::node::tls_certificates::{ListenerCertificates, MinimumVersion};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::Stream;
use pingora_core::tls::{version, ServerConfig};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// The TLS side of one listener.
pub struct TlsHandshake {
    certificates: Arc<ListenerCertificates>,
    minimum: Arc<MinimumVersion>,
    /// By [`Alpn`]: `[h2, http/1.1]`, `[http/1.1]`, `[h2]`.
    acceptors: [Acceptor; 3],
    /// How long the client has for its hello and the whole handshake.
    timeout: Duration,
}

/// The wire form of each ALPN choice, in the server's order of preference.
fn protocols(alpn: Alpn) -> Vec<Vec<u8>> {
    let (h2, h1) = (b"h2".to_vec(), b"http/1.1".to_vec());
    match alpn {
        Alpn::H2H1 => vec![h2, h1],
        Alpn::H1 => vec![h1],
        Alpn::H2 => vec![h2],
    }
}

fn slot(alpn: Alpn) -> usize {
    match alpn {
        Alpn::H2H1 => 0,
        Alpn::H1 => 1,
        Alpn::H2 => 2,
    }
}

/// An acceptor as Pingora's `TlsSettings::build` makes one (TLS 1.2 and 1.3, no client
/// certificates, the certificate from `certificates`), offering `alpn`.
fn acceptor(certificates: &Arc<ListenerCertificates>, alpn: Alpn) -> Acceptor {
    pingora_core::tls::install_default_crypto_provider();
    let mut config =
        ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
    config.alpn_protocols = protocols(alpn);
    Acceptor::from_server_config(Arc::new(config))
}

impl TlsHandshake {
    /// TLS for the listener served by `certificates`; `timeout` bounds each handshake (the
    /// listener's `limits.header_timeout`).
    pub fn new(certificates: Arc<ListenerCertificates>, timeout: Duration) -> Self {
        TlsHandshake {
            minimum: MinimumVersion::new(certificates.clone(), timeout),
            acceptors: [Alpn::H2H1, Alpn::H1, Alpn::H2].map(|a| acceptor(&certificates, a)),
            certificates,
            timeout,
        }
    }

    /// The TLS stream over `stream`, or `None` (the connection is dropped) when the client's
    /// hello is refused (`tls.min_version`), the handshake fails, or it takes too long.
    pub async fn accept(&self, stream: Stream) -> Option<Stream> {
        let mut inner = Watched::new(stream, AsIs);
        if let Err(e) = self.minimum.check(&mut inner).await {
            log::debug!("TLS connection refused: {e}");
            return None;
        }
        let acceptor = self.acceptors.get(slot(self.certificates.alpn()))?;
        match tokio::time::timeout(self.timeout, acceptor.tls_handshake(inner)).await {
            Ok(Ok(tls)) => Some(Box::new(tls)),
            Ok(Err(e)) => {
                log::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                log::debug!("TLS handshake not done within {:?}", self.timeout);
                None
            }
        }
    }
}

/// A watch that passes every byte through: what makes a Pingora `Stream` an `IO` type the TLS
/// acceptor takes.
#[derive(Debug)]
struct AsIs;

impl StreamWatch for AsIs {
    fn poll_read(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_choice_has_its_own_acceptor_and_wire_list() {
        let all = [Alpn::H2H1, Alpn::H1, Alpn::H2];
        let slots: Vec<usize> = all.iter().map(|a| slot(*a)).collect();
        assert_eq!(slots, [0, 1, 2]);
        assert_eq!(
            protocols(Alpn::H2H1),
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(protocols(Alpn::H1), [b"http/1.1".to_vec()]);
        assert_eq!(protocols(Alpn::H2), [b"h2".to_vec()]);
    }
}
