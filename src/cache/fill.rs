//! A response body while its origin fetch is in flight (a "fill"): one miss handler appends to
//! it, and any number of readers (the fetching request itself and requests collapsed onto it)
//! stream it as it arrives.
//!
//! How pingora 0.9.1 drives this, because `MemoryStorage::support_streaming_partial_write` is
//! true:
//! - pingora-cache's `HttpCache::set_miss_handler` releases the miss lock with
//!   `LockStatus::Done` as soon as the response head is stored, so every waiter looks the key up
//!   again and gets a [`PartialHit`] from `Storage::lookup`. It then asks
//!   `Storage::lookup_streaming_write` for the fetching request's own reader and **panics** if
//!   that returns `None`; the storage answers an error instead when it cannot find the fill.
//! - The fetching request's client is served from that reader, not from the upstream stream
//!   (`ServeFromCache::CacheBodyMiss` in pingora-proxy's `ServeFromCache::next_http_task`). So a failed
//!   cache write (`write_body` or pingora's own max-file-size check returning an error) aborts
//!   the whole response (pingora-proxy's `h1_response_filter`), and disabling the cache mid-body fails the
//!   next read with "Cache disabled". Writing therefore does not fail here while anyone reads:
//!   an object that turns out larger than `cache.max_object_size` keeps streaming, marked
//!   oversize, and is simply not stored at the end.
//! - A hit reader's error ends the client response without its last chunk and without reuse
//!   of the connection (pingora-proxy's `proxy_cache_hit`, then its `finish` with
//!   `reuse = false`).
//!   That is how a failed fetch reaches every reader: the miss handler is dropped without
//!   `finish`, the fill turns [`Phase::Failed`], and every read after that is an error, so
//!   no reader ever sees a cut body end like a complete one.
//! - Readers get bytes as soon as they are appended. Pingora's HTTP/1 writer does not flush a
//!   response with `Content-Length` by itself, though (pingora-core's HTTP/1 server session,
//!   `prepare_response_header`), so such a body reaches the client in steps of its write buffer
//!   (`DEFAULT_L4_WRITE_BUFFER_SIZE`, 1460 bytes);
//!   chunked responses are flushed chunk by chunk.
//!
//! Memory: a fill that may still be stored keeps its whole body, at most `max_object_size`
//! bytes (one more chunk turns it oversize). An oversize fill keeps only what some reader has
//! not read yet, and never more than a window of `max(max_object_size, 4 MiB)` behind the
//! newest byte (plus the chunk being added): a reader that falls further behind loses its
//! place and gets an error. A reader keeps up by taking everything available (up to 1 MiB) on
//! each read, so the fetching request's own client, which pingora serves in turns with reading
//! the origin, stays far inside the window. Once no reader of an oversize fill can read on
//! (every one dropped or left behind, the fetching request's own client included: pingora
//! keeps filling after that client is gone, in pingora-proxy's `proxy_handle_downstream`), the
//! next write fails and
//! pingora ends the fetch, so an abandoned oversize download costs the origin at most about one
//! window more.

use super::stored_meta::StoredMeta;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora_cache::key::{CompactCacheKey, HashBinary};
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The smallest lag window of an oversize fill (see the module doc).
pub const MIN_LAG_WINDOW: usize = 4 << 20;
/// The most one read hands out at once when a reader is behind by several chunks.
const MAX_READ: usize = 1 << 20;

/// Where a fill is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The origin is still sending.
    Writing,
    /// The whole body arrived (and was stored, unless the fill was oversize or revoked).
    Done,
    /// The fetch failed (or its body did not match its `Content-Length`): readers get errors.
    Failed,
}

/// What [`Fill::append`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// This piece took the body over `max_object_size`.
    pub became_oversize: bool,
    /// The fill is oversize and no reader can read on: all are gone or left behind the lag
    /// window (the fetching request's own client too, which pingora stops reading from once
    /// that client is gone). Fetching the rest would be for nobody.
    pub orphaned: bool,
}

