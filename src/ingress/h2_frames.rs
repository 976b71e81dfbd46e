//! The watch on an HTTP/2 connection's frames: a budget for the frames that ask verge for work
//! but carry no request, and a GOAWAY `ENHANCE_YOUR_CALM` for a client that floods them.
//!
//! What the h2 codec (0.4) already bounds: empty non-final DATA frames (100 per connection),
//! small DATA frames (a byte budget), CONTINUATION frames, header lists, and client resets
//! (`limits.h2.max_pending_resets`, `max_error_resets`). What it takes without limit, and what
//! its `server::Builder` offers no setting for: PRIORITY, SETTINGS, PING, WINDOW_UPDATE, GOAWAY
//! and frames of unknown types. h2 answers each PING and SETTINGS before it reads on, so a
//! client that reads the answers can send them forever; the others it reads and drops. Neither
//! h2 nor Pingora counts frames anywhere verge could reach, so the front door reads the frame
//! headers itself on the raw connection, as the bytes pass to Pingora: 9 bytes per frame,
//! payloads skipped, nothing buffered.
//!
//! The budget is a token bucket per connection: `frame_budget` tokens to start with, refilled
//! at `frame_rate` per second, plus two for each DATA frame verge sends (a client may answer
//! each with a stream and a connection WINDOW_UPDATE, as downloads do). Each budgeted frame
//! takes one. When none is left, the connection gets a GOAWAY with `ENHANCE_YOUR_CALM` (written
//! between two of verge's own frames) and is closed; the flood's bytes never reach h2.

use super::watched_stream::StreamWatch;
use crate::metrics::METRICS;
use pingora_core::protocols::Stream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const END_STREAM: u8 = 0x1;

/// The frame budget of a listener (`listeners[].limits.h2.frame_budget`, `frame_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameBudgetSpec {
    /// Budgeted frames a connection may send at once.
    pub burst: u32,
    /// Budgeted frames a connection earns per second.
    pub per_second: u32,
}

/// The name of a budgeted frame type (the metric's reason), `None` for the others.
fn budgeted(kind: u8, flags: u8, len: usize) -> Option<&'static str> {
    match kind {
        DATA if len == 0 && flags & END_STREAM == 0 => Some("h2_empty_data_flood"),
        0x2 => Some("h2_priority_flood"),
        0x4 => Some("h2_settings_flood"),
        0x6 => Some("h2_ping_flood"),
        GOAWAY => Some("h2_goaway_flood"),
        0x8 => Some("h2_window_update_flood"),
        0xa.. => Some("h2_unknown_frame_flood"),
        _ => None,
    }
}

/// Where a byte stream of frames stands: a partial frame header, or payload bytes to skip.
#[derive(Debug, Default)]
struct FrameCursor {
    header: [u8; HEADER_LEN],
    have: usize,
    skip: usize,
}

/// A frame header, once whole.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    kind: u8,
    flags: u8,
    len: usize,
    stream: u32,
}

impl FrameCursor {
    /// Take `bytes`; call `each` with every frame header completed.
    fn advance(&mut self, mut bytes: &[u8], mut each: impl FnMut(FrameHead)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                let h = &self.header;
                let head = FrameHead {
                    len: usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]),
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                };
                self.have = 0;
                self.skip = head.len;
                each(head);
            }
        }
    }

    /// Between two frames.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// The tokens left, refilled with time.
#[derive(Debug)]
struct Bucket {
    spec: FrameBudgetSpec,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(spec: FrameBudgetSpec) -> Self {
        Bucket {
            spec,
            tokens: f64::from(spec.burst),
            refilled: Instant::now(),
        }
    }

    fn credit(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(f64::from(self.spec.burst));
    }

