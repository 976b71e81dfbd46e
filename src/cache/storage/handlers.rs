//! The handlers pingora-cache drives for the memory storage: a hit that reads a stored body
//! without copying (ranges through `seek`), and a miss that writes a response into its fill.

use super::*;

/// The length of the whole stored body a hit reads, when it reads a stored entry (`None`: a
/// fill still streaming in, whose length is not known yet).
pub fn stored_body_len(hit: &HitHandler) -> Option<usize> {
    hit.as_any()
        .downcast_ref::<MemoryHit>()
        .map(|h| h.body.len())
}

/// Reads a stored body without copying; supports ranges through `seek`.
pub(super) struct MemoryHit {
    pub(super) body: Bytes,
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) done: bool,
}

#[async_trait]
impl HandleHit for MemoryHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.pos >= self.end {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.pos..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let end = end.map_or(len, |e| e.min(len));
        if start > end {
            return Error::e_explain(ErrorType::InternalError, "seek start past end");
        }
        self.pos = start;
        self.end = end;
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len() + ENTRY_OVERHEAD
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Whether a body too large for the memory tier goes to the disk tier (see
/// `crate::cache::disk::DiskFill`).
pub(super) enum ToDisk {
    /// The body still fits memory.
    Undecided,
    /// Streaming to disk as it arrives.
    Streaming(Box<crate::cache::disk::DiskFill>),
    /// Not stored anywhere.
    No,
}

/// Writes a response body into its fill, where readers stream it. Writing does not fail while
/// anyone can still read the fill (see `super::fill`); the entry is stored only by `finish`, and only when the body is complete,
/// matches its `Content-Length`, fits `max_object_size` and was not purged meanwhile. Dropped
/// without `finish` (the fetch failed): every reader of the fill gets an error. A body larger
/// than `max_object_size` streams to the disk tier as it arrives, when there is one that takes
/// it ([`ToDisk`]).
pub(super) struct MemoryMiss {
    pub(super) fill: Arc<Fill>,
    pub(super) tag: U64WriteId,
    pub(super) storage: &'static MemoryStorage,
    pub(super) finished: bool,
    /// Body pieces the fill held when streaming to disk started, written with the next piece.
    pub(super) seed: Vec<Bytes>,
    pub(super) to_disk: ToDisk,
    /// The URL was remembered as too large to store.
    pub(super) marked: bool,
}

impl MemoryMiss {
    /// Before `len` more bytes are appended: once the body outgrows the memory tier, start
    /// streaming it (from its first byte, which the fill still holds) to the disk tier, where
    /// requests that come later read what memory let go of (`Fill::start_spill`).
    pub(super) fn decide_disk(&mut self, len: usize) {
        if !matches!(self.to_disk, ToDisk::Undecided) {
            return;
        }
        let max = self.storage.max_object_size;
        let outgrows =
            self.fill.expected_len().is_some_and(|n| n > max) || self.fill.written() + len > max;
        if !outgrows {
            return;
        }
        self.to_disk = ToDisk::No;
        let Some(disk) = self.storage.disk else {
            return;
        };
        if self.fill.is_revoked() {
            return;
        }
        let Some(so_far) = self.fill.body_so_far() else {
            return;
        };
        let expected = self.fill.expected_len().map(|n| n as u64);
        if let Some(d) =
            disk.start_fill(self.fill.key, self.fill.primary, &self.fill.meta, expected)
        {
            self.fill.start_spill(d.chunks());
            self.to_disk = ToDisk::Streaming(Box::new(d));
            self.seed = so_far;
        }
    }
}

#[async_trait]
impl HandleMiss for MemoryMiss {
    /// Fails only when an oversize body has no reader left (see `Appended::orphaned`): pingora
    /// then ends a fetch nobody would see.
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.decide_disk(data.len());
        let mut durable = None;
        if let ToDisk::Streaming(d) = &mut self.to_disk {
            let mut ok = true;
            for piece in std::mem::take(&mut self.seed) {
                ok = ok && d.push(piece).await;
            }
            if ok && d.push(data.clone()).await {
                durable = usize::try_from(d.readable()).ok();
            } else {
                // readers that came through the disk and are behind memory get an error
                self.to_disk = ToDisk::No;
                self.fill.abandon_spill();
            }
        }
        // pushed to disk first: memory lets go only of what the file holds
        let appended = self.fill.append_spilled(data, durable);
        // too large for every tier: remembered, so the next requests bypass the cache (a body
        // the disk tier did not take for now, such as at its first fetch, is not)
        let cap = self.storage.disk.map_or(0, |d| d.max_object_size());
        let cap = cap.max(self.storage.max_object_size as u64);
        let too_large = if self.storage.disk.is_some() {
            !self.marked && self.fill.written() as u64 > cap
        } else {
            appended.became_oversize
        };
        if too_large {
            self.marked = true;
            self.storage.mark_too_large(self.fill.primary);
        }
        if appended.orphaned {
            return Error::e_explain(
                ErrorType::InternalError,
                "nobody reads this response any more, and it is too large to store",
            );
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        let fill = self.fill.clone();
        let to_disk = std::mem::replace(&mut self.to_disk, ToDisk::No);
        let outcome = match fill.seal() {
            Sealed::Broken => {
                self.storage.forget(&fill);
                return Error::e_explain(
                    ErrorType::InternalError,
                    "response body does not match its Content-Length",
                );
            }
            Sealed::NotStored => {
                if let ToDisk::Streaming(d) = to_disk {
                    // whole and not purged: on disk before the readers see the end
                    // (a purge while it was finishing removes it again)
                    let kept = !fill.is_revoked() && d.finish().await;
                    if let Some(disk) = self.storage.disk.filter(|_| kept && fill.is_revoked()) {
                        disk.remove(&fill.key);
                    }
                }
                self.storage.forget(&fill);
                MissFinishType::Appended(0, Some(0))
            }
            Sealed::Body(body) => self.storage.commit(&fill, body),
        };
        fill.complete();
        Ok(outcome)
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl Drop for MemoryMiss {
    fn drop(&mut self) {
        if !self.finished {
            self.fill.fail();
            self.storage.forget(&self.fill);
        }
    }
}
