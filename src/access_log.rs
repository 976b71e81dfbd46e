//! The JSON access log: one line per request, written by a background thread to a file (reopened
//! when logrotate moves it) or stdout; never blocks a request (lines are dropped and counted when
//! the writer falls behind).

use crate::metrics::METRICS;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

/// Lines buffered between requests and the writer thread.
const QUEUE: usize = 65_536;

pub use crate::config::LogTarget;

/// A running access log.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
}

impl AccessLog {
    /// Open the target and start the writer thread.
    pub fn start(target: LogTarget) -> std::io::Result<AccessLog> {
        let out = Output::open(&target)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("verge-access-log".into())
            .spawn(move || write_loop(rx, out, target))?;
        Ok(AccessLog { tx })
    }

    /// Queue one line; drops it (and counts it) rather than wait when the writer is behind.
    pub fn log(&self, record: &Record<'_>) {
        if self.tx.try_send(record.to_json().to_string()).is_err() {
            METRICS.access_log_dropped.inc();
        }
    }
}

enum Output {
    Stdout(std::io::Stdout),
    File { writer: BufWriter<File>, inode: u64 },
}

impl Output {
    fn open(target: &LogTarget) -> std::io::Result<Output> {
        use std::os::unix::fs::MetadataExt;
        Ok(match target {
            LogTarget::Stdout => Output::Stdout(std::io::stdout()),
            LogTarget::File(p) => {
                let f = OpenOptions::new().create(true).append(true).open(p)?;
                let inode = f.metadata()?.ino();
                Output::File {
                    writer: BufWriter::with_capacity(64 << 10, f),
                    inode,
                }
            }
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => writeln!(s.lock(), "{line}"),
            Output::File { writer, .. } => writeln!(writer, "{line}"),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File { writer, .. } => writer.flush(),
        }
    }

    /// True when the file at the path is no longer the one we write (moved by logrotate).
    fn rotated(&self, target: &LogTarget) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self, target) {
            (Output::File { inode, .. }, LogTarget::File(p)) => {
                std::fs::metadata(p).map_or(true, |m| m.ino() != *inode)
            }
            _ => false,
        }
    }
}

fn write_loop(rx: Receiver<String>, mut out: Output, target: LogTarget) {
    let mut checked = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Err(e) = out.write_line(&line) {
                    log::error!("access log write failed: {e}");
                }
                continue_draining(&rx, &mut out);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
        let _ = out.flush();
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if out.rotated(&target) {
                let _ = out.flush();
                match Output::open(&target) {
                    Ok(o) => out = o,
                    Err(e) => log::error!("cannot reopen the access log: {e}"),
                }
            }
        }
    }
}

/// Write whatever else is already queued before flushing once.
fn continue_draining(rx: &Receiver<String>, out: &mut Output) {
    for line in rx.try_iter().take(4096) {
        if let Err(e) = out.write_line(&line) {
            log::error!("access log write failed: {e}");
        }
    }
}

/// One request, as the access log records it.
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    /// When the request head arrived.
    pub time: Option<SystemTime>,
    /// The client's IP address.
    pub client: Option<String>,
    /// The canonical host.
    pub host: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The path and query as received.
    pub path: &'a str,
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// The matched route, if any.
    pub route: Option<&'a str>,
    /// The route's pool, if one was picked.
    pub pool: Option<&'a str>,
    /// The backend that answered, if the request reached one.
    pub backend: Option<String>,
    /// The `verge_cache_lookups_total` result (`hit`, `miss`, …), on routes that cache.
    pub cache: Option<&'static str>,
    /// The cache key's hash (hex), on routes that cache.
    pub key: Option<String>,
    /// From sending the request upstream to its response header.
    pub origin_ms: Option<f64>,
    /// From the request head to the end of the response.
    pub total_ms: f64,
    /// The config or policy version that served the request.
    pub config: &'a str,
    /// The last invalidation sequence number applied.
    pub seq: u64,
    /// The request's `X-Request-Id`, on routes that give one.
    pub request_id: Option<&'a str>,
}

/// A cache key's hash as the log writes it (lowercase hex).
pub fn key_hex(key: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(key.len() * 2);
    for b in key {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl Record<'_> {
    /// The line written to the log.
    pub fn to_json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "time": self.time.map(rfc3339_millis),
            "client": self.client,
            "host": self.host,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes": self.bytes,
            "route": self.route,
            "pool": self.pool,
            "backend": self.backend,
            "cache": self.cache,
            "key": self.key,
            "origin_ms": self.origin_ms.map(round),
            "total_ms": round(self.total_ms),
            "config": self.config,
            "seq": self.seq,
            "request_id": self.request_id,
        })
    }
}

/// `2026-11-22T10:40:28.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    crate::unix_time::rfc3339_millis(crate::unix_time::unix_ms(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_343_523_811);
        assert_eq!(rfc3339_millis(t), "2026-11-22T10:32:03.811Z");
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn records_are_one_json_object() {
        let r = Record {
            host: "a.com",
            method: "GET",
            path: "/x?y=\"z\"",
            status: 200,
            total_ms: 1.23456,
            cache: Some("hit"),
            ..Record::default()
        };
        let line = r.to_json().to_string();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/x?y=\"z\"");
        assert_eq!(v["total_ms"], 1.235);
        assert_eq!(v["cache"], "hit");
        assert!(v["backend"].is_null());
    }

    #[test]
    fn file_log_is_written_and_reopened_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(LogTarget::File(path.clone())).unwrap();
        let rec = Record {
            host: "a",
            method: "GET",
            path: "/1",
            ..Record::default()
        };
        log.log(&rec);
        let wait_for = |p: &std::path::Path, needle: &str| {
            for _ in 0..100 {
                if std::fs::read_to_string(p).is_ok_and(|t| t.contains(needle)) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        };
        assert!(wait_for(&path, "\"/1\""));
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        // the writer notices the move within a second and opens a new file at the path
        std::thread::sleep(Duration::from_millis(1300));
        log.log(&Record { path: "/2", ..rec });
        assert!(
            wait_for(&path, "\"/2\""),
            "a new file was opened at the path"
        );
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        assert!(old.contains("\"/1\"") && !old.contains("\"/2\""), "{old}");
    }
}
