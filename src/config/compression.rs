//! Validated route compression (`routes[].compression`): the coding verge compresses a stored
//! response with, its level, the smallest body worth it, and the media types it applies to.

/// A content coding verge can produce and undo (`br`, `gzip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    /// Brotli (`br`).
    Br,
    /// gzip (`gzip`, also read as `x-gzip`).
    Gzip,
}

impl Coding {
    /// Both codings, in the order verge asks an origin for them (`Accept-Encoding: br, gzip`).
    pub const ALL: [Coding; 2] = [Coding::Br, Coding::Gzip];

    /// The coding's token in `Accept-Encoding` and `Content-Encoding` (and the metrics' label).
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding a token names (case-insensitive; `x-gzip` is gzip), if verge knows it.
    pub fn from_token(token: &str) -> Option<Coding> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else {
            None
        }
    }

    /// The level used when none is configured: moderate, for a compression done once per fill.
    pub fn default_level(self) -> u32 {
        match self {
            Coding::Br => 5,
            Coding::Gzip => 6,
        }
    }

    /// The levels the coding accepts.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Coding::Br => 1..=11,
            Coding::Gzip => 1..=9,
        }
    }
}

/// A media range of `compression.types`: `text/html`, or `text/*` for a whole top-level type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRange {
    /// One media type, lowercase (`application/json`).
    Exact(String),
    /// Every subtype of a top-level type, lowercase (`text`).
    AnySubtype(String),
}

impl MediaRange {
    /// Parse `type/subtype` or `type/*` (no parameters).
    pub fn parse(text: &str) -> Result<MediaRange, String> {
        let t = text.trim().to_ascii_lowercase();
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        match t.split_once('/') {
            Some((top, "*")) if token(top) => Ok(MediaRange::AnySubtype(top.to_string())),
            Some((top, sub)) if token(top) && token(sub) => Ok(MediaRange::Exact(t)),
            _ => Err(format!(
                "{text:?} is not a media type: use type/subtype or type/* (no parameters)"
            )),
        }
    }

    /// Whether the media type `essence` (lowercase `type/subtype`) is in this range.
    pub fn matches(&self, essence: &str) -> bool {
        match self {
            MediaRange::Exact(t) => t == essence,
            MediaRange::AnySubtype(top) => essence
                .strip_prefix(top.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }
}

/// The media types compressed when a route lists none: text, and the structured text formats
/// that are not `text/*`.
pub const DEFAULT_COMPRESSIBLE_TYPES: [&str; 12] = [
    "text/*",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
];

/// The smallest body compressed when a route sets no `min_size`.
pub const DEFAULT_MIN_COMPRESS_SIZE: u64 = 1024;

/// A route's compression (`routes[].compression`, when enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSpec {
    /// The coding an uncompressed response is stored in.
    pub coding: Coding,
    /// Its level.
    pub level: u32,
    /// Bodies announced smaller than this are left as they are (a body without
    /// `Content-Length` is compressed).
    pub min_size: u64,
    /// The media types compressed.
    pub types: Vec<MediaRange>,
}

impl CompressionSpec {
    /// Whether a response with this `Content-Type` value is one to compress.
    pub fn compresses_type(&self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|r| r.matches(&essence))
    }
}

impl Default for CompressionSpec {
    fn default() -> Self {
        CompressionSpec {
            coding: Coding::Br,
            level: Coding::Br.default_level(),
            min_size: DEFAULT_MIN_COMPRESS_SIZE,
            types: DEFAULT_COMPRESSIBLE_TYPES
                .iter()
                .filter_map(|t| MediaRange::parse(t).ok())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges_parse_and_match() {
        let text = MediaRange::parse("Text/*").expect("range");
        assert!(text.matches("text/html"));
        assert!(!text.matches("textual/html"));
        let json = MediaRange::parse("application/json").expect("type");
        assert!(json.matches("application/json"));
        assert!(!json.matches("application/json5"));
        for bad in [
            "text",
            "text/",
            "/html",
            "text/html; charset=utf-8",
            "a b/c",
            "*/",
        ] {
            assert!(MediaRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_types_cover_text_and_structured_text_but_not_images() {
        let spec = CompressionSpec::default();
        assert_eq!(spec.types.len(), DEFAULT_COMPRESSIBLE_TYPES.len());
        for t in [
            "text/html; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "image/svg+xml",
        ] {
            assert!(spec.compresses_type(t), "{t}");
        }
        for t in ["image/png", "application/octet-stream", "video/mp4", ""] {
            assert!(!spec.compresses_type(t), "{t}");
        }
    }

    #[test]
    fn codings_read_their_tokens() {
        assert_eq!(Coding::from_token(" BR "), Some(Coding::Br));
        assert_eq!(Coding::from_token("x-gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token("zstd"), None);
        assert_eq!(Coding::from_token("identity"), None);
    }
}
