//! gzip decoding for route compression, behind pingora-core's [`Encode`] interface: zlib-ng's
//! inflate with its own gzip wrapper (header, CRC-32 and length checked there), writing straight
//! into the piece handed on. pingora-core's decoder (flate2's `write::GzDecoder`) inflates into
//! a 32 KiB buffer of its own, copies from there into the piece, and leaves zlib to copy each
//! call's output into its window too. Here a body that comes whole (a stored hit) is inflated
//! in one call into a buffer of the length its trailer announces, which needs neither copy.

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use pingora_core::protocols::http::compression::{Encode, COMPRESSION_ERROR};
use pingora_error::{Error, OrErr, Result};
use std::time::{Duration, Instant};

/// zlib's largest window (32 KiB), which gzip streams may use.
const WINDOW_BITS: u8 = 15;

/// deflate's largest expansion: no body decodes to more than this many times its size.
const MAX_RATIO: usize = 1032;

/// The most room reserved at once on the strength of a trailer's announced length.
const MAX_ANNOUNCED: usize = 16 << 20;

/// Room reserved for a piece whose decoded length is not announced (and the least ever).
const MIN_ROOM: usize = 16 << 10;

/// Decodes a gzip body piece by piece (a series of members, RFC 1952 §2.2).
pub struct GzipDecoder {
    inflate: Decompress,
    /// The current member was read to its end (trailer checked).
    member_done: bool,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl GzipDecoder {
    /// A decoder for one body.
    pub fn new() -> GzipDecoder {
        GzipDecoder {
            inflate: Decompress::new_gzip(WINDOW_BITS),
            member_done: false,
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }

    /// Room to reserve before inflating `input`, `out` holding what this piece gave so far.
    /// A piece that starts a member and ends it too (a whole stored body) announces its decoded
    /// length in its last four bytes (ISIZE); anything else grows as it goes.
    fn room_for(&self, input: &[u8], out: &[u8]) -> usize {
        let announced = (self.inflate.total_out() == 0 && input.starts_with(&[0x1f, 0x8b]))
            .then(|| input.len().checked_sub(4).and_then(|at| input.get(at..)))
            .flatten()
            .and_then(|tail| <[u8; 4]>::try_from(tail).ok())
            .map(|isize| u32::from_le_bytes(isize) as usize)
            .filter(|&n| n <= input.len().saturating_mul(MAX_RATIO) && n <= MAX_ANNOUNCED);
        match announced {
            // one byte more: the call that writes the last byte also reads the trailer
            Some(n) if out.is_empty() => n + 1,
            _ => input.len().saturating_mul(4).max(out.len()).max(MIN_ROOM),
        }
    }
}

impl Default for GzipDecoder {
    fn default() -> Self {
        GzipDecoder::new()
    }
}

impl Encode for GzipDecoder {
    fn encode(&mut self, mut input: &[u8], end: bool) -> Result<Bytes> {
        let start = Instant::now();
        self.total_in += input.len();
        let mut out = Vec::new();
        loop {
            if self.member_done {
                if input.is_empty() {
                    break;
                }
                // another member follows
                self.inflate = Decompress::new_gzip(WINDOW_BITS);
                self.member_done = false;
            }
            out.reserve(self.room_for(input, &out));
            let before = self.inflate.total_in();
            // `Finish`: when the output fits, zlib keeps no window copy of it
            let status = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Finish)
                .or_err(COMPRESSION_ERROR, "while decoding gzip")?;
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            match status {
                Status::StreamEnd => self.member_done = true,
                // out of room: more may be pending, with or without input
                _ if out.len() == out.capacity() => {}
                // all of it read: the member goes on in the next piece
                _ if input.is_empty() => break,
                _ => return Error::e_explain(COMPRESSION_ERROR, "gzip: no progress"),
            }
        }
        if end && !self.member_done {
            return Error::e_explain(COMPRESSION_ERROR, "gzip: the body ends inside a member");
        }
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("de-gzip", self.total_in, self.total_out, self.duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn text() -> Vec<u8> {
        (0..3000)
            .flat_map(|i| format!("<li>item {i} of a long and repetitive list</li>\n").into_bytes())
            .collect()
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(body).expect("compress");
        enc.finish().expect("finish")
    }

    /// Decode `pieces` as one body (the end comes in a last empty call, as Pingora's does).
    fn decode(pieces: &[&[u8]]) -> Result<Vec<u8>> {
        let mut dec = GzipDecoder::new();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&dec.encode(piece, false)?);
        }
        out.extend_from_slice(&dec.encode(&[], true)?);
        Ok(out)
    }

    #[test]
    fn a_body_round_trips_whole_and_in_pieces() {
        let body = text();
        let z = gzip(&body);
        assert_eq!(decode(&[&z]).expect("whole"), body);
        let mut dec = GzipDecoder::new();
        let whole = dec.encode(&z, false).expect("whole");
        assert_eq!(whole.len(), body.len(), "all of it from the one piece");
        assert_eq!(dec.stat().1, z.len());
        for size in [1, 3, 7, 100, 4096] {
            let pieces: Vec<&[u8]> = z.chunks(size).collect();
            assert_eq!(decode(&pieces).expect("pieces"), body, "pieces of {size}");
        }
        // what pingora-core's decoder gives for the same stream
        use pingora_core::protocols::http::compression::Algorithm;
        let mut theirs = Algorithm::Gzip.decompressor(true).expect("decoder");
        assert_eq!(theirs.encode(&z, true).expect("decode").to_vec(), body);
        // an empty body
        assert_eq!(decode(&[&gzip(b"")]).expect("empty"), b"");
    }

    #[test]
    fn members_follow_each_other_and_damage_is_refused() {
        let (a, b) = (gzip(b"first member, "), gzip(b"second member"));
        let both = [a.clone(), b].concat();
        assert_eq!(
            decode(&[&both]).expect("two members"),
            b"first member, second member"
        );
        // a length that lies only changes how much room is reserved first
        let mut lying = gzip(&text());
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode(&[&lying]).is_err(), "the length is checked");
        let mut bad_crc = a.clone();
        bad_crc[a.len() - 8] ^= 0xff;
        assert!(decode(&[&bad_crc]).is_err(), "the CRC is checked");
        assert!(decode(&[&a[..a.len() - 3]]).is_err(), "truncated");
        assert!(decode(&[b"not gzip at all"]).is_err());
        assert!(decode(&[&[a.as_slice(), b"junk"].concat()]).is_err());
    }
}