/// How a fill ended, as [`Fill::seal`] found it.
pub enum Sealed {
    /// The whole body, ready to be stored.
    Body(Bytes),
    /// Complete, but not to be stored: oversize, or purged while in flight.
    NotStored,
    /// The body does not match its `Content-Length`: the fill is now failed.
    Broken,
}

struct State {
    chunks: VecDeque<Bytes>,
    /// Body offset of each chunk in `chunks`.
    starts: VecDeque<usize>,
    /// Body bytes appended so far.
    written: usize,
    /// Bytes held in `chunks` and counted in the storage's in-flight total.
    held: usize,
    phase: Phase,
    oversize: bool,
    /// Read positions of the attached readers (`None`: a free slot).
    readers: Vec<Option<usize>>,
}

/// `body` in an allocation of its own size. A chunk read from the origin can be a slice of a
/// larger read buffer, which storing it would keep alive whole (RSS well over the bytes
/// cached); it is copied unless it is the only owner of a buffer that fits it.
fn exact_size(body: Bytes) -> Bytes {
    match body.try_into_mut() {
        Ok(whole) if whole.capacity() <= whole.len() + whole.len() / 64 + 64 => whole.freeze(),
        Ok(whole) => Bytes::copy_from_slice(&whole),
        Err(shared) => Bytes::copy_from_slice(&shared),
    }
}

impl State {
    /// Body offset of the first byte still held.
    fn base(&self) -> usize {
        self.starts.front().copied().unwrap_or(self.written)
    }

    /// Bytes `pos..end` (at most [`MAX_READ`]), without copying when they lie in one chunk.
    /// `pos` must be at least [`State::base`] and below `end <= written`.
    fn read(&self, pos: usize, end: usize) -> Bytes {
        let i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        let (Some(chunk), Some(&start)) = (self.chunks.get(i), self.starts.get(i)) else {
            return Bytes::new();
        };
        let end = end.min(pos + MAX_READ);
        let local = pos - start;
        if end <= start + chunk.len() {
            return chunk.slice(local..end - start);
        }
        let mut out = BytesMut::with_capacity(end - pos);
        out.extend_from_slice(&chunk[local..]);
        for (chunk, &start) in self.chunks.iter().zip(self.starts.iter()).skip(i + 1) {
            if start >= end {
                break;
            }
            out.extend_from_slice(&chunk[..chunk.len().min(end - start)]);
        }
        out.freeze()
    }

    /// Drop the chunks everyone has read, and anything more than `window` behind the newest
    /// byte. Returns how many bytes were let go.
    fn trim(&mut self, window: usize) -> usize {
        let slowest = self.readers.iter().flatten().min().copied();
        let floor = self.written.saturating_sub(window);
        let keep_from = slowest.unwrap_or(self.written).max(floor);
        let mut freed = 0;
        while let (Some(chunk), Some(&start)) = (self.chunks.front(), self.starts.front()) {
            if start + chunk.len() > keep_from {
                break;
            }
            freed += chunk.len();
            self.chunks.pop_front();
            self.starts.pop_front();
        }
        self.held -= freed;
        freed
    }

    fn clear(&mut self) -> usize {
        let freed = self.held;
        self.chunks.clear();
        self.starts.clear();
        self.held = 0;
        freed
    }
}

/// One in-flight response body (see the module doc).
pub struct Fill {
    /// Matches the miss handler's streaming write tag.
    pub id: u64,
    /// The storage slot it will be stored under (primary + variance).
    pub key: HashBinary,
    /// The URL part of the key, for purges of a whole URL.
    pub primary: HashBinary,
    /// The whole key in compact form, kept with the stored entry for invalidation sweeps.
    pub compact: CompactCacheKey,
    /// The response head, shared by every reader of the fill.
    pub meta: Arc<StoredMeta>,
    /// The `Content-Length` of the response, which the body must match to be stored.
    expected_len: Option<usize>,
    max_body: usize,
    window: usize,
    /// Readers may still attach: writing, not oversize, not revoked, not failed. Stays set
    /// while a complete body is being stored, so a lookup always finds the fill or its entry.
    open: AtomicBool,
    /// Purged while in flight: not to be stored.
    revoked: AtomicBool,
    state: Mutex<State>,
    wake: watch::Sender<()>,
    /// The storage's count of bytes held by fills.
    inflight: &'static AtomicU64,
    /// Requests for the object so far: the fetch, and each other request that read the fill
    /// (the stored entry starts its count of uses from it; see `cache.disk.min_uses`).
    pub uses: AtomicU32,
}

