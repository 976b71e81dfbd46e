//! (verge) Cancel-safe proxy tasks for HTTP/2 downstream sessions.
//!
//! Pingora-core's proxy task API (queue a response task, then write it inside the proxy loop's
//! `select!` while the upstream keeps being read into the cache) exists for HTTP/1 only; for
//! HTTP/2 it panics. Without it, the proxy loop awaits each write to the client, and an HTTP/2
//! write waits for the stream's flow-control window: a client whose request drives a cache fill
//! and that stops opening its window holds the fill back for every other reader.
//!
//! This is the HTTP/2 half, kept inside pingora-proxy. The response head is written at once (h2
//! queues it without waiting for the window). Body chunks wait in a queue; each write waits for
//! window capacity and sends what fits. All the state of a write (the queue, the part of a
//! chunk not sent yet, since when the stream has waited without progress) lives in this struct,
//! so dropping a pending `write` future loses nothing, which is what the proxy loop's `select!`
//! needs. The session's write timeout bounds how long the stream may take no bytes in, across
//! any number of such drops.

use bytes::Bytes;
use h2::SendStream;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_error::{Error, ErrorType::*, OrErr, Result};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::OnceLock;
use tokio::time::{timeout_at, Instant};

/// Called for each HTTP/2 stream given up on because it took no body bytes for the session's
/// write timeout (the stream is then reset), so the crate's user can count it: this crate
/// cannot reach the user's metrics, and on a cache fill the error does not end the request.
static SEND_TIMEOUT_HOOK: OnceLock<fn()> = OnceLock::new();

/// Set the function called for each HTTP/2 stream reset because it took nothing in for the
/// session's write timeout. Only the first call takes effect; false for a later one.
pub fn on_h2_send_timeout(hook: fn()) -> bool {
    SEND_TIMEOUT_HOOK.set(hook).is_ok()
}

/// The queued response tasks of one HTTP/2 downstream stream, and its body writer once the
/// head is out.
#[derive(Default)]
pub(crate) struct H2ProxyTasks {
    enabled: bool,
    tasks: VecDeque<HttpTask>,
    /// taken from the session once the response head is written
    writer: Option<SendStream<Bytes>>,
    /// response body bytes sent through `writer`
    body_sent: usize,
    /// END_STREAM (or trailers) sent
    ended: bool,
    /// since when the front chunk has waited for window capacity without any progress
    stalled_since: Option<Instant>,
}

