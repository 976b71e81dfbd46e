//! Loads every listener's certificate chain and private key as serving will, and reports what
//! would fail at start or at the first handshake: PEM that does not decode, a key that does not
//! match its certificate, a certificate that has expired or is not valid yet.

use crate::config::{Config, ConfigError, ConfigErrors};
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{CertificateDer, CryptoProvider, PrivateKeyDer, RusTlsError, ServerConfig};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every certificate problem of `config`'s listeners at time `now`, with key paths such as
/// `listeners[0].tls.key`; `Ok` when every pair loads, matches and is valid now.
pub fn check_certificates(config: &Config, now: SystemTime) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(tls) = &listener.tls {
            let path = format!("listeners[{i}].tls");
            errors.extend(check_pair(&path, &tls.cert, &tls.key, now));
            for (j, more) in tls.certificates.iter().enumerate() {
                let path = format!("{path}.certificates[{j}]");
                errors.extend(check_pair(&path, &more.cert, &more.key, now));
            }
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    let mut errors = ConfigErrors::new(errors);
    errors.file = config.source.clone();
    Err(errors)
}

/// The problems of one certificate chain file and key file.
pub fn check_pair(path: &str, cert: &Path, key: &Path, now: SystemTime) -> Vec<ConfigError> {
    let error = |key: &str, message: String| ConfigError::new(format!("{path}.{key}"), message);
    let certs = match read_certs(cert) {
        Ok(c) => c,
        Err(m) => return vec![error("cert", m)],
    };
    let key_der = match read_key(key) {
        Ok(k) => k,
        Err(m) => return vec![error("key", m)],
    };
    let mut errors = Vec::new();
    for (n, der) in certs.iter().enumerate() {
        let which = if n == 0 {
            format!("{}: the certificate", cert.display())
        } else {
            format!("{}: chain certificate #{n}", cert.display())
        };
        match validity(der) {
            None => errors.push(error(
                "cert",
                format!("{which} is not a decodable X.509 certificate"),
            )),
            Some((not_before, not_after)) => {
                let now = unix_seconds(now);
                if not_after.unix() < now {
                    errors.push(error("cert", format!("{which} expired on {not_after}")));
                } else if not_before.unix() > now {
                    errors.push(error(
                        "cert",
                        format!("{which} is not valid before {not_before}"),
                    ));
                }
            }
        }
    }
    pingora_core::tls::install_default_crypto_provider();
    let Some(provider) = CryptoProvider::get_default() else {
        errors.push(error(
            "key",
            "no TLS crypto provider to load it with".into(),
        ));
        return errors;
    };
    let built = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_single_cert(certs, key_der));
    match built {
        Ok(Ok(_)) => {}
        Ok(Err(RusTlsError::InconsistentKeys(_))) => errors.push(error(
            "key",
            format!(
                "{} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
        )),
        Ok(Err(e)) | Err(e) => errors.push(error(
            "key",
            format!("{} cannot serve {}: {e}", key.display(), cert.display()),
        )),
    }
    errors
}

/// A certificate chain and its key, loaded as a TLS listener serves them (the same reading as
/// [`check_pair`], without the validity dates).
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(cert)?;
    let key_der = read_key(key)?;
    pingora_core::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider to load the key with".to_string())?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{} does not match the certificate in {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

fn read_key(key: &Path) -> Result<PrivateKeyDer<'static>, String> {
    std::fs::read(key)
        .map_err(|e| format!("{}: {e}", key.display()))
        .and_then(|bytes| {
            rustls_pemfile::private_key(&mut bytes.as_slice())
                .map_err(|e| format!("{}: undecodable PEM: {e}", key.display()))?
                .ok_or_else(|| format!("{}: no PEM private key in it", key.display()))
        })
}

