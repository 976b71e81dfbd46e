//! The access log's validated settings: where it goes, and its format: JSON lines with chosen
//! fields (`time` always first), or the combined format of Apache and nginx.

/// Where the access log goes (`access_log.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`path: -`).
    Stdout,
    /// Appended to this file; reopened within a second when it is moved or removed (logrotate),
    /// and on every reload.
    File(std::path::PathBuf),
}

impl std::fmt::Display for LogTarget {
    /// As `access_log.path` writes it: the file's path, or `-`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("-"),
            LogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `access_log:`: where lines go, and how they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSpec {
    /// Standard output or a file.
    pub target: LogTarget,
    /// JSON lines (the default) or the combined format.
    pub format: LogFormat,
}

/// How each line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line with these fields, in this order (`time` first).
    Json(Vec<LogField>),
    /// `client - - [time] "request line" status bytes "referer" "user agent"`.
    Combined,
}

impl LogFormat {
    /// Whether its lines carry this field (the combined format names none of them).
    pub fn writes(&self, field: LogField) -> bool {
        match self {
            LogFormat::Json(fields) => fields.contains(&field),
            LogFormat::Combined => false,
        }
    }
}

impl Default for LogFormat {
    fn default() -> Self {
        LogFormat::Json(LogField::DEFAULT.to_vec())
    }
}

/// A field a JSON access-log line may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    /// When the request finished (RFC 3339, milliseconds, UTC).
    Time,
    /// The client's IP address (the connection's).
    Client,
    /// The canonical host.
    Host,
    /// The method.
    Method,
    /// The path and query as received.
    Path,
    /// The status sent.
    Status,
    /// Response body bytes sent.
    Bytes,
    /// The route's name.
    Route,
    /// The pool's name.
    Pool,
    /// The backend that answered.
    Backend,
    /// The cache lookup's result.
    Cache,
    /// The cache key's hash.
    Key,
    /// From sending upstream to the response head.
    OriginMs,
    /// From the request head to the end of the response.
    TotalMs,
    /// The config or policy version.
    Config,
    /// The last invalidation sequence number applied.
    Seq,
    /// The request's `X-Request-Id`.
    RequestId,
    /// The `User-Agent` field.
    UserAgent,
    /// The `Referer` field.
    Referer,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2.0`.
    Protocol,
    /// `http` or `https`.
    Scheme,
    /// The listener's name.
    Listener,
    /// `TLSv1.2` or `TLSv1.3` on TLS listeners.
    TlsVersion,
}

impl LogField {
    /// Every field, each with its name in the config and in the line.
    pub const ALL: [(LogField, &'static str); 23] = [
        (LogField::Time, "time"),
        (LogField::Client, "client"),
        (LogField::Host, "host"),
        (LogField::Method, "method"),
        (LogField::Path, "path"),
        (LogField::Status, "status"),
        (LogField::Bytes, "bytes"),
        (LogField::Route, "route"),
        (LogField::Pool, "pool"),
        (LogField::Backend, "backend"),
        (LogField::Cache, "cache"),
        (LogField::Key, "key"),
        (LogField::OriginMs, "origin_ms"),
        (LogField::TotalMs, "total_ms"),
        (LogField::Config, "config"),
        (LogField::Seq, "seq"),
        (LogField::RequestId, "request_id"),
        (LogField::UserAgent, "user_agent"),
        (LogField::Referer, "referer"),
        (LogField::Protocol, "protocol"),
        (LogField::Scheme, "scheme"),
        (LogField::Listener, "listener"),
        (LogField::TlsVersion, "tls_version"),
    ];

    /// The fields of a line when the config lists none: those verge has always written.
    pub const DEFAULT: [LogField; 17] = [
        LogField::Time,
        LogField::Client,
        LogField::Host,
        LogField::Method,
        LogField::Path,
        LogField::Status,
        LogField::Bytes,
        LogField::Route,
        LogField::Pool,
        LogField::Backend,
        LogField::Cache,
        LogField::Key,
        LogField::OriginMs,
        LogField::TotalMs,
        LogField::Config,
        LogField::Seq,
        LogField::RequestId,
    ];

    /// The field's name in the config and in JSON lines.
    pub fn name(self) -> &'static str {
        LogField::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("", |(_, n)| n)
    }

    /// The field named `name`.
    pub fn parse(name: &str) -> Option<LogField> {
        LogField::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
    }
}
