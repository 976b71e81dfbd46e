//! Which replica does retention and drives staged purges on etcd: one elected leader (etcd's
//! election API, under a lease this replica keeps alive), and the fencing token its retention
//! writes and its staged-purge writes carry (the election key's create revision), so a replica
//! that lost the leadership can neither compact nor write a wave.

use crate::metrics::METRICS;
use etcd_client::{Client, LeaderKey};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// The leadership this replica holds, if any.
#[derive(Debug, Default)]
pub(super) struct Leadership {
    key: Mutex<Option<LeaderKey>>,
}

impl Leadership {
    /// The election key this replica holds and its create revision, while it is the leader.
    pub(super) fn fence(&self) -> Option<(Vec<u8>, i64)> {
        self.key
            .lock()
            .as_ref()
            .map(|k| (k.key().to_vec(), k.rev()))
    }

    fn set(&self, key: Option<LeaderKey>) {
        METRICS.control_leader.set(i64::from(key.is_some()));
        *self.key.lock() = key;
    }
}

const RETRY: Duration = Duration::from_secs(1);

/// Campaign for `election` on `handle` for as long as the process lives: a lease of `ttl`
/// kept alive every third of it; elected, hold it until the lease is lost, then campaign again.
pub(super) fn start(
    handle: &tokio::runtime::Handle,
    client: Client,
    election: String,
    leadership: Arc<Leadership>,
    ttl: Duration,
) {
    handle.spawn(async move {
        let now = crate::unix_time::unix_ms(std::time::SystemTime::now());
        let id = format!("{}-{now}", std::process::id());
        loop {
            if let Err(e) = campaign(client.clone(), &election, &id, &leadership, ttl).await {
                log::warn!("etcd store: leadership (retention, staged purges): {e}");
            }
            leadership.set(None);
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// One lease: campaign under it, and hold the leadership while it lives.
async fn campaign(
    mut client: Client,
    election: &str,
    id: &str,
    leadership: &Leadership,
    ttl: Duration,
) -> Result<(), etcd_client::Error> {
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(60);
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    let every = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(2)) / 3;
    let mut alive = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match answers.message().await {
                Ok(Some(a)) if a.ttl() > 0 => {}
                _ => return, // expired, or the stream broke
            }
            tokio::time::sleep(every).await;
        }
    });
    let elected = tokio::select! {
        r = client.campaign(election, id, lease) => r,
        _ = &mut alive => return Ok(()),
    };
    let key = match elected {
        Ok(r) => r.leader().cloned(),
        Err(e) => {
            alive.abort();
            return Err(e);
        }
    };
    if let Some(key) = key {
        log::info!(
            "etcd store: this replica does retention and drives staged purges (leader at revision {})",
            key.rev()
        );
        leadership.set(Some(key));
    }
    let _ = alive.await;
    log::warn!("etcd store: the leadership's lease was lost");
    Ok(())
}
