//! The HTTP/1 request-head scanner (`src/ingress.rs`, `scan_head`), which decides before Pingora
//! parses anything.
//!
//! Input: one byte choosing the limits (defaults, or tight ones so limits are reached), then the
//! raw head bytes.
//!
//! Invariants:
//! - a decision never depends on where the bytes were split by the network: if any prefix of the
//!   input is already `Complete` or refused, the whole input gets the same decision (status);
//! - `Complete` only once an empty line ends the head, and only for a request line
//!   `request_line::parse` accepts (uppercase method, origin-form target, HTTP/1.0 or 1.1), and
//!   no `Connection` listing `Content-Length` or `Transfer-Encoding`;
//! - a `Complete` head is the first `head_len` bytes, which end with its empty line; its body
//!   framing is what its fields say (chunked with a `Transfer-Encoding`, the length of a
//!   `Content-Length` of digits, none without either), and bytes after the head change neither;
//! - refusals are one of 400, 413, 414, 431, 501, with a non-empty reason;
//! - the same input always gets the same decision.

use super::input::Input;
use std::time::Duration;
use verge::config::Limits;
use verge::http_syntax::request_line;
use verge::ingress::{scan_head, BodyFraming, HeadScan};

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let limits = if input.byte() % 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_request_line: 32,
            max_header_line: 24,
            max_headers_size: 96,
            max_headers: 4,
            max_body: 100,
            header_timeout: Duration::from_secs(1),
            ..Limits::default()
        }
    };
    let head = input.rest_bytes();
    let whole = scan_head(head, &limits);
    assert_eq!(whole, scan_head(head, &limits), "deterministic");
    match &whole {
        HeadScan::Complete { head_len, body } => {
            assert!(
                ends_a_head(head),
                "Complete without an empty line: {:?}",
                String::from_utf8_lossy(head)
            );
            assert!(*head_len <= head.len());
            let own = &head[..*head_len];
            assert!(
                own.ends_with(b"\n\n") || own.ends_with(b"\n\r\n"),
                "head_len {head_len} does not end the head: {:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(
                scan_head(own, &limits),
                whole,
                "the head alone decides the same"
            );
            complete_head_invariants(own, *body);
        }
        HeadScan::Reject { status, reason } => {
            assert!(
                [400, 413, 414, 431, 501].contains(status),
                "status {status}"
            );
            assert!(!reason.is_empty());
        }
        HeadScan::Incomplete => {}
    }
    // every split point of short inputs, a sample of long ones
    let step = (head.len() / 256).max(1);
    for end in (0..head.len()).step_by(step) {
        let early = scan_head(&head[..end], &limits);
        match (&early, &whole) {
            (HeadScan::Incomplete, _) => {}
            (a @ HeadScan::Complete { .. }, b @ HeadScan::Complete { .. }) if a == b => {}
            (HeadScan::Reject { status: a, .. }, HeadScan::Reject { status: b, .. }) if a == b => {}
            _ => panic!(
                "the first {end} bytes give {early:?} but all {} give {whole:?}: {:?}",
                head.len(),
                String::from_utf8_lossy(head)
            ),
        }
    }
}

/// What a head the scanner accepted must be: its lines, split here independently of the scanner.
fn complete_head_invariants(head: &[u8], body: BodyFraming) {
    let text = String::from_utf8_lossy(head);
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let request_line = lines.next().unwrap_or_default();
    assert!(
        request_line::parse(request_line).is_ok(),
        "accepted a request line parse refuses: {text:?}"
    );
    let mut framing = BodyFraming::None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            panic!("accepted a field line without a colon: {text:?}");
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framing = BodyFraming::Chunked;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            assert!(
                !value.is_empty() && value.iter().all(u8::is_ascii_digit),
                "accepted a Content-Length that is not digits: {text:?}"
            );
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            framing = BodyFraming::Length(n.unwrap_or(u64::MAX));
        }
        if name.eq_ignore_ascii_case(b"connection") {
            let lists_framing = value.split(|b| *b == b',').any(|o| {
                let o = o.trim_ascii().to_ascii_lowercase();
                o == b"content-length" || o == b"transfer-encoding"
            });
            assert!(!lists_framing, "accepted framing in Connection: {text:?}");
        }
    }
    assert_eq!(body, framing, "body framing of {text:?}");
}

/// Whether an empty line (after at least one other line) appears: `\n\n` or `\n\r\n`.
fn ends_a_head(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
}
