//! The strict chunked-body reader (`src/http_syntax/chunked.rs`), which the front door runs on
//! request bodies before Pingora's parser sees them.
//!
//! Input: two bytes choosing where the body is split (as the network might), one choosing the
//! trailer limit (tiny or roomy), then the body bytes.
//!
//! Invariants:
//! - a verdict never depends on how the bytes were split: fed whole, or in three pieces, the
//!   body is refused for the same reason, or ends at the same byte, or is still incomplete;
//! - a body that ends is one Pingora reads the same way: walked with `httparse::parse_chunk_size`
//!   (the parser Pingora 0.9 uses), every chunk line gives the same size at the same place, every
//!   chunk's data is followed by CRLF, and the last chunk's trailer section ends exactly where
//!   verge said the body ends;
//! - an accepted chunk line holds no NUL, no bare CR or LF, and no whitespace before its CRLF;
//! - nothing after the end is taken as the body's.

use super::input::Input;
use verge::http_syntax::chunked::{BadChunk, ChunkedBody};

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Refused(BadChunk),
    Ends(usize),
    Incomplete,
}

fn feed_all(max_trailers: usize, pieces: &[&[u8]]) -> Verdict {
    let mut body = ChunkedBody::new(max_trailers);
    let mut taken = 0;
    for piece in pieces {
        match body.feed(piece) {
            Err(bad) => return Verdict::Refused(bad),
            Ok(n) => {
                assert!(n <= piece.len(), "took {n} of {} bytes", piece.len());
                taken += n;
                if body.is_done() {
                    return Verdict::Ends(taken);
                }
                assert_eq!(n, piece.len(), "stopped early without ending");
            }
        }
    }
    Verdict::Incomplete
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let (a, b) = (usize::from(input.byte()), usize::from(input.byte()));
    let max_trailers = if input.byte() % 2 == 0 { 16 } else { 4096 };
    let body = input.rest_bytes();
    let whole = feed_all(max_trailers, &[body]);
    let (a, b) = (a.min(body.len()), b.min(body.len()));
    let (first, second) = (a.min(b), a.max(b));
    let split = feed_all(
        max_trailers,
        &[&body[..first], &body[first..second], &body[second..]],
    );
    assert_eq!(whole, split, "split at {first} and {second}: {body:?}");
    if let Verdict::Ends(end) = whole {
        pingora_reads_the_same(&body[..end], body);
        let mut again = ChunkedBody::new(max_trailers);
        assert_eq!(again.feed(&body[..end]), Ok(end));
        assert!(again.is_done(), "the body alone ends too");
    }
}

/// Walk an accepted body as Pingora would, with httparse.
fn pingora_reads_the_same(accepted: &[u8], all: &[u8]) {
    let mut pos = 0;
    loop {
        let rest = &accepted[pos..];
        let (line_end, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            other => panic!("httparse reads {other:?} at {pos} of accepted {all:?}"),
        };
        let line = &rest[..line_end - 2];
        assert!(
            !line.iter().any(|b| *b == 0 || *b == b'\r' || *b == b'\n'),
            "accepted chunk line {line:?}"
        );
        assert!(
            !line.ends_with(b" ") && !line.ends_with(b"\t"),
            "accepted whitespace before CRLF: {line:?}"
        );
        pos += line_end;
        if size == 0 {
            // trailers: field lines, then the empty line that ends the body
            let trailers = &accepted[pos - 2..];
            let end = trailers
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| pos - 2 + i + 4);
            assert_eq!(end, Some(accepted.len()), "trailers end: {all:?}");
            return;
        }
        let size = usize::try_from(size).expect("a size that fits the input");
        let data_end = pos + size;
        assert_eq!(
            accepted.get(data_end..data_end + 2),
            Some(&b"\r\n"[..]),
            "chunk data end at {data_end}: {all:?}"
        );
        pos = data_end + 2;
    }
}