impl Fill {
    /// A new, empty fill. `max_body` is `cache.max_object_size`.
    pub fn new(
        id: u64,
        key: &CacheKey,
        meta: Arc<StoredMeta>,
        expected_len: Option<usize>,
        max_body: usize,
        inflight: &'static AtomicU64,
    ) -> Arc<Fill> {
        use pingora_cache::key::CacheHashKey;
        let oversize = expected_len.is_some_and(|n| n > max_body);
        let (wake, _) = watch::channel(());
        Arc::new(Fill {
            id,
            key: key.combined_bin(),
            primary: key.primary_bin(),
            compact: key.to_compact(),
            meta,
            expected_len,
            max_body,
            window: max_body.max(MIN_LAG_WINDOW),
            open: AtomicBool::new(!oversize),
            revoked: AtomicBool::new(false),
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                starts: VecDeque::new(),
                written: 0,
                held: 0,
                phase: Phase::Writing,
                oversize,
                readers: Vec::new(),
            }),
            wake,
            inflight,
            uses: AtomicU32::new(1),
        })
    }

    /// Whether a new request may read this fill: still writing, not oversize, not revoked.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The fill's phase.
    pub fn phase(&self) -> Phase {
        self.state.lock().phase
    }

    /// Body bytes currently held in memory by this fill.
    pub fn held(&self) -> usize {
        self.state.lock().held
    }

    /// The response's `Content-Length`, if it has one.
    pub fn expected_len(&self) -> Option<usize> {
        self.expected_len
    }

    /// Body bytes appended so far.
    pub fn written(&self) -> usize {
        self.state.lock().written
    }

    /// Every body byte appended so far, when the fill still holds them all (it is not
    /// oversize yet, or nothing has arrived).
    pub fn body_so_far(&self) -> Option<Vec<Bytes>> {
        let st = self.state.lock();
        (st.base() == 0 && st.phase == Phase::Writing).then(|| st.chunks.iter().cloned().collect())
    }

    /// Append a piece of the body.
    pub fn append(&self, data: Bytes) -> Appended {
        let mut out = Appended::default();
        if data.is_empty() {
            return out;
        }
        let len = data.len();
        {
            let mut st = self.state.lock();
            if st.phase != Phase::Writing {
                return out;
            }
            let start = st.written;
            st.chunks.push_back(data);
            st.starts.push_back(start);
            st.written += len;
            st.held += len;
            self.inflight.fetch_add(len as u64, Ordering::Relaxed);
            if !st.oversize && st.written > self.max_body {
                st.oversize = true;
                out.became_oversize = true;
                self.open.store(false, Ordering::Release);
            }
            if st.oversize {
                let freed = st.trim(self.window);
                self.inflight.fetch_sub(freed as u64, Ordering::Relaxed);
                let base = st.base();
                out.orphaned = !st.readers.iter().flatten().any(|&p| p >= base);
            }
        }
        self.wake.send_replace(());
        out
    }

    /// Purged while in flight: readers already attached finish reading it, but it is not
    /// stored and no new reader attaches.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
        self.open.store(false, Ordering::Release);
    }

    /// Whether the fill was purged while in flight.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// The fetch failed: every reader gets an error from now on.
    pub fn fail(&self) {
        self.open.store(false, Ordering::Release);
        {
            let mut st = self.state.lock();
            if st.phase == Phase::Done {
                return;
            }
            st.phase = Phase::Failed;
            let freed = st.clear();
            self.inflight.fetch_sub(freed as u64, Ordering::Relaxed);
        }
        self.wake.send_replace(());
    }

    /// The writer is done: decide what to keep. A body to store replaces the chunks (readers
    /// go on reading it, without copies), and stops counting as in flight.
    pub fn seal(&self) -> Sealed {
        let mut st = self.state.lock();
        if st.phase != Phase::Writing {
            return Sealed::Broken;
        }
        if self.expected_len.is_some_and(|n| n != st.written) {
            drop(st);
            self.fail();
            return Sealed::Broken;
        }
        if st.oversize || self.is_revoked() {
            return Sealed::NotStored;
        }
        let body = if st.chunks.len() == 1 {
            let chunk = st.chunks.pop_front().unwrap_or_default();
            st.starts.clear();
            exact_size(chunk)
        } else {
            let mut all = BytesMut::with_capacity(st.written);
            for c in &st.chunks {
                all.extend_from_slice(c);
            }
            all.freeze()
        };
        let freed = st.clear();
        self.inflight.fetch_sub(freed as u64, Ordering::Relaxed);
        if !body.is_empty() {
            st.chunks.push_back(body.clone());
            st.starts.push_back(0);
        }
        Sealed::Body(body)
    }

    /// Readers may finish: everything written is all there is.
    pub fn complete(&self) {
        self.open.store(false, Ordering::Release);
        {
            let mut st = self.state.lock();
            if st.phase != Phase::Writing {
                return;
            }
            st.phase = Phase::Done;
        }
        self.wake.send_replace(());
    }

    /// A reader from the start of the body.
    pub fn reader(self: &Arc<Self>) -> PartialHit {
        let (slot, pos) = {
            let mut st = self.state.lock();
            // only the writer's own reader can come after bytes were let go, and it comes
            // before the first byte: everyone else attaches to open (never trimmed) fills
            let pos = st.base();
            let slot = match st.readers.iter().position(Option::is_none) {
                Some(i) => {
                    st.readers[i] = Some(pos);
                    i
                }
                None => {
                    st.readers.push(Some(pos));
                    st.readers.len() - 1
                }
            };
            (slot, pos)
        };
        PartialHit {
            fill: self.clone(),
            wake: self.wake.subscribe(),
            pos,
            end: None,
            slot,
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let held = self.state.get_mut().held;
        self.inflight.fetch_sub(held as u64, Ordering::Relaxed);
    }
}

