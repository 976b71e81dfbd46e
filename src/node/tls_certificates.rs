//! A TLS listener's certificates: the one each handshake gets, chosen by SNI (exact name, then
//! `*.` wildcard, then the default); the minimum TLS version, checked on the client's hello
//! before the handshake; the ALPN protocols new handshakes offer; and the background service that re-reads them when a reload changes
//! them or their files change, swapping them in for new handshakes while open connections keep
//! theirs.

use crate::config::certificates::load_certified_key;
use crate::config::{Alpn, TlsSpec, TlsVersion};
use crate::snapshot::SharedSnapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::protocols::Peek;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The certificates of one listener, as loaded from one `TlsSpec`.
#[derive(Debug)]
pub struct CertificateSet {
    spec: TlsSpec,
    stamps: Vec<FileStamp>,
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertificateSet {
    /// Load every certificate and key of `spec`; the first problem is the error.
    pub fn load(spec: &TlsSpec) -> Result<CertificateSet, String> {
        let stamps = stamps(spec);
        let default = load_certified_key(&spec.cert, &spec.key)?;
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for more in &spec.certificates {
            let key = load_certified_key(&more.cert, &more.key)?;
            for host in &more.hosts {
                match host.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_string(), key.clone()),
                    None => exact.insert(host.clone(), key.clone()),
                };
            }
        }
        Ok(CertificateSet {
            spec: spec.clone(),
            stamps,
            default,
            exact,
            wildcard,
        })
    }

    /// The certificate for a handshake naming `server_name`: an exact name, a `*.` name one
    /// label up, or the default. Pure.
    pub fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }

    /// Whether `spec` or the files it names differ from what this set was loaded from.
    fn stale(&self, spec: &TlsSpec) -> bool {
        self.spec != *spec || self.stamps != stamps(spec)
    }
}

/// What tells a changed certificate or key file apart: its size, modification time and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamps(spec: &TlsSpec) -> Vec<FileStamp> {
    let mut files: Vec<&Path> = vec![&spec.cert, &spec.key];
    for more in &spec.certificates {
        files.push(&more.cert);
        files.push(&more.key);
    }
    files.into_iter().map(stamp).collect()
}

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok();
    FileStamp {
        path: path.to_path_buf(),
        len: meta.as_ref().map_or(0, |m| m.len()),
        modified: meta.as_ref().and_then(|m| m.modified().ok()),
        inode: meta.as_ref().map_or(0, |m| m.ino()),
    }
}

/// Whether the TLS record starting `bytes` is a ClientHello whose `supported_versions` extension
/// offers TLS 1.3 (rustls negotiates TLS 1.3 exactly then). `None`: not a whole ClientHello in
/// one record. Pure.
pub fn hello_offers_tls13(bytes: &[u8]) -> Option<bool> {
    let mut r = Reader(bytes);
    let (content, _version, record) = (r.u8()?, r.take(2)?, r.u16()?);
    let mut hs = Reader(r.take(usize::from(record))?);
    if content != 0x16 || hs.u8()? != 0x01 {
        return None;
    }
    let len = hs.u24()?;
    let mut hello = Reader(hs.take(len)?);
    hello.take(2 + 32)?; // legacy_version, random
    let session = usize::from(hello.u8()?);
    hello.take(session)?;
    let suites = usize::from(hello.u16()?);
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Some(false); // no extensions at all
    }
    let ext_len = usize::from(hello.u16()?);
    let mut exts = Reader(hello.take(ext_len)?);
    while !exts.0.is_empty() {
        let (kind, len) = (exts.u16()?, usize::from(exts.u16()?));
        let mut body = Reader(exts.take(len)?);
        if kind == 0x002b {
            let n = usize::from(body.u8()?);
            let list = body.take(n)?;
            return Some(list.chunks_exact(2).any(|v| v == [0x03, 0x04]));
        }
    }
    Some(false)
}

/// Reads big-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// Before each handshake on a listener whose `min_version` is 1.3: read the client's first TLS
/// record (put back for the handshake) and drop the connection unless its ClientHello offers
/// TLS 1.3. A hello split over several records is refused too.
pub struct MinimumVersion {
    certificates: Arc<ListenerCertificates>,
    /// How long the client has to send its hello.
    timeout: Duration,
}

