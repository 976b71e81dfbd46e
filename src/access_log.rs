//! The access log: one line per request, JSON (the configured fields, `time` first) or the
//! combined format, written by a background thread to a file (reopened when logrotate moves it)
//! or stdout; never blocks a request (lines are dropped and counted when the writer falls
//! behind). A [`LogSink`] is one opened destination; the config snapshot that serves a request
//! carries the sink and the format its line takes, so a reload switches both from the next line
//! on, and a sink no snapshot holds any more writes what it was given and closes.

use crate::config::{LogField, LogFormat, LogTarget};
use crate::metrics::METRICS;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Lines buffered between requests and the writer thread.
const QUEUE: usize = 65_536;

/// One opened destination of the access log (a file or stdout) and the thread writing to it.
/// Lines are written whole and in the order they were queued. When the last handle is dropped
/// (no snapshot, hence no request, can queue a line any more), the thread writes what is still
/// queued, flushes and closes the file.
#[derive(Debug)]
pub struct LogSink {
    tx: SyncSender<String>,
    target: LogTarget,
    /// The writer's end, until the first line starts its thread: the file is opened at start,
    /// but a thread started then would not outlive `--daemon`'s fork.
    writer: Mutex<Option<(Receiver<String>, Output)>>,
    started: AtomicBool,
}

impl LogSink {
    /// Open `target` (a file is created if missing and appended to) and start its writer
    /// thread. A file already open in another sink is opened again: this is how a reload
    /// reopens the log after logrotate moved it.
    pub fn open(target: &LogTarget) -> std::io::Result<Arc<LogSink>> {
        let out = Output::open(target)?;
        let (tx, rx) = sync_channel(QUEUE);
        Ok(Arc::new(LogSink {
            tx,
            target: target.clone(),
            writer: Mutex::new(Some((rx, out))),
            started: AtomicBool::new(false),
        }))
    }

    /// Start the writer thread, once.
    fn start(&self) {
        let Some((rx, out)) = self.writer.lock().take() else {
            return;
        };
        self.started.store(true, Ordering::Release);
        let target = self.target.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("verge-access-log".into())
            .spawn(move || write_loop(rx, out, target))
        {
            log::error!(
                "cannot start the access log's writer for {}: {e}",
                self.target
            );
        }
    }

    /// Where its lines go.
    pub fn target(&self) -> &LogTarget {
        &self.target
    }

    /// Queue `record`'s line in `format` (the serving config's `access_log.format`); drops it
    /// (and counts it) rather than wait when the writer is behind.
    pub fn log(&self, record: &Record<'_>, format: &LogFormat) {
        if !self.started.load(Ordering::Acquire) {
            self.start();
        }
        let mut line = record.line(format);
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            METRICS.access_log_dropped.inc();
        }
    }
}

#[derive(Debug)]
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

    /// Write one line (with its newline) in one piece: the buffer is flushed before a line
    /// that does not fit, never in the middle of one, so another sink appending to the same
    /// file (a reload's, while this one drains) never tears it.
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().write_all(line.as_bytes()),
            Output::File { writer, .. } => writer.write_all(line.as_bytes()),
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
                write_line(&mut out, &line);
                for line in rx.try_iter().take(4096) {
                    write_line(&mut out, &line);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // every sender is gone and every line they queued was received: close
                if let Err(e) = out.flush() {
                    log::error!("access log write failed: {e}");
                }
                return;
            }
        }
        if let Err(e) = out.flush() {
            log::error!("access log write failed: {e}");
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            if out.rotated(&target) {
                match Output::open(&target) {
                    Ok(o) => out = o,
                    Err(e) => log::error!("cannot reopen the access log {target}: {e}"),
                }
            }
        }
    }
}

