//! Ports for the processes under test, from one process-wide allocator.
//!
//! Origins the tests run themselves bind `127.0.0.1:0` and keep their listener, so they never
//! need this. verge, though, must bind the addresses written in its YAML, so the test has to
//! name a port before verge binds it. Those ports come from a range below Linux's ephemeral
//! range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768-60999 by default): no client socket
//! of this or another process is handed one of them by the kernel in the meantime. Each port is
//! handed out at most once per test process (an atomic counter from a pid-derived offset, so
//! two test processes at once start far apart) and only after a bind showed it is free.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out.
const FLOOR: u16 = 10_000;

/// Ports handed out so far by this process.
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// `[FLOOR, end)`: up to the start of the ephemeral range.
fn range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        assert!(
            ephemeral_low > FLOOR + 1_000,
            "the ephemeral range starts at {ephemeral_low}: no room below it for test ports"
        );
        (FLOOR, ephemeral_low)
    })
}

/// A loopback port nothing listens on, outside the ephemeral range, never handed out before
/// by this process.
pub fn port() -> u16 {
    let (low, high) = range();
    let span = u32::from(high - low);
    let offset = (std::process::id() % 16) * (span / 16);
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let candidate = low + u16::try_from((offset + n) % span).expect("port in range");
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// `127.0.0.1:` a [`port`].
pub fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let (low, high) = super::range();
        let got: Vec<u16> = (0..50).map(|_| super::port()).collect();
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), got.len(), "{got:?}");
        for p in got {
            assert!((low..high).contains(&p), "{p} outside {low}..{high}");
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(),
                "{p} taken"
            );
        }
    }
}
