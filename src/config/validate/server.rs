//! The node's own sections: `server` (with `client_ip`), `admin`, `control`, `purge` and
//! `access_log`.

use super::listeners::parse_listen_addr;
use super::valid_name;
use super::{address_blocks, Errors};
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::secret::{read_secret, SecretSource};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub(super) fn validate_control(raw: RawControl, errs: &mut Errors) -> Option<ControlSpec> {
    let before = errs.len();
    let (key, given) = match (raw.url, raw.urls) {
        (Some(url), None) => ("control.url", vec![url]),
        (None, Some(urls)) => ("control.urls", urls),
        (Some(_), Some(_)) => {
            errs.push("control", "set url or urls, not both");
            ("control.urls", Vec::new())
        }
        (None, None) => {
            errs.push(
                "control",
                "set url (or urls: one per control-plane replica)",
            );
            ("control.urls", Vec::new())
        }
    };
    let mut urls: Vec<String> = Vec::new();
    for (i, url) in given.iter().enumerate() {
        let at = if key == "control.url" {
            key.to_string()
        } else {
            format!("{key}[{i}]")
        };
        let url = url.trim_end_matches('/').to_string();
        match url.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") || u.scheme_str() == Some("https") => {
                if u.host().is_none() {
                    errs.push(at.clone(), format!("{url:?} has no host"));
                }
            }
            _ => errs.push(
                at.clone(),
                format!("{url:?} is not an http:// or https:// URL"),
            ),
        }
        if urls.contains(&url) {
            errs.push(at, format!("{url:?} is listed twice"));
        }
        urls.push(url);
    }
    if key == "control.urls" && given.is_empty() && errs.len() == before {
        errs.push(key, "list at least one control-plane URL");
    }
    let node_id = raw.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "verge-node".into())
    });
    if !valid_name(&node_id) {
        errs.push(
            "control.node_id",
            "use letters, digits, '-', '_' and '.' only (at most 128)",
        );
    }
    let token = match (raw.token_file, raw.token_env) {
        (Some(_), Some(_)) => {
            errs.push("control", "set token_file or token_env, not both");
            None
        }
        (Some(file), None) => read_secret(SecretSource::File(Path::new(&file)))
            .map_err(|e| errs.push("control.token_file", e.to_string()))
            .ok(),
        (None, Some(var)) => read_secret(SecretSource::Env(&var))
            .map_err(|e| errs.push("control.token_env", e.to_string()))
            .ok(),
        (None, None) => None,
    };
    let wait = raw.wait.map_or(Duration::from_secs(30), |d| d.0);
    if wait.is_zero() || wait > Duration::from_secs(300) {
        errs.push("control.wait", "must be between 1ms and 300s");
    }
    let state_file = raw
        .state_file
        .unwrap_or_else(|| format!("/var/lib/verge/{node_id}.snapshot.json"))
        .into();
    let mut verify_keys = Vec::new();
    for (i, path) in raw.verify_keys.iter().enumerate() {
        match crate::config::keys::read_verifying_key(Path::new(path)) {
            Ok(k) => verify_keys.push(k),
            Err(e) => errs.push(format!("control.verify_keys[{i}]"), e),
        }
    }
    (errs.len() == before).then_some(ControlSpec {
        urls,
        node_id,
        token,
        state_file,
        wait,
        verify_keys,
    })
}

pub(super) fn validate_server(raw: RawServer, errs: &mut Errors) -> ServerSettings {
    // one worker thread per core, as nginx's `worker_processes auto`
    let threads = raw.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads == 0 || threads > 1024 {
        errs.push("server.threads", "must be between 1 and 1024");
    }
    let grace_period = raw.grace_period.map_or(Duration::from_secs(5), |d| d.0);
    let graceful_shutdown_timeout = raw
        .graceful_shutdown_timeout
        .map_or(Duration::from_secs(5), |d| d.0);
    if let Some(ca) = &raw.ca_file {
        if !Path::new(ca).is_file() {
            errs.push("server.ca_file", format!("file {ca:?} does not exist"));
        }
    }
    let client_ip = raw.client_ip.map(|c| validate_client_ip(c, errs));
    let log_level = match raw
        .log_level
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("info") => log::LevelFilter::Info,
        Some("error") => log::LevelFilter::Error,
        Some("warn") => log::LevelFilter::Warn,
        Some("debug") => log::LevelFilter::Debug,
        Some("trace") => log::LevelFilter::Trace,
        Some("off") => log::LevelFilter::Off,
        Some(other) => {
            errs.push(
                "server.log_level",
                format!("{other:?} is not one of error, warn, info, debug, trace, off"),
            );
            log::LevelFilter::Info
        }
    };
    ServerSettings {
        log_level,
        client_ip,
        threads,
        grace_period,
        graceful_shutdown_timeout,
        pid_file: raw.pid_file.unwrap_or_else(|| "/tmp/verge.pid".into()),
        upgrade_sock: raw
            .upgrade_sock
            .unwrap_or_else(|| "/tmp/verge_upgrade.sock".into()),
        error_log: raw.error_log,
        ca_file: raw.ca_file,
    }
}

