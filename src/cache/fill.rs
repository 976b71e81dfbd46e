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
//!
//! Spilling: a fill that streams to the disk tier as well (`Fill::start_spill`, a [`Spill`]:
//! the `.part` file of `crate::cache::disk::DiskFill`) stays open to new readers after it turns
//! oversize, until it is revoked, fails, gives the spill up or completes. A reader that
//! attaches late starts at the first byte: what memory let go it reads back from the spill, one
//! whole chunk at a time, verified against the checksum taken when it was written; the rest it
//! reads from memory like everyone else, so it ends like every other reader (an error when the
//! fetch fails). The rule that makes this safe: memory never lets go of a byte the spill does
//! not hold whole yet (the miss handler writes each piece to the spill before appending it, and
//! tells the fill how much the spill holds). So a spilling fill holds at most the window plus
//! one spill chunk and the piece being added; a reader behind memory does not keep bytes in
//! memory and is never left behind (it reads on from the spill, so it keeps the fetch going).
//! When the spill is given up (a disk write failed), nobody attaches any more, the window rule
//! is back, and a reader behind memory gets an error, never a body with a hole.

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

/// Where a fill's body is also written as it arrives (the disk tier's `.part` file), in
/// chunks of [`Spill::chunk_len`] bytes that can be read back, verified, by a reader that
/// attached after memory let them go (see the module doc).
#[async_trait]
pub trait Spill: Send + Sync {
    /// The length of every chunk (the last one of the body aside).
    fn chunk_len(&self) -> usize;
    /// Read whole chunk `i` back, verified against what was written: an error when it cannot
    /// be read or is not what was written.
    async fn read_chunk(&self, i: usize) -> Result<Bytes>;
}

