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

/// Writes a response body into its fill, where readers stream it. Writing does not fail while
/// anyone can still read the fill (see `super::fill`); the entry is stored only by `finish`, and only when the body is complete,
/// matches its `Content-Length`, fits `max_object_size` and was not purged meanwhile. Dropped
/// without `finish` (the fetch failed): every reader of the fill gets an error.
pub(super) struct MemoryMiss {
    pub(super) fill: Arc<Fill>,
    pub(super) tag: U64WriteId,
    pub(super) storage: &'static MemoryStorage,
    pub(super) finished: bool,
}

#[async_trait]
impl HandleMiss for MemoryMiss {
    /// Fails only when an oversize body has no reader left (see `Appended::orphaned`): pingora
    /// then ends a fetch nobody would see.
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        let appended = self.fill.append(data);
        if appended.became_oversize {
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
        let outcome = match fill.seal() {
            Sealed::Broken => {
                self.storage.forget(&fill);
                return Error::e_explain(
                    ErrorType::InternalError,
                    "response body does not match its Content-Length",
                );
            }
            Sealed::NotStored => {
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
