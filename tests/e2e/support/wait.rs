//! Waiting for something to become true, with a bound: a boolean poll, and an assertion that
//! fails with the last value it saw.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const EVERY: Duration = Duration::from_millis(50);

/// Poll `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Poll `probe` until its value satisfies `holds`, and return that value; after `within`,
/// fail the test with `what` and the last value seen.
pub async fn assert_eventually<T, F, Fut>(
    within: Duration,
    what: &str,
    mut probe: F,
    holds: impl Fn(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let value = probe().await;
        if holds(&value) {
            return value;
        }
        assert!(
            Instant::now() <= deadline,
            "{what}: not within {within:?}; last seen {value:?}"
        );
        tokio::time::sleep(EVERY).await;
    }
}
