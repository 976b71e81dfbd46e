//! The watch on an HTTP/1 connection's request bodies: chunked framing checked strictly before
//! Pingora's parser reads it, and a body that drips cut off; and on its responses: a client that
//! takes nothing in for `send_timeout` is cut off.
//!
//! Why here, on the raw stream: Pingora 0.9 reads chunk lines with `httparse`, which takes what
//! RFC 9112 does not (see [`crate::http_syntax::chunked`]), and it has no hook between the socket
//! and that parser. Its own body timeout is per read, so a client sending a byte every ten
//! seconds keeps a request open forever. The front door already owns the connection (it reads
//! every head itself), so it watches the bytes after each head too: the bytes that arrived with
//! the head are checked before anything is routed, the rest as Pingora reads them. A refused
//! body makes the read fail with a [`BodyRefusal`], which `fail_to_proxy` answers (400 or 408,
//! or a close once a response has started); no refused byte ever reaches Pingora or an origin.
//!
//! Pace is measured only while Pingora waits for the client: time the origin takes to accept
//! the body it already has is not the client's. A body may be idle for at most `idle`, and it
//! may take in all `idle` plus one second per `min_rate` bytes received (Apache's
//! `mod_reqtimeout` rule), so a drip of one byte every ten seconds ends after `idle`.
//!
//! Responses: a write the client's socket takes nothing of for `send_timeout` fails (nginx's
//! `send_timeout`: the time between two successful writes, however large the response). Pingora
//! then gives up on that client; when it was the one fetching a cached object, Pingora keeps
//! filling the cache for the other readers.

use super::watched_stream::StreamWatch;
use crate::http_syntax::chunked::ChunkedBody;
use crate::metrics::METRICS;
use crate::proxy::request_body::{pace_allowance, BodyRefusal};
use pingora_core::protocols::Stream;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How a request's body is framed, as the front door read its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The pace a request body must keep (`listeners[].limits.body_timeout`, `body_min_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the next body byte.
    pub idle: Duration,
    /// Slowest average rate in bytes per second, after `idle` of grace (0: no minimum).
    pub min_rate: u64,
}

#[derive(Debug)]
enum Remaining {
    Nothing,
    Length(u64),
    Chunked(ChunkedBody),
}

/// The body watch of one connection; [`BodyGuard::start`] arms it for each request.
#[derive(Debug)]
pub struct BodyGuard {
    pace: BodyPace,
    max_trailers: usize,
    body: Remaining,
    received: u64,
    waited: Duration,
    wait_started: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    refused: Option<BodyRefusal>,
    send_timeout: Duration,
    send_stalled: Option<Instant>,
    send_timer: Pin<Box<Sleep>>,
}

