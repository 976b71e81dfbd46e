//! The control plane's audit log (`audit_log`): one JSON line per API call, refused ones
//! included, with when, which token, from which address, what was asked and the answer.

use super::wire::unix_ms;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Request and answer bodies up to this size are recorded as they are; larger ones by size.
const RECORDED_BODY: usize = 16 << 10;

/// An append-only JSON-lines file, written before each answer leaves.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

/// One API call as the audit log records it.
#[derive(Debug)]
pub struct AuditEntry<'a> {
    /// The token's name (`None`: no token, or one the control plane does not know).
    pub token: Option<&'a str>,
    /// The caller's address.
    pub client: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string.
    pub query: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// The status answered.
    pub status: u16,
    /// The answer's body.
    pub answer: &'a [u8],
}

impl AuditLog {
    /// Open (or create) the log for appending; its directory is created if missing.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Append one line for `entry`. A write that fails is logged; the call is still answered.
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let mut line = entry.to_json().to_string();
        line.push('\n');
        if let Err(e) = self.file.lock().write_all(line.as_bytes()) {
            log::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }
}

impl AuditEntry<'_> {
    fn to_json(&self) -> Value {
        // Reads are recorded by size (a snapshot can be megabytes); writes and refusals in full.
        let answer = if self.method != "GET" || self.status >= 400 {
            body_value(self.answer)
        } else {
            json!({ "bytes": self.answer.len() })
        };
        json!({
            "ts_ms": unix_ms(SystemTime::now()),
            "token": self.token,
            "client": self.client,
            "request": {
                "method": self.method,
                "path": self.path,
                "query": self.query,
                "body": (!self.body.is_empty()).then(|| body_value(self.body)),
            },
            "status": self.status,
            "answer": answer,
        })
    }
}

/// A body as JSON when it is JSON and small enough, else its size.
fn body_value(body: &[u8]) -> Value {
    if body.len() <= RECORDED_BODY {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            return v;
        }
    }
    json!({ "bytes": body.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let big = vec![b'x'; RECORDED_BODY + 1];
        log.record(&AuditEntry {
            token: Some("ops"),
            client: Some("127.0.0.1:5000"),
            method: "POST",
            path: "/v1/invalidations",
            query: "",
            body: br#"{"kind":"host","target":"a.test"}"#,
            status: 403,
            answer: br#"{"error":"no"}"#,
        });
        log.record(&AuditEntry {
            token: None,
            client: None,
            method: "GET",
            path: "/v1/snapshot",
            query: "after=1.2",
            body: b"",
            status: 200,
            answer: &big,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["token"], "ops");
        assert_eq!(lines[0]["request"]["body"]["kind"], "host");
        assert_eq!(lines[0]["answer"]["error"], "no");
        assert_eq!(lines[1]["token"], Value::Null);
        assert_eq!(lines[1]["request"]["body"], Value::Null);
        assert_eq!(lines[1]["answer"]["bytes"], RECORDED_BODY + 1);
    }
}
