//! The `store:` block of the `verge control` config: the embedded file log (the default) or an
//! etcd cluster several replicas share; raw serde types and their validation, errors keyed.

use crate::config::units::ConfDuration;
use serde::Deserialize;
use std::time::Duration;

/// `store.etcd` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
    timeout: Option<ConfDuration>,
    tls: Option<RawEtcdTls>,
    auth: Option<RawEtcdAuth>,
}

/// `store.etcd.tls` as written: PEM files (relative to the config file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdTls {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
}

/// Client TLS to etcd: the CA that signed the members' certificates and, for clusters that
/// ask for client certificates (`--client-cert-auth`), the replica's own certificate and key.
#[derive(Clone, PartialEq)]
pub struct EtcdTls {
    /// PEM: the certificate authority (or authorities) the members' certificates chain to.
    pub ca: Vec<u8>,
    /// PEM: the replica's certificate chain and private key (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the members' certificates are checked against, instead of the endpoint's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &format!("{} bytes", self.ca.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<hidden>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// `store.etcd.auth` as written: a user and where its password is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdAuth {
    user: String,
    password_file: Option<String>,
    password_env: Option<String>,
}

/// An etcd user and its password (never printed).
#[derive(Clone, PartialEq)]
pub struct EtcdAuth {
    /// The etcd user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Where the control plane keeps policy and invalidations.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// The embedded fsynced log under `data_dir` (one replica).
    File,
    /// An etcd cluster: every replica with the same prefix is part of one control plane.
    Etcd(EtcdSettings),
}

/// A validated `store.etcd` block.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    /// `http://host:port` of each member (a bare `host:port` gets `http://`).
    pub endpoints: Vec<String>,
    /// Every key of this control plane starts with it; it ends with `/`.
    pub prefix: String,
    /// Longest wait for one etcd call (a write that takes longer gets 503).
    pub timeout: Duration,
    /// The user the replica authenticates as, on a cluster with authentication enabled.
    pub auth: Option<EtcdAuth>,
    /// Client TLS (the endpoints are then `https://`).
    pub tls: Option<Box<EtcdTls>>,
}

/// Validate `store:` (absent: the file store), pushing every error with its key path.
/// `store:` is `file` or `{etcd: {...}}` (YAML text, not serde_yaml 0.9's enum tags).
pub(super) fn validate_store(
    raw: Option<serde_yaml::Value>,
    push: &mut dyn FnMut(&str, String),
) -> StoreSettings {
    let etcd = match raw {
        None => return StoreSettings::File,
        Some(serde_yaml::Value::String(s)) if s == "file" => return StoreSettings::File,
        Some(serde_yaml::Value::Mapping(m)) if m.len() == 1 && m.contains_key("etcd") => {
            let value = m.get("etcd").cloned().unwrap_or_default();
            match serde_yaml::from_value::<RawEtcd>(value) {
                Ok(e) => e,
                Err(e) => {
                    push("store.etcd", e.to_string());
                    return StoreSettings::File;
                }
            }
        }
        Some(_) => {
            push(
                "store",
                "file, or etcd: {endpoints, prefix, timeout}".into(),
            );
            return StoreSettings::File;
        }
    };
    if etcd.endpoints.is_empty() {
        push(
            "store.etcd.endpoints",
            "list at least one member (http://host:port)".into(),
        );
    }
    let scheme = if etcd.tls.is_some() { "https" } else { "http" };
    let mut endpoints = Vec::new();
    for (i, e) in etcd.endpoints.iter().enumerate() {
        let key = format!("store.etcd.endpoints[{i}]");
        let e = e.trim();
        let other = if etcd.tls.is_some() {
            "http://"
        } else {
            "https://"
        };
        if e.starts_with(other) {
            let why = if etcd.tls.is_some() {
                "with store.etcd.tls every endpoint is https://host:port"
            } else {
                "https endpoints need store.etcd.tls (at least its ca)"
            };
            push(&key, why.into());
            continue;
        }
        let url = if e.contains("://") {
            e.to_string()
        } else {
            format!("{scheme}://{e}")
        };
        if is_host_port(&url) {
            endpoints.push(url);
        } else {
            push(&key, format!("{e:?} is not {scheme}://host:port"));
        }
    }
    let prefix = etcd.prefix.unwrap_or_else(|| "/verge/".into());
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains(char::is_whitespace) {
        push(
            "store.etcd.prefix",
            format!("{prefix:?}: a key prefix like /verge/ (a leading /, no spaces)"),
        );
    }
    let prefix = if prefix.ends_with('/') {
        prefix
    } else {
        format!("{prefix}/")
    };
    let timeout = etcd.timeout.map_or(Duration::from_secs(5), |d| d.0);
    if timeout.is_zero() {
        push("store.etcd.timeout", "must be greater than zero".into());
    }
    let tls = etcd.tls.and_then(|t| etcd_tls(t, push)).map(Box::new);
    let auth = etcd.auth.and_then(|a| etcd_auth(a, push));
    StoreSettings::Etcd(EtcdSettings {
        endpoints,
        prefix,
        timeout,
        auth,
        tls,
    })
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Read the PEM file at `key` and check it holds what it should.
fn read_pem(
    path: &str,
    what: Pem,
    key: &str,
    push: &mut dyn FnMut(&str, String),
) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|e| push(key, format!("cannot read {path:?}: {e}")))
        .ok()?;
    let ok = match what {
        Pem::Certificates => {
            let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
            certs.is_ok_and(|c| !c.is_empty())
        }
        Pem::PrivateKey => matches!(
            rustls_pemfile::private_key(&mut bytes.as_slice()),
            Ok(Some(_))
        ),
    };
    if !ok {
        let want = match what {
            Pem::Certificates => "a PEM certificate",
            Pem::PrivateKey => "a PEM private key",
        };
        push(key, format!("{path:?} does not hold {want}"));
        return None;
    }
    Some(bytes)
}