impl BodyGuard {
    /// A watch for a connection whose bodies keep `pace`, with trailer sections of at most
    /// `max_trailers` bytes, and whose client must take response bytes in within
    /// `send_timeout`. Needs a Tokio runtime (it holds timers).
    pub fn new(pace: BodyPace, max_trailers: usize, send_timeout: Duration) -> Self {
        BodyGuard {
            pace,
            max_trailers,
            body: Remaining::Nothing,
            received: 0,
            waited: Duration::ZERO,
            wait_started: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            refused: None,
            send_timeout,
            send_stalled: None,
            send_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Follow a write: any progress restarts the clock; none for `send_timeout` fails it.
    fn sent(
        &mut self,
        cx: &mut Context<'_>,
        write: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if write.is_ready() {
            self.send_stalled = None;
            return write;
        }
        if self.send_stalled.is_none() {
            let now = Instant::now();
            self.send_stalled = Some(now);
            self.send_timer.as_mut().reset(now + self.send_timeout);
        }
        if self.send_timer.as_mut().poll(cx).is_ready() {
            self.send_stalled = None;
            METRICS.rejected.with_label_values(&["send_timeout"]).inc();
            let stalled = io::Error::new(io::ErrorKind::TimedOut, "client took no response bytes");
            return Poll::Ready(Err(stalled));
        }
        Poll::Pending
    }

    /// A new request's body starts, framed as `framing`; `arrived` is what came with the head.
    /// Refused at once when those bytes already break the framing.
    pub fn start(&mut self, framing: BodyFraming, arrived: &[u8]) -> Result<(), BodyRefusal> {
        self.body = match framing {
            BodyFraming::None | BodyFraming::Length(0) => Remaining::Nothing,
            BodyFraming::Length(n) => Remaining::Length(n),
            BodyFraming::Chunked => Remaining::Chunked(ChunkedBody::new(self.max_trailers)),
        };
        self.received = 0;
        self.waited = Duration::ZERO;
        self.wait_started = None;
        match self.take(arrived) {
            Ok(()) => Ok(()),
            Err(refusal) => Err(self.refuse(refusal)),
        }
    }

    /// Account for body bytes that arrived.
    fn take(&mut self, fresh: &[u8]) -> Result<(), BodyRefusal> {
        match &mut self.body {
            Remaining::Nothing => {}
            Remaining::Length(left) => {
                let n = (*left).min(fresh.len() as u64);
                *left -= n;
                self.received += n;
                if *left == 0 {
                    self.body = Remaining::Nothing;
                }
            }
            Remaining::Chunked(chunked) => {
                let n = chunked.feed(fresh).map_err(BodyRefusal::Framing)?;
                self.received += n as u64;
                if chunked.is_done() {
                    self.body = Remaining::Nothing;
                }
            }
        }
        Ok(())
    }

    fn refuse(&mut self, refusal: BodyRefusal) -> BodyRefusal {
        if self.refused.is_none() {
            METRICS
                .rejected
                .with_label_values(&[refusal.reason()])
                .inc();
            self.refused = Some(refusal);
        }
        refusal
    }

    /// When the current wait for the client ends, and what it is refused as then.
    fn deadline(&self, start: Instant) -> (Instant, BodyRefusal) {
        let idle = (start + self.pace.idle, BodyRefusal::Idle);
        let Some(allowed) = pace_allowance(self.received, self.pace.idle, self.pace.min_rate)
        else {
            return idle;
        };
        let left = allowed.saturating_sub(self.waited);
        let slow = (start + left, BodyRefusal::TooSlow);
        if slow.0 < idle.0 {
            slow
        } else {
            idle
        }
    }
}

impl StreamWatch for BodyGuard {
    fn poll_write(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(inner).poll_write(cx, data);
        self.sent(cx, write)
    }

    fn poll_write_vectored(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(inner).poll_write_vectored(cx, bufs);
        self.sent(cx, write)
    }

    fn poll_read(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(refusal) = self.refused {
            return Poll::Ready(Err(io::Error::other(refusal)));
        }
        if matches!(self.body, Remaining::Nothing) {
            return Pin::new(inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(start) = self.wait_started.take() {
                    self.waited += start.elapsed();
                }
                let fresh = &buf.filled()[before..];
                if let Err(refusal) = self.take(fresh) {
                    // not one byte of a refused body goes on
                    buf.set_filled(before);
                    return Poll::Ready(Err(io::Error::other(self.refuse(refusal))));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let start = *self.wait_started.get_or_insert_with(Instant::now);
                let (at, refusal) = self.deadline(start);
                if self.timer_at != Some(at) {
                    self.timer.as_mut().reset(at);
                    self.timer_at = Some(at);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::other(self.refuse(refusal))));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_syntax::chunked::BadChunk;

    fn guard(min_rate: u64) -> BodyGuard {
        let pace = BodyPace {
            idle: Duration::from_secs(10),
            min_rate,
        };
        BodyGuard::new(pace, 1024, Duration::from_secs(30))
    }

    #[tokio::test]
    async fn what_came_with_the_head_is_checked_at_once() {
        let mut g = guard(0);
        assert_eq!(g.start(BodyFraming::Chunked, b"5\r\nhel"), Ok(()));
        assert!(matches!(g.body, Remaining::Chunked(_)));
        assert_eq!(
            g.start(BodyFraming::Chunked, b"5 \r\nhello\r\n0\r\n\r\n"),
            Err(BodyRefusal::Framing(BadChunk::Size))
        );
        let mut g = guard(0);
        assert_eq!(g.start(BodyFraming::Length(3), b"abcGET"), Ok(()));
        assert!(matches!(g.body, Remaining::Nothing));
        assert_eq!(g.received, 3);
        assert_eq!(g.start(BodyFraming::Chunked, b"0\r\n\r\n"), Ok(()));
        assert!(matches!(g.body, Remaining::Nothing));
    }

    #[tokio::test]
    async fn the_allowance_grows_with_what_arrived() {
        let mut g = guard(100);
        let t = Instant::now();
        // nothing yet: the idle timeout and the rate allowance end together; idle is named
        assert_eq!(
            g.deadline(t),
            (t + Duration::from_secs(10), BodyRefusal::Idle)
        );
        // 500 bytes earned 5 s, but 12 s of waiting were spent already
        g.received = 500;
        g.waited = Duration::from_secs(12);
        assert_eq!(
            g.deadline(t),
            (t + Duration::from_secs(3), BodyRefusal::TooSlow)
        );
        // no minimum rate: only the idle timeout
        let mut g = guard(0);
        g.waited = Duration::from_secs(100);
        assert_eq!(g.deadline(t).1, BodyRefusal::Idle);
    }
}