pub(super) fn validate_admin(raw: RawAdmin, errs: &mut Errors) -> AdminSettings {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:9901");
    AdminSettings {
        listen: parse_listen_addr("admin.listen", listen, errs)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
    }
}

/// `purge.allow`: the clients allowed to send `PURGE`.
pub(super) fn validate_purge(raw: RawPurge, errs: &mut Errors) -> PurgeSpec {
    if raw.allow.is_empty() {
        errs.push(
            "purge.allow",
            "list at least one client address or CIDR block",
        );
    }
    let allow = address_blocks("purge.allow", &raw.allow, errs);
    PurgeSpec { allow }
}

/// `access_log`: `path` (`-` for stdout, else a file in a directory that exists), `format` and
/// `fields`.
pub(super) fn validate_access_log(
    raw: RawAccessLog,
    errs: &mut Errors,
) -> Option<crate::config::AccessLogSpec> {
    let format = log_format(raw.format.as_deref(), raw.fields, errs);
    let target = if raw.path == "-" {
        crate::config::LogTarget::Stdout
    } else {
        let path = std::path::PathBuf::from(&raw.path);
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                errs.push(
                    "access_log.path",
                    format!("directory {} does not exist", dir.display()),
                );
                return None;
            }
            _ => crate::config::LogTarget::File(path),
        }
    };
    Some(crate::config::AccessLogSpec { target, format })
}

/// `access_log.format` and `access_log.fields`: `time` always comes first, once.
fn log_format(
    format: Option<&str>,
    fields: Option<Vec<String>>,
    errs: &mut Errors,
) -> crate::config::LogFormat {
    use crate::config::{LogField, LogFormat};
    match format {
        None | Some("json") => {}
        Some("combined") => {
            if fields.is_some() {
                errs.push(
                    "access_log.fields",
                    "the combined format has fixed fields: fields are for format: json",
                );
            }
            return LogFormat::Combined;
        }
        Some(other) => errs.push(
            "access_log.format",
            format!("must be json or combined, not {other:?}"),
        ),
    }
    let Some(names) = fields else {
        return LogFormat::default();
    };
    let mut out = vec![LogField::Time];
    for (i, name) in names.iter().enumerate() {
        match LogField::parse(name) {
            Some(LogField::Time) => {}
            Some(field) if out.contains(&field) => errs.push(
                format!("access_log.fields[{i}]"),
                format!("{name:?} is listed twice"),
            ),
            Some(field) => out.push(field),
            None => {
                let known: Vec<&str> = LogField::ALL.iter().map(|(_, n)| *n).collect();
                errs.push(
                    format!("access_log.fields[{i}]"),
                    format!("unknown field {name:?}: one of {}", known.join(", ")),
                );
            }
        }
    }
    LogFormat::Json(out)
}

