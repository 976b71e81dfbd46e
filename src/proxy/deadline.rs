//! The whole-response deadline for origin fetches (`timeouts.total`): from the first connect
//! attempt to the last byte of the origin's response, retries included. Pingora's own timeouts
//! are per read, so an origin sending a byte every few seconds would never trip them.
//!
//! Pingora gives verge no hook while it reads a response head, nor one between body reads, so
//! the deadline acts on the connection itself: [`ResponseDeadline::arm`] takes a duplicate of
//! the upstream socket's descriptor when the connection is handed to the request, and a timer
//! shuts that socket down (both directions) when the deadline passes. Pingora's pending read
//! then ends (an error before the head, a cut body after it), and verge reports it as a
//! timeout. The duplicate is closed when the timer is disarmed, so it never outlives the
//! request, and because it is verge's own descriptor it can never name another connection.

use pingora_error::{Error, ErrorType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request's deadline and the timer watching its current upstream connection.
#[derive(Debug)]
pub struct ResponseDeadline {
    at: Instant,
    total: Duration,
    fired: Arc<AtomicBool>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl ResponseDeadline {
    /// A deadline `total` after `start`.
    pub fn new(start: Instant, total: Duration) -> Self {
        ResponseDeadline {
            at: start + total,
            total,
            fired: Arc::new(AtomicBool::new(false)),
            timer: None,
        }
    }

    /// Time left at `now` (zero once passed).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Whether the deadline has passed (or its timer cut the connection).
    pub fn expired(&self, now: Instant) -> bool {
        self.fired.load(Ordering::Relaxed) || now >= self.at
    }

    /// The error a request over its deadline fails with: an upstream read timeout (504 before
    /// the response head, `verge_upstream_errors_total{kind="timeout"}`), never retried.
    pub fn error(&self, cause: Option<Box<Error>>) -> Box<Error> {
        let context = format!(
            "origin response not complete within timeouts.total ({:?})",
            self.total
        );
        let mut e = match cause {
            Some(cause) => Error::because(ErrorType::ReadTimedout, context, cause),
            None => Error::explain(ErrorType::ReadTimedout, context),
        };
        e.as_up();
        e.set_retry(false);
        e
    }

    /// Watch the upstream connection `fd`: when the deadline passes, shut it down. Replaces the
    /// watch of an earlier connection (a retry).
    #[cfg(unix)]
    pub fn arm(&mut self, fd: std::os::unix::io::RawFd) -> std::io::Result<()> {
        use std::os::fd::BorrowedFd;
        self.disarm();
        // SAFETY: `fd` is the descriptor of the upstream connection Pingora has just handed to
        // this request (`connected_to_upstream`); it stays open for the whole call. It is only
        // borrowed long enough to duplicate it into a descriptor verge owns.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = std::net::TcpStream::from(borrowed.try_clone_to_owned()?);
        let fired = self.fired.clone();
        let at = tokio::time::Instant::from_std(self.at);
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            fired.store(true, Ordering::Relaxed);
            if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
                log::debug!("timeouts.total: shutting the origin connection down: {e}");
            }
            // `socket` (the duplicate) closes here
        }));
        Ok(())
    }

    /// Stop watching: the response is complete (or failed, or became a tunnel). Closes the
    /// duplicate descriptor.
    pub fn disarm(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Drop for ResponseDeadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// Whether a response with this head can carry a body the deadline still has to wait for: not
/// a 204 or 304 (RFC 9112 §6.3), nor one with `Content-Length: 0`. (A response to `HEAD` has
/// none either, but with the cache on Pingora asks the origin with `GET`; the deadline is
/// disarmed when such a request ends.)
pub fn body_follows(resp: &pingora_http::ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    if status == 204 || status == 304 {
        return false;
    }
    resp.headers
        .get(http::header::CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes().trim_ascii() != b"0")
}

/// `connected_to_upstream`: a request already over its deadline fails now; otherwise the
/// origin connection `fd` is watched, so the deadline can cut it.
#[cfg(unix)]
pub fn watch_connection(
    deadline: &mut Option<ResponseDeadline>,
    fd: std::os::unix::io::RawFd,
) -> pingora_error::Result<()> {
    if let Some(d) = deadline.as_mut() {
        if d.expired(Instant::now()) {
            return Err(d.error(None));
        }
        if let Err(e) = d.arm(fd) {
            log::warn!("timeouts.total: cannot watch the origin connection: {e}");
        }
    }
    Ok(())
}

/// `upstream_response_body_filter`: over the deadline, even a body that ends here (a
/// close-delimited one ends when the deadline cut its connection) is not the origin's whole
/// response, so it fails, and is not stored; once the whole response is in, no deadline
/// applies to what follows.
pub fn body_arrived(
    deadline: &mut Option<ResponseDeadline>,
    end_of_stream: bool,
) -> pingora_error::Result<()> {
    if let Some(d) = deadline.as_ref() {
        if d.expired(Instant::now()) {
            return Err(d.error(None));
        }
        if end_of_stream {
            *deadline = None;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn remaining_and_expiry() {
        let start = Instant::now();
        let d = ResponseDeadline::new(start, Duration::from_secs(10));
        assert_eq!(d.remaining(start), Duration::from_secs(10));
        assert_eq!(
            d.remaining(start + Duration::from_secs(4)),
            Duration::from_secs(6)
        );
        assert_eq!(d.remaining(start + Duration::from_secs(11)), Duration::ZERO);
        assert!(!d.expired(start + Duration::from_secs(9)));
        assert!(d.expired(start + Duration::from_secs(10)));
        let e = d.error(None);
        assert_eq!(e.etype(), &ErrorType::ReadTimedout);
        assert_eq!(e.esource(), &pingora_error::ErrorSource::Upstream);
        assert!(!e.retry());
        assert_eq!(
            crate::proxy::upstream_error::kind(&e),
            Some("timeout"),
            "counted as a timeout"
        );
    }

    #[test]
    fn bodies_to_wait_for() {
        let head = |status: u16, cl: Option<&str>| {
            let mut h = pingora_http::ResponseHeader::build(status, None).expect("h");
            if let Some(cl) = cl {
                h.insert_header("content-length", cl).expect("h");
            }
            h
        };
        assert!(body_follows(&head(200, None)));
        assert!(body_follows(&head(200, Some("5"))));
        assert!(!body_follows(&head(200, Some("0"))));
        assert!(!body_follows(&head(204, None)));
        assert!(!body_follows(&head(304, None)));
    }

    /// A connected pair: (the side the deadline watches, the peer).
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_passed_deadline_cuts_the_connection() {
        use std::os::fd::AsRawFd;
        let (mut watched, mut peer) = pair().await;
        let mut d = ResponseDeadline::new(Instant::now(), Duration::from_millis(50));
        d.arm(watched.as_raw_fd()).expect("arm");
        // a read pending on the watched side ends once the deadline passes, though the peer
        // keeps the connection open and silent
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), watched.read(&mut buf))
            .await
            .expect("the read ended")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(d.expired(Instant::now()));
        // the peer sees the connection end too
        let n = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf))
            .await
            .expect("peer read ended")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_disarmed_deadline_leaves_the_connection_alone() {
        use std::os::fd::AsRawFd;
        let (mut watched, mut peer) = pair().await;
        let mut d = ResponseDeadline::new(Instant::now(), Duration::from_millis(50));
        d.arm(watched.as_raw_fd()).expect("arm");
        d.disarm();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!d.fired.load(Ordering::Relaxed));
        peer.write_all(b"still here").await.expect("write");
        let mut buf = [0u8; 10];
        watched.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"still here");
        // dropping the deadline (the request ending) is a disarm too
        let mut d = ResponseDeadline::new(Instant::now(), Duration::from_millis(50));
        d.arm(watched.as_raw_fd()).expect("arm");
        let fired = d.fired.clone();
        drop(d);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!fired.load(Ordering::Relaxed));
        watched.write_all(b"x").await.expect("write after drop");
    }
}