fn write_line(out: &mut Output, line: &str) {
    if let Err(e) = out.write_line(line) {
        log::error!("access log write failed: {e}");
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
    /// What it records of the request and its connection besides the outcome.
    pub seen: Seen<'a>,
}

/// What the access log may record of a request and its connection besides its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The `User-Agent` field.
    pub user_agent: Option<&'a str>,
    /// The `Referer` field.
    pub referer: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2.0`…
    pub protocol: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The listener's name.
    pub listener: &'a str,
    /// The TLS version (`TLSv1.3`), on TLS connections.
    pub tls_version: Option<&'a str>,
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
    /// The line written to the log (without its newline).
    pub fn line(&self, format: &LogFormat) -> String {
        match format {
            LogFormat::Json(fields) => self.json(fields),
            LogFormat::Combined => self.combined(),
        }
    }

    /// One JSON object with `fields`, in their order (absent values are `null`).
    fn json(&self, fields: &[LogField]) -> String {
        let mut out = String::with_capacity(384);
        out.push('{');
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, field.name());
            out.push(':');
            self.push_value(&mut out, *field);
        }
        out.push('}');
        out
    }

    fn push_value(&self, out: &mut String, field: LogField) {
        let text = |out: &mut String, v: Option<&str>| match v {
            Some(v) => push_json_str(out, v),
            None => out.push_str("null"),
        };
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let number = |out: &mut String, v: Option<f64>| match v.map(serde_json::Value::from) {
            Some(v) => {
                let _ = write!(out, "{v}");
            }
            None => out.push_str("null"),
        };
        match field {
            LogField::Time => text(out, self.time.map(rfc3339_millis).as_deref()),
            LogField::Client => text(out, self.client.as_deref()),
            LogField::Host => text(out, Some(self.host)),
            LogField::Method => text(out, Some(self.method)),
            LogField::Path => text(out, Some(self.path)),
            LogField::Status => {
                let _ = write!(out, "{}", self.status);
            }
            LogField::Bytes => {
                let _ = write!(out, "{}", self.bytes);
            }
            LogField::Route => text(out, self.route),
            LogField::Pool => text(out, self.pool),
            LogField::Backend => text(out, self.backend.as_deref()),
            LogField::Cache => text(out, self.cache),
            LogField::Key => text(out, self.key.as_deref()),
            LogField::OriginMs => number(out, self.origin_ms.map(round)),
            LogField::TotalMs => number(out, Some(round(self.total_ms))),
            LogField::Config => text(out, Some(self.config)),
            LogField::Seq => {
                let _ = write!(out, "{}", self.seq);
            }
            LogField::RequestId => text(out, self.request_id),
            LogField::UserAgent => text(out, self.seen.user_agent),
            LogField::Referer => text(out, self.seen.referer),
            LogField::Protocol => text(out, Some(self.seen.protocol)),
            LogField::Scheme => text(out, Some(self.seen.scheme)),
            LogField::Listener => text(out, Some(self.seen.listener)),
            LogField::TlsVersion => text(out, self.seen.tls_version),
        }
    }

    /// The combined format (Apache's and nginx's `combined`): `client - - [time] "method path
    /// protocol" status bytes "referer" "user agent"`, `-` for what is absent and for an empty
    /// body, quotes and bytes outside visible ASCII escaped as `\xHH` (as nginx does).
    fn combined(&self) -> String {
        let mut out = String::with_capacity(256);
        let client = self.client.as_deref().unwrap_or("-");
        let time = self.time.map_or_else(|| "-".to_string(), clf_time);
        let _ = write!(out, "{client} - - [{time}] \"");
        push_escaped(&mut out, self.method);
        out.push(' ');
        push_escaped(&mut out, self.path);
        out.push(' ');
        push_escaped(&mut out, self.seen.protocol);
        let _ = write!(out, "\" {} ", self.status);
        if self.bytes == 0 {
            out.push('-');
        } else {
            let _ = write!(out, "{}", self.bytes);
        }
        for value in [self.seen.referer, self.seen.user_agent] {
            out.push_str(" \"");
            push_escaped(&mut out, value.unwrap_or("-"));
            out.push('"');
        }
        out
    }
}

