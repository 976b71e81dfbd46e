//! HTTP/2 request field checks verge does itself (`src/http_syntax/h2_request.rs`), after the
//! h2 codec and Pingora.
//!
//! Input: one byte choosing the `:scheme` (none, `http`, `https`, or the text of the first
//! line), then field values, one per line.
//!
//! Invariants:
//! - a request is refused exactly when its scheme is there and is not `http` or `https`, or a
//!   value starts or ends with SP or HTAB (stated here independently);
//! - every value of an accepted request reads the same after the OWS trimming an HTTP/1 origin
//!   does (RFC 9110 §5.5), so the origin sees the value the cache and verge saw;
//! - the verdict does not depend on the order of the values.

use super::input::Input;
use verge::http_syntax::h2_request::{check as check_request, Malformed};

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte() % 4;
    let rest = input.rest_bytes();
    let mut lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let first = String::from_utf8_lossy(lines.first().copied().unwrap_or_default()).into_owned();
    let scheme = match choice {
        0 => None,
        1 => Some("http".to_string()),
        2 => Some("https".to_string()),
        _ => {
            lines.remove(0);
            Some(first)
        }
    };
    let verdict = check_request(scheme.as_deref(), lines.iter().copied());
    let bad_scheme = scheme
        .as_deref()
        .is_some_and(|s| s != "http" && s != "https");
    let ws = |b: u8| b == b' ' || b == b'\t';
    let edge = lines
        .iter()
        .any(|v| v.first().is_some_and(|b| ws(*b)) || v.last().is_some_and(|b| ws(*b)));
    let expected = if bad_scheme {
        Err(Malformed::Scheme)
    } else if edge {
        Err(Malformed::EdgeWhitespace)
    } else {
        Ok(())
    };
    assert_eq!(verdict, expected, "{scheme:?} {lines:?}");
    if verdict.is_ok() {
        for v in &lines {
            let trimmed: &[u8] = trim_ows(v);
            assert_eq!(trimmed, *v, "an origin would read {trimmed:?} for {v:?}");
        }
    }
    let reversed = check_request(scheme.as_deref(), lines.iter().rev().copied());
    assert_eq!(reversed, verdict, "order changed the verdict");
}

/// RFC 9110 OWS trimming: SP and HTAB at both ends.
fn trim_ows(v: &[u8]) -> &[u8] {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &v[start..end.max(start)]
}
