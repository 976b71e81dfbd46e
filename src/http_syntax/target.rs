//! Request-target checks: the path the router and the cache key see is the path the origin gets,
//! so anything an origin might decode or normalise differently is refused with 400.

/// Why a request target is refused; also the `verge_requests_rejected_total` reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTarget {
    /// Not origin-form (`/...`); `*` is allowed for OPTIONS only.
    NotOriginForm,
    /// `%2F` or `%5C`: an encoded slash or backslash the origin may decode into a separator.
    EncodedSeparator,
    /// A raw backslash.
    Backslash,
    /// NUL or another control byte, raw or percent-encoded.
    ControlByte,
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A `.` or `..` segment (raw or encoded): routing and the origin could disagree on the path.
    DotSegment,
    /// A space, a `#` (a fragment is never sent) or a byte outside ASCII: RFC 3986 wants them
    /// percent-encoded, and origins decode raw ones differently.
    BadByte,
}

impl BadTarget {
    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            BadTarget::NotOriginForm => "target_not_origin_form",
            BadTarget::EncodedSeparator => "target_encoded_separator",
            BadTarget::Backslash => "target_backslash",
            BadTarget::ControlByte => "target_control_byte",
            BadTarget::BadPercentEncoding => "target_bad_percent_encoding",
            BadTarget::DotSegment => "target_dot_segment",
            BadTarget::BadByte => "target_bad_byte",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Check a whole request target as the client sent it (path and query): origin-form (`*` for
/// `OPTIONS` only), visible ASCII without `#`, and a path [`check_path`] accepts.
pub fn check_target(method: &[u8], target: &[u8]) -> Result<(), BadTarget> {
    if target == b"*" && method == b"OPTIONS" {
        return Ok(());
    }
    if target.first() != Some(&b'/') {
        return Err(BadTarget::NotOriginForm);
    }
    for b in target {
        match b {
            0..=0x1f | 0x7f => return Err(BadTarget::ControlByte),
            b' ' | b'#' | 0x80.. => return Err(BadTarget::BadByte),
            _ => {}
        }
    }
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    // visible ASCII, so UTF-8
    let path = std::str::from_utf8(path).map_err(|_| BadTarget::BadByte)?;
    check_path("GET", path)
}

/// Check a request path (without the query). `method` allows `*` for OPTIONS.
pub fn check_path(method: &str, path: &str) -> Result<(), BadTarget> {
    if path == "*" && method.eq_ignore_ascii_case("OPTIONS") {
        return Ok(());
    }
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadTarget::NotOriginForm);
    }
    // Decode once, checking each byte as the origin would see it after one decoding pass, and
    // each decoded segment for `.` and `..` (without keeping the decoded path: no allocation).
    let mut dot_segment = false;
    // the decoded bytes of the current segment, as far as `.` / `..` go: how many dots so far,
    // or None once it holds anything else
    let mut dots: Option<u8> = Some(0);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (value, encoded) = if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadTarget::BadPercentEncoding);
            };
            i += 3;
            (h << 4 | l, true)
        } else {
            i += 1;
            (b, false)
        };
        match value {
            b'/' if encoded => return Err(BadTarget::EncodedSeparator),
            b'\\' if encoded => return Err(BadTarget::EncodedSeparator),
            b'\\' => return Err(BadTarget::Backslash),
            0..=0x1f | 0x7f => return Err(BadTarget::ControlByte),
            b'/' => {
                dot_segment |= matches!(dots, Some(1 | 2));
                dots = Some(0);
            }
            b'.' => dots = dots.map(|n| n.saturating_add(1)),
            _ => dots = None,
        }
    }
    if dot_segment || matches!(dots, Some(1 | 2)) {
        return Err(BadTarget::DotSegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check as it was first written (decoding the whole path, then splitting it): the
    /// allocation-free one must agree with it on every path.
    fn check_path_by_decoding(path: &str) -> Result<(), BadTarget> {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err(BadTarget::NotOriginForm);
        }
        let mut decoded = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let (value, encoded) = if bytes[i] == b'%' {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(BadTarget::BadPercentEncoding);
                };
                i += 3;
                (h << 4 | l, true)
            } else {
                i += 1;
                (bytes[i - 1], false)
            };
            match value {
                b'/' | b'\\' if encoded => return Err(BadTarget::EncodedSeparator),
                b'\\' => return Err(BadTarget::Backslash),
                0..=0x1f | 0x7f => return Err(BadTarget::ControlByte),
                _ => decoded.push(value),
            }
        }
        if decoded
            .split(|&b| b == b'/')
            .any(|seg| seg == b"." || seg == b"..")
        {
            return Err(BadTarget::DotSegment);
        }
        Ok(())
    }

    #[test]
    fn the_streaming_check_agrees_with_decoding_the_whole_path() {
        let parts = [
            "/", ".", "a", "%2e", "%2E", "%2f", "%", "\\", "%5c", "%00", "...",
        ];
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| parts.iter().map(move |x| format!("{p}{x}")))
                .collect();
            paths.extend(longer);
            paths.dedup();
        }
        for tail in &paths {
            let path = format!("/{tail}");
            assert_eq!(
                check_path("GET", &path),
                check_path_by_decoding(&path),
                "{path}"
            );
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "/a/b",
            "/a%20b",
            "/a.b/c..d",
            "/.well-known/x",
            "/a//b",
            "/%41",
            "/caf%C3%A9",
        ] {
            assert_eq!(check_path("GET", p), Ok(()), "{p}");
        }
        assert_eq!(check_path("OPTIONS", "*"), Ok(()));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("*", BadTarget::NotOriginForm),
            ("a/b", BadTarget::NotOriginForm),
            ("", BadTarget::NotOriginForm),
            ("/a%2Fb", BadTarget::EncodedSeparator),
            ("/a%2fb", BadTarget::EncodedSeparator),
            ("/a%5Cb", BadTarget::EncodedSeparator),
            ("/a\\b", BadTarget::Backslash),
            ("/a%00b", BadTarget::ControlByte),
            ("/a\u{1}b", BadTarget::ControlByte),
            ("/a%zz", BadTarget::BadPercentEncoding),
            ("/a%2", BadTarget::BadPercentEncoding),
            ("/../etc/passwd", BadTarget::DotSegment),
            ("/a/../b", BadTarget::DotSegment),
            ("/a/./b", BadTarget::DotSegment),
            ("/a/..", BadTarget::DotSegment),
            ("/a/%2e%2e/b", BadTarget::DotSegment),
            ("/a/.%2E/b", BadTarget::DotSegment),
        ];
        for (p, want) in cases {
            assert_eq!(check_path("GET", p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn whole_targets() {
        for ok in ["/", "/a?b=c&d[]=e|f", "/a?x=../y", "/%7B%7D"] {
            assert_eq!(check_target(b"GET", ok.as_bytes()), Ok(()), "{ok}");
        }
        assert_eq!(check_target(b"OPTIONS", b"*"), Ok(()));
        for (t, want) in [
            ("*", BadTarget::NotOriginForm),
            ("!foo", BadTarget::NotOriginForm),
            ("?x", BadTarget::NotOriginForm),
            ("http://a/b", BadTarget::NotOriginForm),
            ("/a b", BadTarget::BadByte),
            ("/a#b", BadTarget::BadByte),
            ("/a?b#c", BadTarget::BadByte),
            ("/caf\u{e9}", BadTarget::BadByte),
            ("/a\tb", BadTarget::ControlByte),
            ("/a?\u{7f}", BadTarget::ControlByte),
            ("/a/../b?x", BadTarget::DotSegment),
            ("/a%2fb?x", BadTarget::EncodedSeparator),
        ] {
            assert_eq!(check_target(b"GET", t.as_bytes()), Err(want), "{t:?}");
        }
        assert_eq!(
            check_target(b"GET", b"/caf\xc3\xa9"),
            Err(BadTarget::BadByte)
        );
    }
}