/// `store.etcd.tls`: the CA (required), and a client certificate with its key, or neither.
fn etcd_tls(raw: RawEtcdTls, push: &mut dyn FnMut(&str, String)) -> Option<EtcdTls> {
    let ca = match &raw.ca {
        Some(path) => read_pem(path, Pem::Certificates, "store.etcd.tls.ca", push),
        None => {
            push(
                "store.etcd.tls.ca",
                "required: the CA file that signed the members' certificates".into(),
            );
            None
        }
    };
    let identity = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Some((
            read_pem(cert, Pem::Certificates, "store.etcd.tls.cert", push),
            read_pem(key, Pem::PrivateKey, "store.etcd.tls.key", push),
        )),
        (None, None) => None,
        _ => {
            push(
                "store.etcd.tls",
                "cert and key go together (a client certificate and its private key)".into(),
            );
            None
        }
    };
    if let Some(name) = &raw.server_name {
        if name.is_empty() || name.contains(char::is_whitespace) {
            push(
                "store.etcd.tls.server_name",
                format!("{name:?} is not a host name"),
            );
        }
    }
    let identity = match identity {
        Some((cert, key)) => Some((cert?, key?)),
        None => None,
    };
    Some(EtcdTls {
        ca: ca?,
        identity,
        server_name: raw.server_name,
    })
}

/// `store.etcd.auth`: the user, and its password from exactly one of a file or a variable.
fn etcd_auth(raw: RawEtcdAuth, push: &mut dyn FnMut(&str, String)) -> Option<EtcdAuth> {
    use crate::config::secret::{read_secret, SecretSource};
    if raw.user.trim().is_empty() {
        push("store.etcd.auth.user", "must not be empty".into());
    }
    let password = match (&raw.password_file, &raw.password_env) {
        (Some(file), None) => read_secret(SecretSource::File(std::path::Path::new(file)))
            .map_err(|e| push("store.etcd.auth.password_file", e.to_string()))
            .ok(),
        (None, Some(var)) => read_secret(SecretSource::Env(var))
            .map_err(|e| push("store.etcd.auth.password_env", e.to_string()))
            .ok(),
        _ => {
            push(
                "store.etcd.auth",
                "set exactly one of password_file, password_env".into(),
            );
            None
        }
    };
    Some(EtcdAuth {
        user: raw.user,
        password: password?,
    })
}

/// `http://host:port`, with no path.
fn is_host_port(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| u.port_u16().is_some() && u.path_and_query().is_none_or(|p| p == "/"))
}

