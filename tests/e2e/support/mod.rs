//! The e2e test kit: verge as a process with a config built in Rust, origins that count and
//! record what they receive, one way to send a request and one to read raw HTTP/1, a parsed
//! view of `/metrics`, bounded waits, and ports from one allocator. See `tests/README.md`.

pub mod config;
pub mod control_plane;
pub mod etcd;
pub mod fetch;
pub mod h2_wire;
pub mod metrics;
pub mod origin;
pub mod ports;
pub mod process;
pub mod raw_origin;
pub mod wait;
pub mod wire;

pub use config::{Cache, Config, HealthCheck, Limits, Listener, Pool, Route, RouteCache, Timeouts};
pub use fetch::{client, fetch, fetch_with, get, Got};
pub use metrics::Metrics;
pub use origin::Origin;
pub use process::{Launch, Verge};
pub use raw_origin::{Fault, RawOrigin, Step};
pub use wait::{assert_eventually, eventually};

use std::net::SocketAddr;

/// Lock a test origin's state, even after a panicking thread poisoned it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// verge with pool `p` (backend `origin`) and one route for every host to it, caching by
/// `cache` (the route obeys the origin with `RouteCache::new()`).
pub async fn cached_verge(origin: SocketAddr, cache: RouteCache) -> Verge {
    Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[origin]))
            .route(Route::to("p").cache(cache)),
    )
    .await
}