/// `text` as a JSON string.
fn push_json_str(out: &mut String, text: &str) {
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

/// `text` inside a quoted combined-format field: `"`, `\\` and bytes outside visible ASCII and
/// space as `\xHH`.
fn push_escaped(out: &mut String, text: &str) {
    for b in text.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// A UTC time as the combined format writes it: `04/Dec/2026:10:40:28 +0000`.
pub fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = crate::unix_time::Civil::of_unix_secs(crate::unix_time::unix_ms(t) / 1000);
    let month = MONTHS
        .get(usize::try_from(c.month - 1).unwrap_or(0))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    )
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
        let line = r.line(&LogFormat::default());
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/x?y=\"z\"");
        assert_eq!(v["total_ms"], 1.235);
        assert_eq!(v["cache"], "hit");
        assert!(v["backend"].is_null());
        assert!(line.starts_with("{\"time\":"), "{line}");
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(LogField::DEFAULT.len())
        );
    }

    #[test]
    fn chosen_fields_come_in_order_after_the_time() {
        let r = Record {
            time: Some(UNIX_EPOCH),
            status: 404,
            seen: Seen {
                user_agent: Some("curl/8 \"x\""),
                referer: None,
                protocol: "HTTP/2.0",
                scheme: "https",
                listener: "tls",
                tls_version: Some("TLSv1.3"),
            },
            origin_ms: Some(2.5),
            ..Record::default()
        };
        let fields = [
            LogField::Time,
            LogField::Status,
            LogField::UserAgent,
            LogField::Referer,
            LogField::Protocol,
            LogField::Scheme,
            LogField::Listener,
            LogField::TlsVersion,
            LogField::OriginMs,
        ];
        assert_eq!(
            r.line(&LogFormat::Json(fields.to_vec())),
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"status\":404,\"user_agent\":\"curl/8 \\\"x\\\"\",\
             \"referer\":null,\"protocol\":\"HTTP/2.0\",\"scheme\":\"https\",\"listener\":\"tls\",\
             \"tls_version\":\"TLSv1.3\",\"origin_ms\":2.5}"
        );
    }

    #[test]
    fn combined_lines_read_like_apaches() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_343_523_811);
        let r = Record {
            time: Some(t),
            client: Some("10.0.0.1".into()),
            method: "GET",
            path: "/a?b=\"c\"",
            status: 200,
            bytes: 1234,
            seen: Seen {
                protocol: "HTTP/1.1",
                referer: Some("https://r.example/"),
                user_agent: Some("agent/1.0 é"),
                ..Seen::default()
            },
            ..Record::default()
        };
        assert_eq!(
            r.line(&LogFormat::Combined),
            "10.0.0.1 - - [22/Nov/2026:10:32:03 +0000] \"GET /a?b=\\x22c\\x22 HTTP/1.1\" 200 1234 \
             \"https://r.example/\" \"agent/1.0 \\xC3\\xA9\""
        );
        let empty = Record {
            status: 304,
            ..Record::default()
        };
        assert_eq!(
            empty.line(&LogFormat::Combined),
            "- - - [-] \"  \" 304 - \"-\" \"-\""
        );
    }

    /// Wait until the file at `p` holds something `done` accepts.
    fn wait_for(p: &std::path::Path, done: impl Fn(&str) -> bool) -> bool {
        for _ in 0..200 {
            if std::fs::read_to_string(p).is_ok_and(|t| done(&t)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn file_log_is_written_and_reopened_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let sink = LogSink::open(&LogTarget::File(path.clone())).unwrap();
        let rec = Record {
            host: "a",
            method: "GET",
            path: "/1",
            ..Record::default()
        };
        sink.log(&rec, &LogFormat::default());
        assert!(wait_for(&path, |t| t.contains("\"/1\"")));
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        // the writer notices the move within a second and opens a new file at the path
        std::thread::sleep(Duration::from_millis(1300));
        sink.log(&Record { path: "/2", ..rec }, &LogFormat::Combined);
        assert!(
            wait_for(&path, |t| t.contains("GET /2 ")),
            "a new file was opened at the path"
        );
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        assert!(old.contains("\"/1\"") && !old.contains("/2"), "{old}");
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(
            new.starts_with("- - - [-] \"GET /2 \""),
            "the format asked for: {new}"
        );
    }

    #[test]
    fn sinks_sharing_a_file_write_whole_lines_and_a_dropped_one_writes_all_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let target = LogTarget::File(path.clone());
        // a reload opens the same file again while the old sink still drains
        let sinks = [
            LogSink::open(&target).unwrap(),
            LogSink::open(&target).unwrap(),
        ];
        let long = "x".repeat(3000);
        std::thread::scope(|scope| {
            for (s, sink) in sinks.iter().enumerate() {
                let long = &long;
                scope.spawn(move || {
                    for i in 0..4000 {
                        let path = format!("/{s}/{i}/{long}");
                        let rec = Record {
                            path: &path,
                            ..Record::default()
                        };
                        sink.log(&rec, &LogFormat::Json(vec![LogField::Path]));
                    }
                });
            }
        });
        drop(sinks);
        assert!(
            wait_for(&path, |t| t.lines().count() >= 8000),
            "every queued line is written after the sinks are dropped"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            assert!(
                seen.insert(v["path"].as_str().unwrap_or("").to_string()),
                "{line}"
            );
        }
        assert_eq!(seen.len(), 8000, "none lost, none twice");
    }
}