#[cfg(test)]
mod tests {
    use super::super::settings::ControlSettings;
    use super::*;

    #[test]
    fn file_is_the_default_and_etcd_is_validated_with_key_paths() {
        let s = ControlSettings::from_yaml_str("insecure_no_auth: true\n").unwrap();
        assert_eq!(s.store, StoreSettings::File);
        let s = ControlSettings::from_yaml_str("insecure_no_auth: true\nstore: file\n").unwrap();
        assert_eq!(s.store, StoreSettings::File);
        let s = ControlSettings::from_yaml_str(
            "insecure_no_auth: true\nstore:\n  etcd:\n    endpoints: [127.0.0.1:2379, \"http://127.0.0.1:2380\"]\n    prefix: /cp1\n    timeout: 2s\n",
        )
        .unwrap();
        assert_eq!(
            s.store,
            StoreSettings::Etcd(EtcdSettings {
                endpoints: vec![
                    "http://127.0.0.1:2379".into(),
                    "http://127.0.0.1:2380".into()
                ],
                prefix: "/cp1/".into(),
                timeout: Duration::from_secs(2),
                auth: None,
                tls: None,
            })
        );
        let e = ControlSettings::from_yaml_str(
            "insecure_no_auth: true\nstore:\n  etcd:\n    endpoints: [\"https://a:1\", \"nope/x\"]\n    prefix: verge\n    timeout: 0s\n    auth: {user: u}\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "store.etcd.endpoints[0]: https endpoints need store.etcd.tls",
            "store.etcd.endpoints[1]: \"nope/x\" is not http://host:port",
            "store.etcd.prefix:",
            "store.etcd.timeout: must be greater than zero",
            "store.etcd.auth: set exactly one of password_file, password_env",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        let e = ControlSettings::from_yaml_str("insecure_no_auth: true\nstore: {etcd: {}}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.etcd.endpoints: list at least one"), "{e}");
        let e = ControlSettings::from_yaml_str("insecure_no_auth: true\nstore: zookeeper\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store: file, or etcd"), "{e}");
        let e = ControlSettings::from_yaml_str(
            "insecure_no_auth: true\nstore: {etcd: {endpoints: [a:1], bogus: 1}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.etcd: unknown field `bogus`"), "{e}");
    }

    #[test]
    fn tls_reads_its_pem_files_and_switches_endpoints_to_https() {
        let dir = tempfile::tempdir().unwrap();
        let cert = "conf/test-certs/server.crt";
        let key = "conf/test-certs/server.key";
        let yaml = |tls: &str| {
            format!(
                "insecure_no_auth: true\nstore:\n  etcd:\n    endpoints: [127.0.0.1:2379, \"https://h:1\"]\n    tls: {tls}\n"
            )
        };
        let s = ControlSettings::from_yaml_str(&yaml(&format!(
            "{{ca: {cert}, cert: {cert}, key: {key}, server_name: localhost}}"
        )))
        .unwrap();
        let StoreSettings::Etcd(e) = s.store else {
            panic!("etcd")
        };
        assert_eq!(e.endpoints, ["https://127.0.0.1:2379", "https://h:1"]);
        let tls = e.tls.unwrap();
        assert_eq!(tls.ca, std::fs::read(cert).unwrap());
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
        assert!(tls.identity.is_some());
        assert!(
            !format!("{tls:?}").contains("PRIVATE"),
            "the key is not printed"
        );

        let not_pem = dir.path().join("x.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = ControlSettings::from_yaml_str(&format!(
            "insecure_no_auth: true\nstore:\n  etcd:\n    endpoints: [\"http://a:1\"]\n    tls: {{ca: {}, cert: {cert}}}\n",
            not_pem.display()
        ))
        .unwrap_err()
        .to_string();
        for needle in [
            "store.etcd.endpoints[0]: with store.etcd.tls every endpoint is https://",
            "does not hold a PEM certificate",
            "store.etcd.tls: cert and key go together",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        let e = ControlSettings::from_yaml_str(&yaml(&format!("{{cert: {cert}, key: {cert}}}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.etcd.tls.ca: required"), "{e}");
        assert!(e.contains("store.etcd.tls.key: \"conf/test-certs/server.crt\" does not hold a PEM private key"), "{e}");
    }
}
