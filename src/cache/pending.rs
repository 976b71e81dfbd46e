//! Fetches in progress, by cache key, that the front door's hit lane may wait on: the request
//! that became the cache lock's writer registers its key; waiters wake when the response's head
//! arrives (it starts streaming into the cache), when it is stored, and when that request ends.

use crate::cache::KeyMap;
use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use std::sync::Arc;
use tokio::sync::watch;

/// The fetches in progress.
#[derive(Default)]
pub struct PendingFetches {
    map: Mutex<KeyMap<HashBinary, Arc<watch::Sender<()>>>>,
}

/// One registered fetch; dropping it (the fetching request ended) wakes whoever still waits.
pub struct PendingFetch {
    fetches: &'static PendingFetches,
    key: HashBinary,
    tx: Arc<watch::Sender<()>>,
}

impl std::fmt::Debug for PendingFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFetch").finish_non_exhaustive()
    }
}

impl PendingFetches {
    /// Register a fetch of `key` (replacing an older registration of the same key, whose
    /// waiters then wake when that older fetch ends).
    pub fn begin(&'static self, key: HashBinary) -> PendingFetch {
        let (tx, _) = watch::channel(());
        let tx = Arc::new(tx);
        self.map.lock().insert(key, tx.clone());
        PendingFetch {
            fetches: self,
            key,
            tx,
        }
    }

    /// Something to wait on if `key` is being fetched: it resolves when the fetch progresses
    /// or ends.
    pub fn wait_for(&self, key: &HashBinary) -> Option<watch::Receiver<()>> {
        self.map.lock().get(key).map(|tx| tx.subscribe())
    }

    /// The fetch of `key` got somewhere (its head arrived, or it was stored): wake its waiters
    /// to look again, before the fetching request ends.
    pub fn progressed(&self, key: &HashBinary) {
        if let Some(tx) = self.map.lock().get(key) {
            tx.send_replace(());
        }
    }

    /// Fetches registered now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// No fetch is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for PendingFetch {
    fn drop(&mut self) {
        let mut map = self.fetches.map.lock();
        if map
            .get(&self.key)
            .is_some_and(|tx| Arc::ptr_eq(tx, &self.tx))
        {
            map.remove(&self.key);
        }
        // the last sender goes with `self.tx`: every receiver's `changed()` returns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fetches() -> &'static PendingFetches {
        Box::leak(Box::default())
    }

    #[tokio::test]
    async fn waiters_wake_when_the_fetch_progresses() {
        let f = fetches();
        let fetch = f.begin([1; 16]);
        let mut rx = f.wait_for(&[1; 16]).expect("registered");
        assert!(f.wait_for(&[2; 16]).is_none());
        f.progressed(&[1; 16]);
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("woken")
            .expect("sent, not dropped");
        drop(fetch);
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn waiters_wake_when_the_fetch_ends_without_storing() {
        let f = fetches();
        let fetch = f.begin([1; 16]);
        let mut rx = f.wait_for(&[1; 16]).expect("registered");
        drop(fetch);
        let woken = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        assert!(matches!(woken, Ok(Err(_))), "the sender is gone");
        assert!(f.wait_for(&[1; 16]).is_none());
    }

    #[tokio::test]
    async fn an_older_fetch_ending_leaves_a_newer_one_registered() {
        let f = fetches();
        let old = f.begin([1; 16]);
        let new = f.begin([1; 16]);
        drop(old);
        assert_eq!(f.len(), 1);
        drop(new);
        assert!(f.is_empty());
    }
}
