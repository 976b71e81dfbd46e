//! Chunked request bodies read strictly (RFC 9112 §7.1): a state machine fed the body's bytes as
//! they arrive, which finds where the body ends and refuses any framing two parsers could read
//! differently.
//!
//! Pingora reads chunk lines with `httparse::parse_chunk_size`, which is lenient: it takes
//! whitespace after the size (`5 \r\n`), an empty size line as a zero-size last chunk, and any
//! byte (NUL, a bare LF) inside an extension. An origin or a second proxy that reads those bytes
//! another way would see another body, or another request (request smuggling). So verge checks
//! the framing itself, before Pingora's parser sees the bytes, and accepts only:
//!
//! ```text
//! chunk      = 1*16HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ) CRLF data CRLF
//! last-chunk = 1*16"0"    *( ... same extensions ... ) CRLF
//! trailers   = *( field-name ":" OWS field-value OWS CRLF ) CRLF
//! ```
//!
//! `ext-name` is a token; `ext-val` a token or a quoted string (visible ASCII, SP, HTAB and
//! obs-text, with `\` pairs). Whitespace is taken only where a `;` or `=` follows it (RFC 9112
//! BWS), never before a line end. Every line ends in CRLF: a bare CR or LF is refused. A chunk
//! line is at most [`MAX_CHUNK_LINE`] bytes; the trailer section at most the limit given.
//! Pure: no I/O; the result never depends on how the bytes were split.

/// Longest chunk-size line (size and extensions), CRLF excluded.
pub const MAX_CHUNK_LINE: usize = 4096;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadChunk {
    /// An empty or non-hexadecimal chunk size, more than 16 digits, or whitespace after the
    /// size that no `;` follows.
    Size,
    /// A chunk extension that is not `;name[=value]` (a NUL, a bare LF, a control byte, a
    /// broken quoted string, whitespace before the line end).
    Extension,
    /// A line ending that is not CRLF.
    LineEnding,
    /// Chunk data not followed by CRLF.
    DataEnd,
    /// A trailer field line that is not `name: value`, or trailers over their limit.
    Trailer,
    /// A chunk line over [`MAX_CHUNK_LINE`].
    LineTooLong,
}

impl BadChunk {
    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            BadChunk::Size => "bad_chunk_size",
            BadChunk::Extension => "bad_chunk_extension",
            BadChunk::LineEnding => "bad_chunk_line_ending",
            BadChunk::DataEnd => "bad_chunk_data_end",
            BadChunk::Trailer => "bad_chunk_trailer",
            BadChunk::LineTooLong => "chunk_line_too_long",
        }
    }
}

impl std::fmt::Display for BadChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for BadChunk {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the size.
    Size,
    /// Whitespace right after the size: only more of it or a `;` may follow.
    SizeBws,
    /// Whitespace after an extension part: only more of it or a `;` may follow (or a `=`
    /// after an extension name).
    Bws { before_eq: bool },
    /// After `;` (and whitespace): an extension name starts.
    ExtNameStart,
    /// Inside an extension name.
    ExtName,
    /// After `=` (and whitespace): a token or a quoted string starts.
    ExtValueStart,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted string.
    ExtQuoted,
    /// After a `\` in a quoted string.
    ExtQuotedPair,
    /// After a quoted string's closing quote.
    ExtAfterQuoted,
    /// The chunk line's CR was read: LF must follow.
    LineLf,
    /// Inside chunk data.
    Data,
    /// After the data: CR expected.
    DataCr,
    /// After the data's CR: LF expected.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// A trailer line's CR was read.
    TrailerLf,
    /// The final empty line's CR was read.
    FinalLf,
    /// The body is complete.
    Done,
}