impl H2ProxyTasks {
    pub(crate) fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn push(&mut self, task: HttpTask) {
        self.tasks.push_back(task);
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Response body bytes written by this queue (the session's own count misses them, since
    /// the queue holds the stream's writer).
    pub(crate) fn body_bytes_sent(&self) -> usize {
        self.body_sent
    }

    /// Once this queue holds the stream's writer, the session's own watch for the client
    /// closing the stream (`read_body_or_idle`, `watch_h2_stream_close`) fails: h2 refuses
    /// `poll_reset` on the response handle after the head is sent. This is that watch, on the
    /// writer; `None` while the session still holds it.
    pub(crate) fn stream_closed(
        &mut self,
    ) -> Option<impl Future<Output = Result<h2::Reason>> + Send + '_> {
        let writer = self.writer.as_mut()?;
        Some(poll_fn(move |cx| {
            writer
                .poll_reset(cx)
                .map_err(|e| Error::because(H2Error, "downstream error while idling", e))
        }))
    }

    /// Write the queued tasks to `session`'s HTTP/2 stream; true once the response has ended.
    /// Cancel-safe. An error resets the stream: the client is given up on.
    pub(crate) async fn write(&mut self, session: &mut ServerSession) -> Result<bool> {
        let res = self.write_queued(session).await;
        if res.is_err() {
            if let Some(writer) = self.writer.as_mut() {
                writer.send_reset(h2::Reason::CANCEL);
            }
            self.tasks.clear();
        }
        res
    }

    async fn write_queued(&mut self, session: &mut ServerSession) -> Result<bool> {
        let ServerSession::H2(h2_session) = session else {
            return Error::e_explain(InternalError, "HTTP/2 proxy tasks on another protocol");
        };
        while let Some(task) = self.tasks.front_mut() {
            match task {
                HttpTask::Header(..) => {
                    let Some(HttpTask::Header(header, end)) = self.tasks.pop_front() else {
                        continue;
                    };
                    h2_session
                        .write_response_header(header, end)
                        .map_err(|e| e.into_down())?;
                    if end {
                        h2_session.finish().map_err(|e| e.into_down())?;
                        self.ended = true;
                    }
                }
                HttpTask::Body(data, end) => {
                    let end = *end;
                    let pending = data.as_mut().filter(|d| !d.is_empty());
                    let Some(pending) = pending else {
                        self.tasks.pop_front();
                        if end {
                            self.end_stream(h2_session)?;
                        }
                        continue;
                    };
                    if self.writer.is_none() {
                        self.writer = h2_session.take_response_body_writer();
                    }
                    let Some(writer) = self.writer.as_mut() else {
                        return Error::e_explain(H2Error, "response body before its header");
                    };
                    // ask for the whole chunk; take what the window gives
                    writer.reserve_capacity(pending.len());
                    let mut capacity = writer.capacity();
                    if capacity == 0 {
                        let since = *self.stalled_since.get_or_insert_with(Instant::now);
                        let wait = poll_fn(|cx| writer.poll_capacity(cx));
                        let got = match h2_session.get_write_timeout() {
                            Some(t) => match timeout_at(since + t, wait).await {
                                Ok(got) => got,
                                Err(_) => {
                                    if let Some(hook) = SEND_TIMEOUT_HOOK.get() {
                                        hook();
                                    }
                                    return Error::e_explain(
                                        WriteTimedout,
                                        format!("the h2 stream took no body bytes for {t:?}"),
                                    )
                                    .map_err(|e| e.into_down())
                                }
                            },
                            None => wait.await,
                        };
                        capacity = match got {
                            Some(ready) => ready
                                .or_err(H2Error, "while waiting for h2 capacity")
                                .map_err(|e| e.into_down())?,
                            None => {
                                return Error::e_explain(H2Error, "cannot reserve h2 capacity")
                                    .map_err(|e| e.into_down())
                            }
                        };
                    }
                    if capacity == 0 {
                        continue;
                    }
                    let part = pending.split_to(capacity.min(pending.len()));
                    let last = pending.is_empty();
                    let sent = part.len();
                    writer
                        .send_data(part, last && end)
                        .or_err(WriteError, "while writing h2 response body to downstream")
                        .map_err(|e| e.into_down())?;
                    self.body_sent += sent;
                    self.stalled_since = None;
                    if last {
                        self.tasks.pop_front();
                        self.ended = self.ended || end;
                    }
                }
                HttpTask::Trailer(trailers) => {
                    let trailers = trailers.take();
                    self.tasks.pop_front();
                    match trailers {
                        Some(trailers) if !self.ended => {
                            if self.writer.is_none() {
                                self.writer = h2_session.take_response_body_writer();
                            }
                            let Some(writer) = self.writer.as_mut() else {
                                return Error::e_explain(H2Error, "trailers before the header");
                            };
                            writer
                                .send_trailers(*trailers)
                                .or_err(WriteError, "while writing h2 trailers to downstream")
                                .map_err(|e| e.into_down())?;
                            self.ended = true;
                        }
                        _ => self.end_stream(h2_session)?,
                    }
                }
                HttpTask::Done => {
                    self.tasks.pop_front();
                    self.end_stream(h2_session)?;
                }
                HttpTask::UpgradedBody(..) => {
                    return Error::e_explain(InternalError, "upgraded body on h2 server session");
                }
                HttpTask::Failed(_) => {
                    if let Some(HttpTask::Failed(e)) = self.tasks.pop_front() {
                        return Err(e);
                    }
                }
            }
        }
        Ok(self.ended)
    }

    /// Send END_STREAM unless the response already ended.
    fn end_stream(
        &mut self,
        h2_session: &mut pingora_core::protocols::http::v2::server::HttpSession,
    ) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        match self.writer.as_mut() {
            Some(writer) => writer
                .send_data(Bytes::new(), true)
                .or_err(WriteError, "while ending the h2 response")
                .map_err(|e| e.into_down())?,
            // the writer is still in the session, which ends it
            None => h2_session.finish().map_err(|e| e.into_down())?,
        }
        self.ended = true;
        Ok(())
    }
}
