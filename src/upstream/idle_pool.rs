//! The pass lane's idle origin connections: kept per peer, the most recently used taken first,
//! each until its peer's idle timeout, at most `capacity` in all. A connection is checked when
//! it is taken (closed by the origin, broken, or with bytes nobody asked for: dropped), as
//! Pingora's pool checks one it hands out; unlike that pool it spawns no task per idle
//! connection, so one the origin closes while idle is closed here when it is next looked at
//! (taken, or swept when a connection to the same peer is put back).

use futures::FutureExt;
use pingora_core::protocols::Stream;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// One idle connection and until when it may be reused.
struct Idle {
    stream: Stream,
    until: Option<Instant>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| until <= now)
    }
}

/// Idle connections by peer (`Peer::reuse_hash`).
pub struct IdlePool {
    peers: Mutex<Peers>,
    capacity: usize,
}

#[derive(Default)]
struct Peers {
    by_peer: HashMap<u64, Vec<Idle>>,
    count: usize,
}

impl IdlePool {
    /// A pool keeping at most `capacity` idle connections.
    pub fn new(capacity: usize) -> Self {
        IdlePool {
            peers: Mutex::new(Peers::default()),
            capacity,
        }
    }

    /// An idle connection to the peer `key`, checked usable; `None` when there is none.
    pub fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut idle = {
                let mut peers = self.peers.lock().ok()?;
                let idle = peers.by_peer.get_mut(&key)?.pop()?;
                peers.count -= 1;
                idle
            };
            // expired or unusable ones are closed here, outside the lock
            if !idle.expired(now) && reusable(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// Keep `stream` (to the peer `key`) for `idle_timeout` (`None`: until the pool is full).
    /// The peer's expired connections are closed now; a full pool keeps the newer one.
    pub fn put(&self, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        let now = Instant::now();
        let until = idle_timeout.map(|t| now + t);
        let mut closed = Vec::new();
        if let Ok(mut peers) = self.peers.lock() {
            let peers = &mut *peers;
            let kept = peers.by_peer.entry(key).or_default();
            // the oldest are first
            let stale = kept.iter().take_while(|i| i.expired(now)).count();
            closed.extend(kept.drain(..stale));
            if peers.count - stale >= self.capacity && !kept.is_empty() {
                closed.push(kept.remove(0));
            }
            peers.count -= closed.len();
            if peers.count < self.capacity {
                kept.push(Idle { stream, until });
                peers.count += 1;
            }
        }
        drop(closed);
    }

    /// Idle connections kept now.
    pub fn len(&self) -> usize {
        self.peers.lock().map_or(0, |p| p.count)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether an idle connection can carry another request: a read that would wait says so; the
/// end of the stream, an error or bytes nobody asked for say it cannot.
fn reusable(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // a read that is ready returns at once; `unconstrained`: tokio's budget must not make a
    // ready read look pending
    let read = tokio::task::unconstrained(stream.read(&mut byte[..])).now_or_never();
    read.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side as Pingora's `Stream`, and the origin's side.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.expect("connect");
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(client));
        (stream, accepted.expect("accept").0)
    }

    #[tokio::test]
    async fn connections_come_back_newest_first_and_only_usable_ones() {
        let pool = IdlePool::new(8);
        let (a, _origin_a) = pair().await;
        let (b, mut origin_b) = pair().await;
        let (c, origin_c) = pair().await;
        let ids = |s: &Stream| s.id();
        let (id_a, id_b) = (ids(&a), ids(&b));
        pool.put(1, a, Some(Duration::from_secs(60)));
        pool.put(1, b, Some(Duration::from_secs(60)));
        pool.put(2, c, Some(Duration::from_secs(60)));
        assert_eq!(pool.len(), 3);
        // b's origin sent bytes nobody asked for; c's origin closed
        origin_b.write_all(b"x").await.expect("write");
        drop(origin_c);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = pool.take(1).expect("a is usable");
        assert_eq!(ids(&taken), id_a, "b was dropped, a came next");
        assert_ne!(id_a, id_b);
        assert!(pool.take(1).is_none());
        assert!(pool.take(2).is_none(), "closed by its origin");
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn expired_connections_are_closed_and_the_pool_is_bounded() {
        let pool = IdlePool::new(2);
        let (a, _oa) = pair().await;
        pool.put(1, a, Some(Duration::ZERO));
        assert!(pool.take(1).is_none(), "expired at once");
        let (b, _ob) = pair().await;
        let (c, _oc) = pair().await;
        let (d, _od) = pair().await;
        let id_d = d.id();
        pool.put(1, b, None);
        pool.put(1, c, None);
        pool.put(1, d, None);
        assert_eq!(pool.len(), 2, "the oldest made room");
        assert_eq!(pool.take(1).map(|s| s.id()), Some(id_d));
        // full, and the other peer has none to give up: the pool keeps what it has
        let (e, _oe) = pair().await;
        pool.put(1, e, None);
        let (f, _of) = pair().await;
        pool.put(2, f, None);
        assert_eq!(pool.len(), 2);
        assert!(pool.take(2).is_none());
    }
}