impl MinimumVersion {
    /// The check for the listener served by `certificates` (whose current spec says the minimum).
    pub fn new(certificates: Arc<ListenerCertificates>, timeout: Duration) -> Arc<Self> {
        Arc::new(MinimumVersion {
            certificates,
            timeout,
        })
    }
}

impl MinimumVersion {
    /// Check the hello waiting on `stream` (peeked: the handshake reads it again); an error
    /// drops the connection.
    pub async fn check<S: Peek + Send>(&self, stream: &mut S) -> pingora_error::Result<()> {
        if self.certificates.current.load().spec.min_version != TlsVersion::V1_3 {
            return Ok(());
        }
        let refuse = |why: &str| {
            pingora_error::Error::e_explain(
                pingora_error::ErrorType::HandshakeError,
                why.to_string(),
            )
        };
        let hello = async {
            let mut header = [0u8; 5];
            stream.try_peek(&mut header).await?;
            // a record holds at most 2^14 bytes of plaintext (RFC 8446 §5.1)
            let len = usize::from(u16::from_be_bytes([header[3], header[4]])).min(1 << 14);
            let mut record = vec![0u8; 5 + len];
            stream.try_peek(&mut record).await?;
            Ok::<_, std::io::Error>(record)
        };
        match tokio::time::timeout(self.timeout, hello).await {
            Ok(Ok(record)) if hello_offers_tls13(&record) == Some(true) => Ok(()),
            Ok(Ok(_)) => refuse("the client does not offer TLS 1.3 (tls.min_version)"),
            Ok(Err(_)) => refuse("no ClientHello"),
            Err(_) => refuse("no ClientHello in time"),
        }
    }
}

/// The certificates a TLS listener serves, swapped whole on a change (rustls's certificate
/// resolver for the listener).
#[derive(Debug)]
pub struct ListenerCertificates {
    /// The listener's name, as the config names it.
    listener: String,
    current: ArcSwap<CertificateSet>,
}

impl ListenerCertificates {
    /// The certificates of listener `name`, first loaded from `spec`.
    pub fn load(name: &str, spec: &TlsSpec) -> Result<Arc<ListenerCertificates>, String> {
        Ok(Arc::new(ListenerCertificates {
            listener: name.to_string(),
            current: ArcSwap::from_pointee(CertificateSet::load(spec)?),
        }))
    }

    /// The protocols its current spec offers through ALPN (a reload changes them with the
    /// certificates, for new handshakes).
    pub fn alpn(&self) -> Alpn {
        self.current.load().spec.alpn
    }

    /// Load `spec` again if it or its files changed since the set in use was loaded: `Ok(true)`
    /// when a new set is in use (for new handshakes; open connections keep theirs), `Err` when
    /// it does not load (the set in use stays).
    pub fn refresh(&self, spec: &TlsSpec) -> Result<bool, String> {
        if !self.current.load().stale(spec) {
            return Ok(false);
        }
        self.current.store(Arc::new(CertificateSet::load(spec)?));
        Ok(true)
    }
}

impl ResolvesServerCert for ListenerCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()).clone())
    }
}

/// Re-reads every TLS listener's certificates when the snapshot's config changes them or their
/// files change (checked every second), so renewed certificates serve without a restart.
pub struct CertificateReload {
    snapshot: SharedSnapshot,
    listeners: Vec<Arc<ListenerCertificates>>,
}

impl CertificateReload {
    /// Watches `listeners` against the listener specs of the current `snapshot`.
    pub fn new(snapshot: SharedSnapshot, listeners: Vec<Arc<ListenerCertificates>>) -> Self {
        CertificateReload {
            snapshot,
            listeners,
        }
    }