fn read_error(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

/// Reads a fill as it arrives. Reading waits for the writer; a failed fetch, or falling more
/// than the lag window behind an oversize fill, is an error.
pub struct PartialHit {
    fill: Arc<Fill>,
    wake: watch::Receiver<()>,
    pos: usize,
    end: Option<usize>,
    slot: usize,
}

impl PartialHit {
    /// Body bytes this reader has been handed so far (its position).
    pub fn position(&self) -> usize {
        self.pos
    }
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            // mark the current version seen before looking, so a write after the look wakes us
            self.wake.borrow_and_update();
            {
                let mut st = self.fill.state.lock();
                if st.phase == Phase::Failed {
                    return Err(read_error(
                        "the origin fetch this response streams from failed",
                    ));
                }
                if self.pos < st.base() {
                    return Err(read_error(
                        "fell too far behind an oversize response that is not being stored",
                    ));
                }
                let end = self.end.map_or(st.written, |e| e.min(st.written));
                if self.pos < end {
                    let bytes = st.read(self.pos, end);
                    self.pos += bytes.len();
                    if let Some(p) = st.readers.get_mut(self.slot) {
                        *p = Some(self.pos);
                    }
                    return Ok(Some(bytes));
                }
                if self.end.is_some_and(|e| self.pos >= e) || st.phase == Phase::Done {
                    return Ok(None);
                }
            }
            if self.wake.changed().await.is_err() {
                // the sender lives in the fill this reader holds: cannot happen
                return Err(read_error("fill writer vanished"));
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    /// Ranges of a response still arriving are served as their bytes come in.
    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if end.is_some_and(|e| start > e) {
            return Error::e_explain(ErrorType::InternalError, "seek start past end");
        }
        let mut st = self.fill.state.lock();
        if start < st.base() {
            return Error::e_explain(
                ErrorType::InternalError,
                "seek into a part of an oversize response already let go",
            );
        }
        self.pos = start;
        self.end = end;
        if let Some(p) = st.readers.get_mut(self.slot) {
            *p = Some(start);
        }
        Ok(())
    }

    /// Requests served from a fill count as uses of the key: a URL many clients wait for is
    /// popular, which TinyLFU admission should know when the fill is stored.
    fn should_count_access(&self) -> bool {
        true
    }

    /// Unknown until the body is complete; the entry is admitted with its real size then.
    fn get_eviction_weight(&self) -> usize {
        0
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

impl Drop for PartialHit {
    fn drop(&mut self) {
        let mut st = self.fill.state.lock();
        if let Some(p) = st.readers.get_mut(self.slot) {
            *p = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(b: Bytes) -> usize {
        b.try_into_mut().map_or(usize::MAX, |m| m.capacity())
    }

    #[test]
    fn a_stored_body_does_not_keep_a_larger_read_buffer_alive() {
        let mut read = BytesMut::with_capacity(64 * 1024);
        read.extend_from_slice(&[7u8; 1000]);
        let chunk = read.split().freeze();
        drop(read);
        assert!(
            capacity(chunk.clone()) == usize::MAX,
            "shared with the clone"
        );
        let stored = exact_size(chunk);
        assert_eq!(stored.len(), 1000);
        assert!(capacity(stored) <= 1000 + 1000 / 64 + 64);
        // a buffer that already fits is kept as it is
        let fits = Bytes::from(vec![1u8; 5000]);
        let ptr = fits.as_ptr();
        let kept = exact_size(fits);
        assert_eq!(kept.as_ptr(), ptr);
    }
    use pingora_http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    fn counter() -> &'static AtomicU64 {
        Box::leak(Box::new(AtomicU64::new(0)))
    }

    fn meta() -> Arc<StoredMeta> {
        let now = SystemTime::now();
        let header = ResponseHeader::build(200, None).expect("header");
        let meta = pingora_cache::CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header);
        Arc::new(StoredMeta::from_meta(&meta).expect("meta"))
    }

    fn fill(expected: Option<usize>, max: usize, inflight: &'static AtomicU64) -> Arc<Fill> {
        Fill::new(1, &CacheKey::new("k", ""), meta(), expected, max, inflight)
    }

    async fn read_all(r: &mut PartialHit) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = r.read_body().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_and_end_when_complete() {
        let inflight = counter();
        let f = fill(None, 1 << 20, inflight);
        let mut early = f.reader();
        f.append(Bytes::from_static(b"hello "));
        assert_eq!(
            early.read_body().await.expect("read").as_deref(),
            Some(&b"hello "[..])
        );
        // nothing more yet: a read waits
        let pending = tokio::time::timeout(Duration::from_millis(50), early.read_body()).await;
        assert!(pending.is_err(), "waits for the writer");
        f.append(Bytes::from_static(b"world"));
        assert_eq!(inflight.load(Ordering::Relaxed), 11);
        let mut late = f.reader();
        match f.seal() {
            Sealed::Body(b) => assert_eq!(&b[..], b"hello world"),
            _ => panic!("storable"),
        }
        assert_eq!(inflight.load(Ordering::Relaxed), 0, "now the entry's bytes");
        // while the storage moves the body to its entry, the fill still takes readers
        assert!(f.is_open());
        let mut sealed_late = f.reader();
        f.complete();
        assert!(!f.is_open());
        assert_eq!(
            read_all(&mut sealed_late).await.expect("sealed late"),
            b"hello world"
        );
        assert_eq!(read_all(&mut early).await.expect("early"), b"world");
        assert_eq!(read_all(&mut late).await.expect("late"), b"hello world");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_an_error_for_every_reader_never_an_end() {
        let inflight = counter();
        let f = fill(Some(1000), 1 << 20, inflight);
        let mut a = f.reader();
        let mut b = f.reader();
        f.append(Bytes::from(vec![b'x'; 100]));
        assert_eq!(a.read_body().await.expect("a").map(|b| b.len()), Some(100));
        let waiting = tokio::spawn(async move { read_all(&mut a).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        f.fail();
        assert!(
            waiting.await.expect("join").is_err(),
            "a waiting reader errs"
        );
        assert!(read_all(&mut b).await.is_err(), "a reader behind errs too");
        assert_eq!(inflight.load(Ordering::Relaxed), 0);
        assert!(!f.is_open());
    }

    #[tokio::test]
    async fn a_body_short_of_its_content_length_is_never_sealed_as_complete() {
        let f = fill(Some(10), 1 << 20, counter());
        let mut r = f.reader();
        f.append(Bytes::from_static(b"12345"));
        assert!(matches!(f.seal(), Sealed::Broken));
        assert_eq!(f.phase(), Phase::Failed);
        assert!(read_all(&mut r).await.is_err());
    }

    #[tokio::test]
    async fn oversize_fills_stream_on_within_a_window_and_are_not_stored() {
        let inflight = counter();
        let f = fill(None, 1000, inflight);
        let mut keeping_up = f.reader();
        let mut stalled = f.reader();
        assert_eq!(f.append(Bytes::from(vec![1u8; 600])), Appended::default());
        assert!(f.is_open());
        let became = f.append(Bytes::from(vec![2u8; 600]));
        assert!(became.became_oversize && !became.orphaned);
        assert!(!f.is_open(), "no new readers");
        let mut total = keeping_up
            .read_body()
            .await
            .expect("r")
            .map_or(0, |b| b.len());
        assert_eq!(total, 1200);
        let chunk = 64 * 1024;
        for i in 0..(2 * MIN_LAG_WINDOW / chunk) {
            let appended = f.append(Bytes::from(vec![(i % 251) as u8; chunk]));
            assert!(!appended.orphaned, "one reader keeps up");
            let got = keeping_up.read_body().await.expect("keeps up");
            assert_eq!(got.map(|b| b.len()), Some(chunk));
            total += chunk;
            let held = f.held();
            assert!(
                held <= MIN_LAG_WINDOW + chunk,
                "held {held} over the window"
            );
            assert_eq!(inflight.load(Ordering::Relaxed), held as u64);
        }
        assert!(matches!(f.seal(), Sealed::NotStored));
        f.complete();
        assert_eq!(read_all(&mut keeping_up).await.expect("done"), b"");
        assert_eq!(total, 1200 + 2 * MIN_LAG_WINDOW);
        assert!(
            read_all(&mut stalled).await.is_err(),
            "a reader left behind the window errs"
        );
    }

    #[tokio::test]
    async fn an_oversize_fill_with_readers_caught_up_holds_nothing() {
        let inflight = counter();
        let f = fill(None, 10, inflight);
        let mut r = f.reader();
        f.append(Bytes::from(vec![0u8; 100]));
        assert_eq!(r.read_body().await.expect("r").map(|b| b.len()), Some(100));
        assert!(!f.append(Bytes::from(vec![0u8; 100])).orphaned);
        // the first chunk was read by everyone: let go
        assert_eq!(f.held(), 100);
        drop(r);
        assert!(
            f.append(Bytes::from(vec![0u8; 100])).orphaned,
            "nobody left to read it"
        );
        assert_eq!(f.held(), 0, "no readers: nothing kept");
        assert_eq!(inflight.load(Ordering::Relaxed), 0);
        drop(f);
    }

    #[tokio::test]
    async fn reads_merge_a_backlog_and_seeks_wait_for_their_range() {
        let f = fill(None, 1 << 20, counter());
        let mut r = f.reader();
        for part in [&b"ab"[..], b"cd", b"ef"] {
            f.append(Bytes::copy_from_slice(part));
        }
        assert_eq!(
            r.read_body().await.expect("r").as_deref(),
            Some(&b"abcdef"[..])
        );
        let mut ranged = f.reader();
        ranged.seek(7, Some(9)).expect("seek");
        let f2 = f.clone();
        let waiter = tokio::spawn(async move { read_all(&mut ranged).await });
        f2.append(Bytes::from_static(b"ghij"));
        f2.complete();
        assert_eq!(waiter.await.expect("join").expect("range"), b"hi");
    }
}
