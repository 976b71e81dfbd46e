//! HTTP/2 request fields that RFC 9113 calls malformed (§8.2.1, §8.3.1) and that neither the
//! h2 codec nor Pingora refuses: the last check before such a request could reach an origin.
//!
//! What the layers below already refuse, and verge relies on (each has an e2e test in
//! `tests/e2e/protocol_hardening.rs`):
//! - h2: upper-case or non-token field names, a NUL, CR or LF in a value (connection error);
//!   unknown, repeated or misplaced pseudo-headers, `:status` in a request, a missing `:method`,
//!   `:scheme` or `:path`, an empty `:path` or `:scheme`, connection-specific fields, `TE` other
//!   than `trailers` (stream error);
//! - Pingora: control bytes in `:path`, conflicting `Content-Length`s, userinfo in
//!   `:authority`, a `Host` that contradicts `:authority`, a second `Host`, an absolute `:path`.
//!
//! What is left is checked here: a field value with leading or trailing whitespace (§8.2.1: an
//! HTTP/1 origin would trim it, so it would read another value than the cache did), and a
//! `:scheme` other than `http` or `https` (verge serves nothing else). The `:path` goes through
//! the same target rules as HTTP/1 ([`super::target`]).

/// Why an HTTP/2 request is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A field value starts or ends with SP or HTAB.
    EdgeWhitespace,
    /// `:scheme` is neither `http` nor `https`.
    Scheme,
}

impl Malformed {
    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::EdgeWhitespace => "h2_field_whitespace",
            Malformed::Scheme => "h2_bad_scheme",
        }
    }
}

fn is_ws(b: &u8) -> bool {
    *b == b' ' || *b == b'\t'
}

/// Whether a field value starts or ends with whitespace.
pub fn has_edge_whitespace(value: &[u8]) -> bool {
    value.first().is_some_and(is_ws) || value.last().is_some_and(is_ws)
}

/// Check an HTTP/2 request's `:scheme` (when the codec kept it) and its field values.
pub fn check<'a>(
    scheme: Option<&str>,
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), Malformed> {
    if scheme.is_some_and(|s| s != "http" && s != "https") {
        return Err(Malformed::Scheme);
    }
    if values.into_iter().any(has_edge_whitespace) {
        return Err(Malformed::EdgeWhitespace);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_at_either_end_of_a_value_is_malformed() {
        for value in [&b" v"[..], b"v ", b"\tv", b"v\t", b" ", b"\t"] {
            assert_eq!(
                check(Some("https"), [value]),
                Err(Malformed::EdgeWhitespace),
                "{value:?}"
            );
        }
        for value in [&b"v"[..], b"a b", b"a\tb", b"", b"\x80"] {
            assert_eq!(check(Some("http"), [value]), Ok(()), "{value:?}");
        }
    }

    #[test]
    fn only_http_schemes() {
        assert_eq!(check(None, []), Ok(()));
        assert_eq!(check(Some("https"), []), Ok(()));
        for scheme in ["ftp", "HTTP", "http ", "httpx"] {
            assert_eq!(check(Some(scheme), []), Err(Malformed::Scheme), "{scheme}");
        }
    }
}
