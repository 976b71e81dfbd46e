//! Brotli for route compression, streamed piece by piece behind pingora-core's [`Encode`]
//! interface. pingora-core 0.9.1's own brotli pair does not fit a cache: its compressor only
//! flushes at the end, so the stream it leaves has no last meta-block (strict decoders call it
//! truncated), and its decoder, reading such a stream, drops the output past its 4 KiB buffer
//! when one piece of input decodes to more (brotli answers "needs more input" with output still
//! pending). verge's decoder reads both kinds of stream, as an origin may send either.

use brotli::writer::StandardAlloc;
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState, CompressorWriter};
use bytes::Bytes;
use pingora_core::protocols::http::compression::{Encode, COMPRESSION_ERROR};
use pingora_error::{Error, OrErr, Result};
use std::io::Write;
use std::time::{Duration, Instant};

/// brotli's window (`lgwin`): 4 MiB, as pingora and most servers use.
const WINDOW_BITS: u32 = 22;

/// Output buffer of each decoding step.
const DECODE_BUFFER: usize = 16 * 1024;

/// Compresses a body with brotli; the last piece finishes the stream.
pub struct BrotliEncoder {
    writer: Option<CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl BrotliEncoder {
    /// An encoder at `level` (0-11).
    pub fn new(level: u32) -> BrotliEncoder {
        BrotliEncoder {
            writer: Some(CompressorWriter::new(Vec::new(), 4096, level, WINDOW_BITS)),
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes> {
        let start = Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Error::e_explain(COMPRESSION_ERROR, "brotli: input after the end");
        };
        writer
            .write_all(input)
            .or_err(COMPRESSION_ERROR, "while compressing brotli")?;
        let out = if end {
            // finishing writes the last meta-block
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_in += input.len();
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("brotli", self.total_in, self.total_out, self.duration)
    }
}

/// Decodes a brotli body piece by piece.
pub struct BrotliDecoder {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    buffer: Vec<u8>,
    total_in: usize,
    total_out: usize,
    duration: Duration,
}

impl BrotliDecoder {
    /// A decoder for one body.
    pub fn new() -> BrotliDecoder {
        BrotliDecoder {
            state: BrotliState::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ),
            buffer: vec![0; DECODE_BUFFER],
            total_in: 0,
            total_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Default for BrotliDecoder {
    fn default() -> Self {
        BrotliDecoder::new()
    }
}

impl Encode for BrotliDecoder {
    fn encode(&mut self, input: &[u8], _end: bool) -> Result<Bytes> {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut avail_in = input.len();
        let mut offset_in = 0;
        let mut written = 0;
        loop {
            let mut avail_out = self.buffer.len();
            let mut offset_out = 0;
            let result = BrotliDecompressStream(
                &mut avail_in,
                &mut offset_in,
                input,
                &mut avail_out,
                &mut offset_out,
                &mut self.buffer,
                &mut written,
                &mut self.state,
            );
            out.extend_from_slice(&self.buffer[..offset_out]);
            match result {
                BrotliResult::NeedsMoreOutput => {}
                // a full buffer may leave output pending even when it asks for input
                BrotliResult::NeedsMoreInput if avail_out == 0 => {}
                BrotliResult::NeedsMoreInput | BrotliResult::ResultSuccess => break,
                BrotliResult::ResultFailure => {
                    return Error::e_explain(COMPRESSION_ERROR, "while decoding brotli");
                }
            }
        }
        self.total_in += input.len();
        self.total_out += out.len();
        self.duration += start.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, Duration) {
        ("de-brotli", self.total_in, self.total_out, self.duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> Vec<u8> {
        (0..2000)
            .flat_map(|i| format!("<li>item {i} of a long and repetitive list</li>\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_body_round_trips_whole_and_in_pieces() {
        let body = text();
        let mut enc = BrotliEncoder::new(5);
        let mut z = Vec::new();
        for piece in body.chunks(7000) {
            z.extend_from_slice(&enc.encode(piece, false).expect("compress"));
        }
        z.extend_from_slice(&enc.encode(&[], true).expect("finish"));
        assert!(z.len() < body.len() / 10, "{}", z.len());
        let (_, input, output, _) = enc.stat();
        assert_eq!((input, output), (body.len(), z.len()));
        assert!(enc.encode(b"more", false).is_err(), "input after the end");

        // one piece that decodes to far more than a buffer
        let mut dec = BrotliDecoder::new();
        assert_eq!(dec.encode(&z, true).expect("decode").to_vec(), body);
        // many small pieces
        let mut dec = BrotliDecoder::new();
        let mut out = Vec::new();
        for piece in z.chunks(3) {
            out.extend_from_slice(&dec.encode(piece, false).expect("decode"));
        }
        out.extend_from_slice(&dec.encode(&[], true).expect("decode"));
        assert_eq!(out, body);
    }

    #[test]
    fn the_stream_is_finished_and_garbage_is_refused() {
        let mut enc = BrotliEncoder::new(5);
        let z = enc.encode(b"hello, hello, hello", true).expect("compress");
        // a finished stream: the reference reader decodes it to its end
        let mut read = Vec::new();
        let mut reader = brotli::Decompressor::new(&z[..], 4096);
        std::io::Read::read_to_end(&mut reader, &mut read).expect("a complete stream");
        assert_eq!(read, b"hello, hello, hello");
        let mut dec = BrotliDecoder::new();
        assert!(dec.encode(b"\xff\xff\xff\xff not brotli", true).is_err());
    }

    /// Why this module exists: pingora-core 0.9.1's brotli pair. If a pingora upgrade fixes
    /// them, this test fails and the module can go.
    #[test]
    fn pingoras_brotli_leaves_streams_unfinished_and_loses_output() {
        use pingora_core::protocols::http::compression::Algorithm;
        let body = text();
        let mut enc = Algorithm::Brotli.compressor(5).expect("compressor");
        let z = enc.encode(&body, true).expect("compress");
        let mut reader = brotli::Decompressor::new(&z[..], 4096);
        let mut read = Vec::new();
        assert!(
            std::io::Read::read_to_end(&mut reader, &mut read).is_err(),
            "no last meta-block"
        );
        // such a stream (as a pingora-based origin sends it): pingora's decoder stops at 4 KiB
        let mut dec = Algorithm::Brotli.decompressor(true).expect("decoder");
        let out = dec.encode(&z, true).expect("decode");
        assert_eq!(out.len(), 4096, "of {}", body.len());
        let mut ours = BrotliDecoder::new();
        assert_eq!(ours.encode(&z, true).expect("decode").to_vec(), body);
    }
}