fn read_certs(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: undecodable PEM: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", cert.display()));
    }
    Ok(certs)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A certificate time (UTCTime or GeneralizedTime), to the second, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl CertTime {
    /// Seconds since the Unix epoch.
    pub fn unix(&self) -> i64 {
        // days from civil (proleptic Gregorian), Howard Hinnant's algorithm
        let (m, d) = (i64::from(self.month), i64::from(self.day));
        let y = if m <= 2 { self.year - 1 } else { self.year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `YYMMDDHHMMSSZ` (tag 0x17) or `YYYYMMDDHHMMSSZ` (tag 0x18).
    fn parse(tag: u8, text: &[u8]) -> Option<CertTime> {
        let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
        let (year, rest) = match tag {
            0x17 if text.len() == 12 => {
                let yy: i64 = text.get(..2)?.parse().ok()?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
            }
            0x18 if text.len() == 14 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
            _ => return None,
        };
        let two = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
        let t = CertTime {
            year,
            month: two(0)?,
            day: two(2)?,
            hour: two(4)?,
            minute: two(6)?,
            second: two(8)?,
        };
        let valid = (1..=12).contains(&t.month)
            && (1..=31).contains(&t.day)
            && t.hour < 24
            && t.minute < 60
            && t.second < 61;
        valid.then_some(t)
    }
}

impl fmt::Display for CertTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `notBefore` and `notAfter` of a DER X.509 certificate.
pub fn validity(der: &[u8]) -> Option<(CertTime, CertTime)> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, certificate, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, absent in a version 1 certificate
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name
    for expected in [0x02, SEQUENCE, SEQUENCE] {
        let (tag, _, after) = element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (SEQUENCE, validity, _) = element(rest)? else {
        return None;
    };
    let (tag1, before, after) = element(validity)?;
    let (tag2, not_after, _) = element(after)?;
    Some((
        CertTime::parse(tag1, before)?,
        CertTime::parse(tag2, not_after)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn certs(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conf/test-certs")
            .join(name)
    }

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    #[test]
    fn times_convert_to_unix_seconds() {
        let t = CertTime::parse(0x17, b"200201000000Z").expect("utc");
        assert_eq!(t.unix(), 1_580_515_200);
        assert_eq!(t.to_string(), "2020-02-01 00:00:00 UTC");
        let g = CertTime::parse(0x18, b"20361119095421Z").expect("generalized");
        assert_eq!(g.unix(), 2_110_701_261);
        assert!(
            CertTime::parse(0x17, b"201301000000Z").is_none(),
            "month 13"
        );
    }

    #[test]
    fn a_good_pair_passes_and_expiry_is_judged_against_now() {
        let (crt, key) = (certs("server.crt"), certs("server.key"));
        assert!(check_pair("t", &crt, &key, at(2_000_000_000)).is_empty());
        let late = check_pair("t", &crt, &key, at(2_200_000_000));
        assert_eq!(late.len(), 1, "{late:?}");
        assert!(
            late[0]
                .message
                .ends_with("expired on 2036-11-19 09:54:21 UTC"),
            "{late:?}"
        );
        let early = check_pair("t", &crt, &key, at(1_000_000_000));
        assert!(
            early[0].message.contains("is not valid before 2026-11-22"),
            "{early:?}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let e = check_pair(
            "t",
            &certs("server.crt"),
            &certs("other.key"),
            at(2_000_000_000),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "t.key");
        assert!(
            e[0].message.contains("does not match the certificate"),
            "{e:?}"
        );
    }

    #[test]
    fn every_sni_certificate_is_checked_at_its_key_path() {
        let yaml = format!(
            "listeners:\n  - listen: 127.0.0.1:8443\n    tls: {{cert: {c}, key: {k}, certificates: \
             [{{hosts: [a.test], cert: {c2}, key: {k}}}]}}\npools: {{p: {{backends: \
             [\"127.0.0.1:1\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p}}]\n",
            c = certs("server.crt").display(),
            k = certs("server.key").display(),
            c2 = certs("second.crt").display(),
        );
        let config = Config::from_yaml_str(&yaml).expect("valid YAML");
        let e = check_certificates(&config, at(2_000_000_000)).expect_err("a mismatched key");
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["listeners[0].tls.certificates[0].key"]);
        assert!(load_certified_key(&certs("second.crt"), &certs("second.key")).is_ok());
        let err =
            load_certified_key(&certs("second.crt"), &certs("server.key")).expect_err("mismatched");
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let e = check_pair(
            "t",
            &certs("expired.crt"),
            &certs("expired.key"),
            SystemTime::now(),
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].message.ends_with("expired on 2020-02-01 00:00:00 UTC"),
            "{e:?}"
        );
    }

    #[test]
    fn undecodable_files_are_named() {
        let dir = tempfile::tempdir().expect("dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(
            &junk,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = check_pair("t", &junk, &certs("server.key"), SystemTime::now());
        assert_eq!(e[0].path, "t.cert");
        assert!(e[0].message.contains("undecodable PEM"), "{e:?}");
        let e = check_pair("t", &certs("server.crt"), &junk, SystemTime::now());
        assert_eq!(e[0].path, "t.key");
        assert!(e[0].message.contains("undecodable PEM"), "{e:?}");
        let e = check_pair(
            "t",
            &certs("server.crt"),
            &certs("server.crt"),
            SystemTime::now(),
        );
        assert_eq!(e[0].path, "t.key");
        assert!(e[0].message.contains("no PEM private key"), "{e:?}");
    }
}