    /// Take one token at `now`; `false` when there was none.
    fn take(&mut self, now: Instant) -> bool {
        let earned =
            now.duration_since(self.refilled).as_secs_f64() * f64::from(self.spec.per_second);
        self.refilled = now;
        self.credit(earned);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// A GOAWAY with `ENHANCE_YOUR_CALM`, naming the last stream the client opened.
fn goaway(last_stream: u32) -> Vec<u8> {
    const DEBUG: &[u8] = b"frame flood";
    let len = (8 + DEBUG.len()) as u8;
    let mut f = vec![0, 0, len, GOAWAY, 0, 0, 0, 0, 0];
    f.extend_from_slice(&last_stream.to_be_bytes());
    f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    f.extend_from_slice(DEBUG);
    f
}

/// The frame watch of one HTTP/2 connection.
#[derive(Debug)]
pub struct FrameBudget {
    preface_left: usize,
    incoming: FrameCursor,
    outgoing: FrameCursor,
    bucket: Bucket,
    last_stream: u32,
    /// Set once the budget ran out: the GOAWAY and how much of it is written.
    goaway: Option<(Vec<u8>, usize)>,
}

impl FrameBudget {
    /// A watch for a new connection, before the client's preface.
    pub fn new(spec: FrameBudgetSpec) -> Self {
        FrameBudget {
            preface_left: PREFACE_LEN,
            incoming: FrameCursor::default(),
            outgoing: FrameCursor::default(),
            bucket: Bucket::new(spec),
            last_stream: 0,
            goaway: None,
        }
    }

    /// Read the frame headers in `bytes` from the client; the reason of the flood if the budget
    /// ran out.
    fn take(&mut self, mut bytes: &[u8]) -> Option<&'static str> {
        let preface = self.preface_left.min(bytes.len());
        self.preface_left -= preface;
        bytes = &bytes[preface..];
        let now = Instant::now();
        let (bucket, last_stream) = (&mut self.bucket, &mut self.last_stream);
        let mut flood = None;
        self.incoming.advance(bytes, |head| {
            if head.kind == HEADERS {
                *last_stream = (*last_stream).max(head.stream);
            }
            if let Some(reason) = budgeted(head.kind, head.flags, head.len) {
                if flood.is_none() && !bucket.take(now) {
                    flood = Some(reason);
                }
            }
        });
        flood
    }

    /// Write what is left of the GOAWAY; ready once it is all out.
    fn poll_goaway(&mut self, inner: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((frame, written)) = self.goaway.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while *written < frame.len() {
            match Pin::new(&mut *inner).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(inner).poll_flush(cx)
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 frame flood: GOAWAY sent",
    )
}

impl StreamWatch for FrameBudget {
    fn poll_read(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.goaway.is_some() {
            // the connection ends: the GOAWAY goes out, then h2 reads the end of the stream
            return self.poll_goaway(inner, cx);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut *inner).poll_read(cx, buf);
        if !matches!(read, Poll::Ready(Ok(()))) {
            return read;
        }
        let Some(reason) = self.take(&buf.filled()[before..]) else {
            return read;
        };
        // none of the flood reaches h2
        buf.set_filled(before);
        METRICS.rejected.with_label_values(&[reason]).inc();
        if !self.outgoing.at_boundary() {
            // verge is inside one of its own frames (the client is not reading them): a GOAWAY
            // cannot go in between, and nobody would read it
            return Poll::Ready(Err(ended()));
        }
        self.goaway = Some((goaway(self.last_stream), 0));
        self.poll_goaway(inner, cx)
    }

    fn poll_write(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(inner, cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.goaway.is_some() {
            return match self.poll_goaway(inner, cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Err(ended())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let written = Pin::new(inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            // follow verge's own frames through the bytes the socket took
            let bucket = &mut self.bucket;
            let mut left = n;
            for buf in bufs {
                let taken = left.min(buf.len());
                self.outgoing.advance(&buf[..taken], |head| {
                    if head.kind == DATA && head.len > 0 {
                        bucket.credit(2.0);
                    }
                });
                left -= taken;
                if left == 0 {
                    break;
                }
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let l = (len as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend(std::iter::repeat_n(0u8, len));
        f
    }

    fn budget(burst: u32) -> FrameBudget {
        FrameBudget::new(FrameBudgetSpec {
            burst,
            per_second: 1,
        })
    }

    #[test]
    fn budgeted_frames_run_out_however_the_bytes_are_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 0, 6)); // SETTINGS
        bytes.extend(frame(0x1, 0x4, 1, 20)); // HEADERS: not budgeted
        bytes.extend(frame(0x0, 0x1, 1, 0)); // final empty DATA: not budgeted
        bytes.extend(frame(0x2, 0, 3, 5)); // PRIORITY
        bytes.extend(frame(0x6, 0, 0, 8)); // PING
        for split in 0..bytes.len() {
            let mut b = budget(3);
            assert_eq!(b.take(&bytes[..split]), None);
            assert_eq!(b.take(&bytes[split..]), None, "split at {split}");
            assert_eq!(b.last_stream, 1);
            assert_eq!(b.take(&frame(0x8, 0, 0, 4)), Some("h2_window_update_flood"));
        }
        let mut b = budget(2);
        assert_eq!(b.take(&bytes[..24]), None);
        assert_eq!(b.take(&frame(0x0, 0, 1, 0)), None);
        assert_eq!(b.take(&frame(0xff, 0, 0, 3)), None);
        assert_eq!(b.take(&frame(0x7, 0, 0, 8)), Some("h2_goaway_flood"));
    }

    #[test]
    fn verge_s_data_frames_earn_window_updates() {
        let mut b = budget(4);
        b.bucket.tokens = 0.0;
        let mut cursor = FrameCursor::default();
        let mut data_frames = 0;
        let out = [
            frame(0x1, 0x4, 1, 10),
            frame(0x0, 0, 1, 100),
            frame(0x0, 0x1, 1, 0),
        ]
        .concat();
        cursor.advance(&out, |head| {
            if head.kind == DATA && head.len > 0 {
                data_frames += 1;
            }
        });
        assert_eq!(data_frames, 1);
        assert!(cursor.at_boundary());
        b.bucket.credit(2.0);
        assert!(b.bucket.take(b.bucket.refilled));
        assert!(b.bucket.take(b.bucket.refilled));
        assert!(!b.bucket.take(b.bucket.refilled));
    }

    #[test]
    fn the_goaway_names_the_last_stream_and_calms() {
        let f = goaway(7);
        assert_eq!(f[3], GOAWAY);
        assert_eq!(usize::from(f[2]), f.len() - HEADER_LEN);
        assert_eq!(&f[9..13], &7u32.to_be_bytes());
        assert_eq!(&f[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
    }
}