/// `server.client_ip`: the header and the proxies trusted to write it.
fn validate_client_ip(raw: RawClientIp, errs: &mut Errors) -> ClientIpSpec {
    let name = raw.header.as_deref().unwrap_or("x-forwarded-for");
    let header = http::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
        errs.push(
            "server.client_ip.header",
            format!("invalid header name {name:?}"),
        );
        http::header::FORWARDED
    });
    if raw.trusted_proxies.is_empty() {
        errs.push(
            "server.client_ip.trusted_proxies",
            "list at least one proxy address or CIDR block",
        );
    }
    let path = "server.client_ip.trusted_proxies";
    ClientIpSpec {
        header,
        trusted_proxies: address_blocks(path, &raw.trusted_proxies, errs),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LogField, LogFormat};

    #[test]
    fn access_log_formats_and_fields_validate_at_their_key_paths() {
        let base = "listeners: [{listen: \"127.0.0.1:8080\"}]\npools: {p: {backends: \
                    [\"127.0.0.1:1\"]}}\nroutes: [{hosts: [a.com], pool: p}]\n";
        let format = |yaml: &str| {
            Config::from_yaml_str(&format!("{base}access_log: {yaml}\n"))
                .map(|c| c.access_log.map(|a| a.format))
        };
        assert_eq!(
            format("{path: \"-\"}").expect("valid"),
            Some(LogFormat::default())
        );
        assert_eq!(
            format("{path: \"-\", format: combined}").expect("valid"),
            Some(LogFormat::Combined)
        );
        assert_eq!(
            format("{path: \"-\", fields: [status, time, user_agent]}").expect("valid"),
            Some(LogFormat::Json(vec![
                LogField::Time,
                LogField::Status,
                LogField::UserAgent
            ])),
            "time first, once"
        );
        let errs = format("{path: \"-\", format: xml, fields: [status, nope, status]}")
            .expect_err("invalid")
            .errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "access_log.format",
                "access_log.fields[1]",
                "access_log.fields[2]"
            ]
        );
        let errs = format("{path: \"-\", format: combined, fields: [status]}")
            .expect_err("invalid")
            .errors;
        assert_eq!(errs[0].path, "access_log.fields");
    }

    #[test]
    fn client_ip_validates_with_every_error_at_its_key_path() {
        let base = "listeners: [{listen: \"127.0.0.1:8080\"}]\npools: {p: {backends: \
                    [\"127.0.0.1:1\"]}}\nroutes: [{hosts: [a.com], pool: p}]\n";
        let good = format!("{base}server: {{client_ip: {{trusted_proxies: [10.0.0.0/8]}}}}\n");
        let c = Config::from_yaml_str(&good).expect("valid");
        let spec = c.server.client_ip.expect("client_ip");
        assert_eq!(
            spec.header.as_str(),
            "x-forwarded-for",
            "the default header"
        );
        let bad =
            format!("{base}server: {{client_ip: {{header: \"a b\", trusted_proxies: [nope]}}}}\n");
        let errs = Config::from_yaml_str(&bad).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.client_ip.header",
                "server.client_ip.trusted_proxies[0]"
            ]
        );
    }

    #[test]
    fn verify_keys_are_read_and_each_bad_one_named() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/control");
        let doc = |list: &str| {
            format!("listeners: [{{listen: \"127.0.0.1:8080\"}}]\ncontrol: {{url: \"http://127.0.0.1:9\", verify_keys: [{list}]}}\n")
        };
        let good = Config::from_yaml_str(&doc(&format!("{keys}/dev-signing.pub"))).expect("valid");
        assert_eq!(good.control.expect("control").verify_keys.len(), 1);
        let bad = doc(&format!(
            "{keys}/dev-signing.pub, {keys}/dev-signing.key, /nonexistent.pub"
        ));
        let errs = Config::from_yaml_str(&bad).expect_err("invalid").errors;
        // (without a usable control block, pools and routes are required too)
        let paths: Vec<&str> = errs
            .iter()
            .map(|e| e.path.as_str())
            .filter(|p| p.starts_with("control"))
            .collect();
        assert_eq!(paths, ["control.verify_keys[1]", "control.verify_keys[2]"]);
        assert!(
            errs[0].message.contains("not an Ed25519 public key"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn control_urls_list_replicas_and_each_bad_one_is_named() {
        let doc = |control: &str| {
            format!("listeners: [{{listen: \"127.0.0.1:8080\"}}]\ncontrol: {control}\n")
        };
        let good = Config::from_yaml_str(&doc(
            "{urls: [\"http://10.0.0.1:9900/\", \"https://cp.example\"]}",
        ))
        .expect("valid");
        assert_eq!(
            good.control.expect("control").urls,
            ["http://10.0.0.1:9900", "https://cp.example"]
        );
        let one = Config::from_yaml_str(&doc("{url: \"http://10.0.0.1:9900\"}")).expect("valid");
        assert_eq!(one.control.expect("control").urls, ["http://10.0.0.1:9900"]);
        let control_errors = |control: &str| -> Vec<String> {
            let errs = Config::from_yaml_str(&doc(control))
                .expect_err("invalid")
                .errors;
            errs.iter()
                .filter(|e| e.path.starts_with("control"))
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        };
        let errs = control_errors("{urls: [\"http://a:1\", \"ftp://b\", \"http://a:1/\"]}");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("control.urls[1]: "), "{errs:?}");
        assert!(errs[1].starts_with("control.urls[2]: "), "{errs:?}");
        assert!(errs[1].contains("listed twice"), "{errs:?}");
        let errs = control_errors("{urls: []}");
        assert_eq!(errs, ["control.urls: list at least one control-plane URL"]);
        let errs = control_errors("{url: \"http://a:1\", urls: [\"http://b:1\"]}");
        assert_eq!(errs, ["control: set url or urls, not both"]);
        let errs = control_errors("{node_id: n}");
        assert_eq!(
            errs,
            ["control: set url (or urls: one per control-plane replica)"]
        );
    }

    #[test]
    fn log_level_is_one_of_the_levels() {
        let doc = |level: &str| {
            format!("listeners: [{{listen: \"127.0.0.1:8080\"}}]\npools: {{p: {{backends: [\"127.0.0.1:1\"]}}}}\nroutes: [{{hosts: [a.com], pool: p}}]\nserver: {{log_level: {level}}}\n")
        };
        let c = Config::from_yaml_str(&doc("DEBUG")).expect("valid");
        assert_eq!(c.server.log_level, log::LevelFilter::Debug);
        let errs = Config::from_yaml_str(&doc("loud"))
            .expect_err("invalid")
            .errors;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "server.log_level");
    }
}