    /// One pass over every listener; `failed` remembers the specs whose load failed, so a broken
    /// file is logged once rather than every second.
    fn check(&self, failed: &mut HashMap<String, Vec<FileStamp>>) {
        let snapshot = self.snapshot.load();
        for certs in &self.listeners {
            let spec = snapshot
                .config
                .listener(&certs.listener)
                .and_then(|l| l.tls.as_ref());
            let Some(spec) = spec else { continue };
            let now = stamps(spec);
            if failed.get(&certs.listener) == Some(&now) {
                continue;
            }
            match certs.refresh(spec) {
                Ok(false) => {}
                Ok(true) => {
                    failed.remove(&certs.listener);
                    log::info!("listener {}: certificates reloaded", certs.listener);
                }
                Err(e) => {
                    failed.insert(certs.listener.clone(), now);
                    log::error!(
                        "listener {}: certificates not reloaded, the ones in use stay: {e}",
                        certs.listener
                    );
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CertificateReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failed = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.check(&mut failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Alpn, SniCertificate};

    fn certs(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conf/test-certs")
            .join(file)
    }

    fn spec() -> TlsSpec {
        TlsSpec {
            cert: certs("server.crt"),
            key: certs("server.key"),
            alpn: Alpn::H2H1,
            certificates: vec![SniCertificate {
                hosts: vec!["second.test".into(), "*.second.test".into()],
                cert: certs("second.crt"),
                key: certs("second.key"),
            }],
            min_version: TlsVersion::V1_2,
        }
    }

    /// A ClientHello record with these `supported_versions` (none: no such extension).
    fn hello(versions: Option<&[[u8; 2]]>) -> Vec<u8> {
        let mut exts = vec![0x00, 0x00, 0x00, 0x00]; // an empty server_name extension
        if let Some(v) = versions {
            exts.extend([
                0x00,
                0x2b,
                0x00,
                (1 + 2 * v.len()) as u8,
                (2 * v.len()) as u8,
            ]);
            exts.extend(v.iter().flatten());
        }
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.extend([0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![0x01, 0x00];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((hs.len() as u16).to_be_bytes());
        record.extend(hs);
        record
    }

    #[test]
    fn hellos_are_read_for_tls13() {
        assert_eq!(
            hello_offers_tls13(&hello(Some(&[[3, 4], [3, 3]]))),
            Some(true)
        );
        assert_eq!(hello_offers_tls13(&hello(Some(&[[3, 3]]))), Some(false));
        assert_eq!(hello_offers_tls13(&hello(None)), Some(false));
        let whole = hello(Some(&[[3, 4]]));
        assert_eq!(
            hello_offers_tls13(&whole[..whole.len() - 1]),
            None,
            "cut short"
        );
        let mut alert = whole.clone();
        alert[0] = 0x15;
        assert_eq!(hello_offers_tls13(&alert), None);
        assert_eq!(hello_offers_tls13(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn names_pick_exact_then_wildcard_then_the_default() {
        let set = CertificateSet::load(&spec()).expect("loads");
        let second = set.pick(Some("second.test")).clone();
        assert!(!Arc::ptr_eq(&second, &set.default));
        assert!(Arc::ptr_eq(set.pick(Some("A.Second.Test.")), &second));
        assert!(
            Arc::ptr_eq(set.pick(Some("a.b.second.test")), &set.default),
            "one label only"
        );
        assert!(Arc::ptr_eq(set.pick(Some("localhost")), &set.default));
        assert!(Arc::ptr_eq(set.pick(None), &set.default));
    }

    #[test]
    fn a_changed_spec_is_loaded_and_a_broken_one_leaves_the_set_in_use() {
        let listener = ListenerCertificates::load("tls", &spec()).expect("loads");
        assert_eq!(listener.refresh(&spec()), Ok(false), "nothing changed");
        let mut renewed = spec();
        renewed.certificates[0].cert = certs("renewed.crt");
        renewed.certificates[0].key = certs("renewed.key");
        assert_eq!(listener.refresh(&renewed), Ok(true));
        let mut broken = renewed.clone();
        broken.certificates[0].key = certs("second.key");
        let err = listener.refresh(&broken).expect_err("mismatched key");
        assert!(err.contains("does not match"), "{err}");
        assert_eq!(
            listener.current.load().spec,
            renewed,
            "the set in use stays"
        );
    }
}