/// A chunked body being read: feed it bytes until [`ChunkedBody::is_done`].
#[derive(Debug, Clone)]
pub struct ChunkedBody {
    state: State,
    size: u64,
    digits: u8,
    line_len: usize,
    remaining: u64,
    trailer_bytes: usize,
    max_trailers: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Bytes a quoted string or a field value may hold: HTAB, SP, visible ASCII, obs-text.
fn is_quoted_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkedBody {
    /// A body that has not started, whose trailer section may be `max_trailers` bytes.
    pub fn new(max_trailers: usize) -> Self {
        ChunkedBody {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            remaining: 0,
            trailer_bytes: 0,
            max_trailers,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Read `bytes`, the body's next ones. Returns how many belong to the body: all of them,
    /// or fewer when the body ends inside `bytes` (the rest is the next request's).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Done {
                return Ok(i);
            }
            if self.state == State::Data {
                let available = (bytes.len() - i) as u64;
                let take = available.min(self.remaining);
                // `take` is at most `bytes.len() - i`, a usize
                i += usize::try_from(take).unwrap_or(bytes.len() - i);
                self.remaining -= take;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn line_byte(&mut self) -> Result<(), BadChunk> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(BadChunk::LineTooLong);
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), BadChunk> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > self.max_trailers {
            return Err(BadChunk::Trailer);
        }
        Ok(())
    }

    /// The chunk line ended (its CR read).
    fn end_line(&mut self) {
        self.state = State::LineLf;
    }

    fn step(&mut self, b: u8) -> Result<(), BadChunk> {
        use State::*;
        match self.state {
            Size
            | SizeBws
            | Bws { .. }
            | ExtNameStart
            | ExtName
            | ExtValueStart
            | ExtToken
            | ExtQuoted
            | ExtQuotedPair
            | ExtAfterQuoted
                if b != b'\r' =>
            {
                self.line_byte()?
            }
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf => {
                self.trailer_byte()?
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (Size, b) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(BadChunk::Size);
                }
                self.digits += 1;
                let digit = (b as char).to_digit(16).map(u64::from).unwrap_or(0);
                self.size = self.size << 4 | digit;
                Size
            }
            (Size, _) if self.digits == 0 => return Err(BadChunk::Size),
            (Size, b'\r') => {
                self.end_line();
                return Ok(());
            }
            (Size, b';') => ExtNameStart,
            (Size, b) if is_ws(b) => SizeBws,
            (Size, b'\n') => return Err(BadChunk::LineEnding),
            (Size, _) => return Err(BadChunk::Size),

            (SizeBws, b) if is_ws(b) => SizeBws,
            (SizeBws, b';') => ExtNameStart,
            (SizeBws, _) => return Err(BadChunk::Size),
            (Bws { before_eq }, b) if is_ws(b) => Bws { before_eq },
            (Bws { .. }, b';') => ExtNameStart,
            (Bws { before_eq: true }, b'=') => ExtValueStart,
            (Bws { .. }, _) => return Err(BadChunk::Extension),

            (ExtNameStart, b) if is_ws(b) => ExtNameStart,
            (ExtNameStart, b) if is_tchar(b) => ExtName,
            (ExtName, b) if is_tchar(b) => ExtName,
            (ExtName, b'\r') | (ExtToken, b'\r') | (ExtAfterQuoted, b'\r') => {
                self.end_line();
                return Ok(());
            }
            (ExtName, b';') | (ExtToken, b';') | (ExtAfterQuoted, b';') => ExtNameStart,
            (ExtName, b'=') => ExtValueStart,
            (ExtName, b) if is_ws(b) => Bws { before_eq: true },
            (ExtToken, b) | (ExtAfterQuoted, b) if is_ws(b) => Bws { before_eq: false },
            (ExtValueStart, b) if is_ws(b) => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart, b) if is_tchar(b) => ExtToken,
            (ExtToken, b) if is_tchar(b) => ExtToken,
            (ExtQuoted, b'"') => ExtAfterQuoted,
            (ExtQuoted, b'\\') => ExtQuotedPair,
            (ExtQuoted, b) if is_quoted_byte(b) => ExtQuoted,
            (ExtQuotedPair, b) if is_quoted_byte(b) => ExtQuoted,
            (
                ExtNameStart | ExtName | ExtValueStart | ExtToken | ExtQuoted | ExtQuotedPair
                | ExtAfterQuoted,
                b'\n',
            ) => return Err(BadChunk::LineEnding),
            (
                ExtNameStart | ExtName | ExtValueStart | ExtToken | ExtQuoted | ExtQuotedPair
                | ExtAfterQuoted,
                _,
            ) => return Err(BadChunk::Extension),

            (LineLf, b'\n') => {
                self.line_len = 0;
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    self.remaining = self.size;
                    self.size = 0;
                    Data
                }
            }
            (LineLf, _) => return Err(BadChunk::LineEnding),

            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(BadChunk::DataEnd),
            (DataLf, b'\n') => Size,
            (DataLf, _) => return Err(BadChunk::DataEnd),

            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, b) if is_tchar(b) => TrailerName,
            (TrailerStart, b'\n') => return Err(BadChunk::LineEnding),
            (TrailerStart, _) => return Err(BadChunk::Trailer),
            (TrailerName, b) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerName, _) => return Err(BadChunk::Trailer),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b'\n') => return Err(BadChunk::LineEnding),
            (TrailerValue, b) if is_quoted_byte(b) => TrailerValue,
            (TrailerValue, _) => return Err(BadChunk::Trailer),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return Err(BadChunk::LineEnding),
            (FinalLf, b'\n') => Done,
            (FinalLf, _) => return Err(BadChunk::LineEnding),

            (Data | Done, _) => self.state,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `body` whole, then split at every position: the verdicts must agree.
    fn verdict(body: &[u8]) -> Result<usize, BadChunk> {
        let mut whole = ChunkedBody::new(1024);
        let once = whole
            .feed(body)
            .map(|n| if whole.is_done() { n } else { usize::MAX });
        for split in 0..body.len() {
            let mut parts = ChunkedBody::new(1024);
            let split_verdict = parts.feed(&body[..split]).and_then(|first| {
                if parts.is_done() {
                    return Ok(first);
                }
                let second = parts.feed(&body[split..])?;
                Ok(if parts.is_done() {
                    first + second
                } else {
                    usize::MAX
                })
            });
            assert_eq!(split_verdict, once, "{body:?} split at {split}");
        }
        once
    }

    fn accepted(body: &str) -> usize {
        match verdict(body.as_bytes()) {
            Ok(n) if n != usize::MAX => n,
            other => panic!("{body:?}: {other:?}"),
        }
    }

    fn refused(body: &str) -> BadChunk {
        match verdict(body.as_bytes()) {
            Err(bad) => bad,
            Ok(_) => panic!("{body:?} was accepted"),
        }
    }

    #[test]
    fn well_formed_bodies_end_where_they_end() {
        for whole in [
            "5\r\nhello\r\n0\r\n\r\n",
            "A\r\n0123456789\r\n000\r\n\r\n",
            "0\r\n\r\n",
            "5;a=b\r\nhello\r\n0\r\n\r\n",
            "5 ; a = \"b c\\\"\" ;d\r\nhello\r\n0\r\n\r\n",
            "0\r\nx-sum: 1 2\r\nY:\r\n\r\n",
        ] {
            assert_eq!(accepted(whole), whole.len());
        }
        // what follows the body is not the body's
        assert_eq!(accepted("5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 15);
        let mut body = ChunkedBody::new(1024);
        assert_eq!(body.feed(b"5\r\nhel"), Ok(6));
        assert!(!body.is_done());
    }

    #[test]
    fn the_three_findings_are_refused() {
        // a chunk size with trailing whitespace
        assert_eq!(refused("5 \r\nhello\r\n0\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused("5\t\r\nhello\r\n0\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused("0 \r\n\r\n"), BadChunk::Size);
        // an empty chunk-size line (httparse reads it as a last chunk)
        assert_eq!(refused("\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused("5\r\nhello\r\n\r\n"), BadChunk::Size);
        // NUL or a bare LF inside a chunk extension
        assert_eq!(refused("5;a\0b\r\nhello\r\n0\r\n\r\n"), BadChunk::Extension);
        assert_eq!(
            refused("5;a=\"\0\"\r\nhello\r\n0\r\n\r\n"),
            BadChunk::Extension
        );
        assert_eq!(
            refused("5;a\nb\r\nhello\r\n0\r\n\r\n"),
            BadChunk::LineEnding
        );
        assert_eq!(
            refused("5;a=b\n\r\nhello\r\n0\r\n\r\n"),
            BadChunk::LineEnding
        );
    }

    #[test]
    fn other_framing_two_parsers_could_read_differently() {
        assert_eq!(refused("5\nhello\r\n0\r\n\r\n"), BadChunk::LineEnding);
        assert_eq!(refused("5\r\rhello\r\n0\r\n\r\n"), BadChunk::LineEnding);
        assert_eq!(refused("0x5\r\nhello\r\n0\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused("+5\r\nhello\r\n0\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused(" 5\r\nhello\r\n0\r\n\r\n"), BadChunk::Size);
        assert_eq!(refused("5\r\nhelloX\r\n0\r\n\r\n"), BadChunk::DataEnd);
        assert_eq!(refused("5\r\nhello\n0\r\n\r\n"), BadChunk::DataEnd);
        assert_eq!(refused("10000000000000000\r\n"), BadChunk::Size);
        assert_eq!(refused("5;\r\nhello\r\n0\r\n\r\n"), BadChunk::Extension);
        assert_eq!(refused("5;a=b \r\nhello\r\n0\r\n\r\n"), BadChunk::Extension);
        assert_eq!(
            refused("5;a=\"b\r\nhello\r\n0\r\n\r\n"),
            BadChunk::Extension
        );
        assert_eq!(refused("5;a=\r\nhello\r\n0\r\n\r\n"), BadChunk::Extension);
        assert_eq!(refused("0\r\n x: folded\r\n\r\n"), BadChunk::Trailer);
        assert_eq!(refused("0\r\nx y: 1\r\n\r\n"), BadChunk::Trailer);
        assert_eq!(refused("0\r\nx: a\0b\r\n\r\n"), BadChunk::Trailer);
        assert_eq!(refused("0\r\nx: 1\n\r\n"), BadChunk::LineEnding);
        assert_eq!(refused("0\r\n\n"), BadChunk::LineEnding);
        let long = format!("5;a={}\r\nhello\r\n0\r\n\r\n", "b".repeat(MAX_CHUNK_LINE));
        assert_eq!(refused(&long), BadChunk::LineTooLong);
        let mut small = ChunkedBody::new(8);
        assert_eq!(
            small.feed(b"0\r\nx: 123456\r\n\r\n"),
            Err(BadChunk::Trailer)
        );
    }
}