/// A spill and how much of the body it holds so far.
struct Spilled {
    source: Arc<dyn Spill>,
    /// Body bytes, from the first, written whole to the spill (a multiple of its chunk length).
    durable: usize,
}

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
    /// The body is also being written to a spill: nothing it does not hold yet is let go.
    spill: Option<Spilled>,
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
    /// byte, but never a byte a spill does not hold yet (a late reader reads it from memory).
    /// Returns how many bytes were let go.
    fn trim(&mut self, window: usize) -> usize {
        let slowest = self.readers.iter().flatten().min().copied();
        let floor = self.written.saturating_sub(window);
        let mut keep_from = slowest.unwrap_or(self.written).max(floor);
        if let Some(spill) = &self.spill {
            keep_from = keep_from.min(spill.durable);
        }
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
    /// Readers may attach through the spill: writing to one, not revoked, not failed. Stays
    /// set while the spill becomes a stored object (as `open`).
    spilling: AtomicBool,
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
            spilling: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                starts: VecDeque::new(),
                written: 0,
                held: 0,
                phase: Phase::Writing,
                oversize,
                readers: Vec::new(),
                spill: None,
            }),
            wake,
            inflight,
            uses: AtomicU32::new(1),
        })
    }

    /// Whether a new request may read this fill: still writing, not revoked, and either not
    /// oversize or streaming to a spill that holds what memory let go.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire) || self.spilling.load(Ordering::SeqCst)
    }

    /// The body, from its first byte, is also written to `spill` from now on: readers may
    /// attach after memory let its start go, and memory keeps what `spill` does not hold yet.
    /// Nothing changes for a fill purged or failed meanwhile.
    pub fn start_spill(&self, spill: Arc<dyn Spill>) {
        let mut st = self.state.lock();
        if st.phase != Phase::Writing || self.is_revoked() {
            return;
        }
        st.spill = Some(Spilled {
            source: spill,
            durable: 0,
        });
        self.spilling.store(true, Ordering::SeqCst);
        // a purge that marked the fill meanwhile did not see the flag
        if self.is_revoked() {
            self.spilling.store(false, Ordering::SeqCst);
        }
    }

    /// The spill was given up (a write failed): no reader attaches through it any more, and
    /// readers behind what memory holds get an error, not a body with a hole.
    pub fn abandon_spill(&self) {
        self.spilling.store(false, Ordering::SeqCst);
        self.state.lock().spill = None;
        self.wake.send_replace(());
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
        self.append_spilled(data, None)
    }

    /// Append a piece of the body, the spill now holding its first `durable` bytes whole
    /// (`None`: as before).
    pub fn append_spilled(&self, data: Bytes, durable: Option<usize>) -> Appended {
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
            if let (Some(spill), Some(durable)) = (st.spill.as_mut(), durable) {
                spill.durable = spill.durable.max(durable);
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
                // a reader behind memory reads on from the spill
                let base = st.base();
                let spilling = st.spill.is_some();
                out.orphaned = !st.readers.iter().flatten().any(|&p| p >= base || spilling);
            }
        }
        self.wake.send_replace(());
        out
    }

    /// Purged while in flight: readers already attached finish reading it, but it is not
    /// stored and no new reader attaches.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.open.store(false, Ordering::Release);
        self.spilling.store(false, Ordering::SeqCst);
    }

    /// Whether the fill was purged while in flight.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// The fetch failed: every reader gets an error from now on.
    pub fn fail(&self) {
        self.open.store(false, Ordering::Release);
        self.spilling.store(false, Ordering::SeqCst);
        {
            let mut st = self.state.lock();
            if st.phase == Phase::Done {
                return;
            }
            st.phase = Phase::Failed;
            st.spill = None;
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
        self.spilling.store(false, Ordering::SeqCst);
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
            // from the first byte, always: what memory let go is read back from the spill; a
            // reader that attached as the fill turned oversize (or gave its spill up) and
            // lost the start gets an error on its first read, never a body without its start
            let pos = 0;
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

/// What [`PartialHit::look`] found.
enum Look {
    /// The read's answer.
    Ready(Result<Option<Bytes>>),
    /// Memory let the next bytes go: read them back from this spill.
    Spilled(Arc<dyn Spill>),
    /// Nothing new yet.
    Wait,
}

/// Reads a fill as it arrives. Reading waits for the writer; a failed fetch, or falling more
/// than the lag window behind an oversize fill that does not spill, is an error. What memory
/// let go of a spilling fill is read back from the spill, one verified chunk at a time.
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

    /// What the next read gets, as the fill stands now.
    fn look(&mut self) -> Look {
        let mut st = self.fill.state.lock();
        if st.phase == Phase::Failed {
            return Look::Ready(Err(read_error(
                "the origin fetch this response streams from failed",
            )));
        }
        if self.end.is_some_and(|e| self.pos >= e) {
            return Look::Ready(Ok(None));
        }
        if self.pos < st.base() {
            // let go of memory: only a spill that holds it whole has it now
            return match st.spill.as_ref().filter(|s| self.pos < s.durable) {
                Some(spill) => Look::Spilled(spill.source.clone()),
                None => Look::Ready(Err(read_error(
                    "fell too far behind an oversize response that is not being stored",
                ))),
            };
        }
        let end = self.end.map_or(st.written, |e| e.min(st.written));
        if self.pos < end {
            let bytes = st.read(self.pos, end);
            self.pos += bytes.len();
            if let Some(p) = st.readers.get_mut(self.slot) {
                *p = Some(self.pos);
            }
            return Look::Ready(Ok(Some(bytes)));
        }
        if st.phase == Phase::Done {
            return Look::Ready(Ok(None));
        }
        Look::Wait
    }

    /// The bytes from `self.pos` to the end of the spill's chunk that holds it (or to this
    /// reader's end), which memory no longer holds.
    async fn read_spilled(&mut self, spill: Arc<dyn Spill>) -> Result<Bytes> {
        let len = spill.chunk_len().max(1);
        let i = self.pos / len;
        let chunk = spill.read_chunk(i).await?;
        let start = i * len;
        let to = self
            .end
            .map_or(chunk.len(), |e| e.saturating_sub(start).min(chunk.len()));
        let from = self.pos - start;
        if from >= to {
            return Err(read_error("a chunk read back from the spill is short"));
        }
        self.pos = start + to;
        if let Some(p) = self.fill.state.lock().readers.get_mut(self.slot) {
            *p = Some(self.pos);
        }
        Ok(chunk.slice(from..to))
    }
}

#[async_trait]
impl HandleHit for PartialHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            // mark the current version seen before looking, so a write after the look wakes us
            self.wake.borrow_and_update();
            match self.look() {
                Look::Ready(out) => return out,
                Look::Spilled(spill) => return self.read_spilled(spill).await.map(Some),
                Look::Wait => {}
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
        if start < st.base() && st.spill.is_none() {
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

    /// A spill in memory: whole chunks of `len` bytes, each read back as written (or, when
    /// `corrupt`, as an error, which is what a checksum mismatch is).
    struct ChunkSpill {
        len: usize,
        body: Mutex<Vec<u8>>,
        corrupt: AtomicBool,
        reads: AtomicU32,
    }

    impl ChunkSpill {
        fn new(len: usize) -> Arc<ChunkSpill> {
            Arc::new(ChunkSpill {
                len,
                body: Mutex::new(Vec::new()),
                corrupt: AtomicBool::new(false),
                reads: AtomicU32::new(0),
            })
        }

        /// Take `data`: the bytes it now holds in whole chunks, as the disk tier's fill.
        fn push(&self, data: &[u8]) -> usize {
            let mut body = self.body.lock();
            body.extend_from_slice(data);
            body.len() / self.len * self.len
        }
    }

    #[async_trait]
    impl Spill for ChunkSpill {
        fn chunk_len(&self) -> usize {
            self.len
        }

        async fn read_chunk(&self, i: usize) -> Result<Bytes> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.corrupt.load(Ordering::Relaxed) {
                return Err(read_error("checksum mismatch"));
            }
            let body = self.body.lock();
            let chunk = body.get(i * self.len..(i + 1) * self.len);
            chunk
                .map(Bytes::copy_from_slice)
                .ok_or_else(|| read_error("not written"))
        }
    }

    const SPILL_CHUNK: usize = 256 << 10;
    const PIECE: usize = 100_000;

    fn piece(i: usize) -> Bytes {
        Bytes::from(
            (0..PIECE)
                .map(|j| (i * 7 + j / 1000) as u8)
                .collect::<Vec<_>>(),
        )
    }

    /// Append `n` pieces, numbered from `from`, pushed to `spill` first (as the memory tier's
    /// miss handler does), with `own` keeping up; returns the bytes appended.
    async fn spill_pieces(
        f: &Fill,
        spill: &ChunkSpill,
        own: &mut PartialHit,
        from: usize,
        n: usize,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for i in from..from + n {
            let p = piece(i);
            let durable = spill.push(&p);
            body.extend_from_slice(&p);
            assert!(!f.append_spilled(p, Some(durable)).orphaned);
            while own.position() < f.written() {
                own.read_body().await.expect("own").expect("bytes");
            }
            let st = f.state.lock();
            assert!(st.base() <= durable, "let go of {} unspilled", st.base());
            assert!(
                st.held <= MIN_LAG_WINDOW + SPILL_CHUNK + PIECE,
                "held {} over the window",
                st.held
            );
        }
        body
    }

    #[tokio::test]
    async fn a_spilling_fill_never_lets_go_of_bytes_the_spill_does_not_hold_yet() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        f.start_spill(spill.clone());
        assert!(f.is_open(), "readers may attach through the spill");
        // the spill lags (its chunk not written yet): memory keeps everything after it
        for i in 0..60 {
            assert!(!f.append_spilled(piece(i), Some(0)).orphaned);
            while own.position() < f.written() {
                own.read_body().await.expect("own").expect("bytes");
            }
        }
        assert_eq!(f.held(), f.written(), "nothing is on the spill: all kept");
        // it catches up: memory lets go down to the window, never past what it holds
        let all: Vec<u8> = f.body_so_far().expect("all held").concat();
        let spilled = spill.push(&all);
        assert!(!f.append_spilled(piece(60), Some(spilled)).orphaned);
        let base = f.state.lock().base();
        assert!(
            base > 0 && base <= spilled,
            "base {base}, spilled {spilled}"
        );
        // without a spill, the same fill lets go of everything its readers have read
        let plain = fill(None, 1000, counter());
        let mut r = plain.reader();
        for i in 0..60 {
            plain.append(piece(i));
            while r.position() < plain.written() {
                r.read_body().await.expect("r").expect("bytes");
            }
        }
        assert!(plain.held() <= PIECE);
    }

    #[tokio::test]
    async fn a_late_reader_reads_what_memory_let_go_from_the_spill_then_follows_the_fill() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        f.start_spill(spill.clone());
        let mut body = spill_pieces(&f, &spill, &mut own, 0, 80).await;
        assert!(f.state.lock().base() > SPILL_CHUNK, "the start left memory");
        let mut late = f.reader();
        let mut ranged = f.reader();
        ranged
            .seek(10, Some(SPILL_CHUNK + 5))
            .expect("a range the spill holds");
        assert_eq!(
            read_all(&mut ranged).await.expect("range"),
            &body[10..SPILL_CHUNK + 5]
        );
        let mut got = Vec::new();
        while got.len() < body.len() {
            got.extend_from_slice(&late.read_body().await.expect("late").expect("bytes"));
        }
        assert!(
            spill.reads.load(Ordering::Relaxed) > 0,
            "read from the spill"
        );
        // caught up: it follows the fill as it arrives
        body.extend(spill_pieces(&f, &spill, &mut own, 80, 10).await);
        assert!(matches!(f.seal(), Sealed::NotStored));
        f.complete();
        got.extend(read_all(&mut late).await.expect("late"));
        assert!(got == body, "byte-identical");
        assert!(read_all(&mut own).await.expect("own").is_empty());
    }

    #[tokio::test]
    async fn a_given_up_or_corrupt_spill_is_an_error_for_a_reader_behind_memory() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        f.start_spill(spill.clone());
        spill_pieces(&f, &spill, &mut own, 0, 80).await;
        let mut late = f.reader();
        spill.corrupt.store(true, Ordering::Relaxed);
        assert!(late.read_body().await.is_err(), "a bad chunk is an error");
        spill.corrupt.store(false, Ordering::Relaxed);
        let mut behind = f.reader();
        assert!(behind.read_body().await.expect("read").is_some());
        f.abandon_spill();
        assert!(!f.is_open(), "nobody attaches any more");
        // the writer goes on without the spill (nobody is orphaned: `own` keeps up)
        for i in 80..90 {
            assert!(!f.append(piece(i)).orphaned);
            while own.position() < f.written() {
                own.read_body().await.expect("own").expect("bytes");
            }
        }
        f.complete();
        assert!(
            read_all(&mut behind).await.is_err(),
            "an error, never a body with a hole"
        );
        assert!(read_all(&mut own).await.expect("own").is_empty());
    }

    #[tokio::test]
    async fn a_purged_or_failed_fill_takes_no_new_readers_through_its_spill() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        f.start_spill(spill.clone());
        spill_pieces(&f, &spill, &mut own, 0, 50).await;
        let mut attached = f.reader();
        f.revoke();
        assert!(!f.is_open());
        assert!(attached.read_body().await.expect("reads on").is_some());
        let later = fill(None, 1000, counter());
        later.revoke();
        later.start_spill(ChunkSpill::new(SPILL_CHUNK));
        assert!(!later.is_open(), "a spill after the purge changes nothing");
        let failed = fill(None, 1000, counter());
        let mut own = failed.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        failed.start_spill(spill.clone());
        spill_pieces(&failed, &spill, &mut own, 0, 50).await;
        let mut late = failed.reader();
        failed.fail();
        assert!(!failed.is_open());
        assert!(read_all(&mut late).await.is_err());
    }

    #[tokio::test]
    async fn a_reader_behind_memory_keeps_a_spilling_fetch_going() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        let spill = ChunkSpill::new(SPILL_CHUNK);
        f.start_spill(spill.clone());
        spill_pieces(&f, &spill, &mut own, 0, 80).await;
        let late = f.reader();
        drop(own);
        let p = piece(80);
        let durable = spill.push(&p);
        assert!(
            !f.append_spilled(p, Some(durable)).orphaned,
            "the late reader reads on from the spill"
        );
        drop(late);
        let p = piece(81);
        let durable = spill.push(&p);
        assert!(f.append_spilled(p, Some(durable)).orphaned, "nobody left");
    }

    /// A reader that gets to a fill after its start was let go (it turned oversize, or gave
    /// its spill up, between the lookup and the attach) gets an error, never a body that
    /// starts in the middle.
    #[tokio::test]
    async fn a_reader_that_attaches_after_the_start_left_memory_errs() {
        let f = fill(None, 1000, counter());
        let mut own = f.reader();
        for i in 0..60 {
            f.append(piece(i));
            while own.position() < f.written() {
                own.read_body().await.expect("own").expect("bytes");
            }
        }
        assert!(f.state.lock().base() > 0);
        let mut late = f.reader();
        assert!(late.read_body().await.is_err());
    }
}
