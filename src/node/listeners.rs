//! Listening sockets: a bind check before Pingora takes over, so a port in use fails at once
//! with the address named, and a watch that this process really holds every listening socket
//! afterwards (Pingora retries a busy port for 30 s and then only panics a listener thread).

use crate::node::readiness::Readiness;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A socket the node must listen on: what it is (`listener http`, `admin`) and where.
#[derive(Debug, Clone)]
pub struct ListenAddr {
    /// What the socket is for, as error messages name it.
    pub what: String,
    /// The address.
    pub addr: SocketAddr,
}

/// A listening address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("{what}: cannot listen on {addr}: {reason}")]
pub struct BindError {
    /// What the socket is for.
    pub what: String,
    /// The address.
    pub addr: SocketAddr,
    /// What the system said.
    pub reason: std::io::Error,
}

/// Bind each address and let it go at once (with SO_REUSEADDR, as Pingora binds), so a busy
/// port or a missing permission is found before anything starts.
pub fn check_bindable(addrs: &[ListenAddr]) -> Result<(), BindError> {
    for a in addrs {
        std::net::TcpListener::bind(a.addr).map_err(|reason| BindError {
            what: a.what.clone(),
            addr: a.addr,
            reason,
        })?;
    }
    Ok(())
}

/// The TCP addresses this process holds a listening socket on (Linux: from `/proc/self`).
#[cfg(target_os = "linux")]
pub fn bound_by_this_process() -> std::io::Result<HashSet<SocketAddr>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    let mut bound = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        bound.extend(listening_rows(&text, &inodes));
    }
    Ok(bound)
}

/// The local addresses of the LISTEN rows of a `/proc/net/tcp{,6}` table whose socket inode is
/// one of `inodes`.
fn listening_rows(text: &str, inodes: &HashSet<u64>) -> Vec<SocketAddr> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            if *state != LISTEN || !inodes.contains(&inode.parse::<u64>().ok()?) {
                return None;
            }
            parse_proc_addr(local)
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word as the kernel
/// prints it, in host byte order; the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip: std::net::IpAddr = match ip.len() {
        8 => std::net::Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::Ipv6Addr::from(bytes).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Elsewhere than Linux there is no cheap way to tell: every address counts as bound.
#[cfg(not(target_os = "linux"))]
pub fn bound_by_this_process() -> std::io::Result<HashSet<SocketAddr>> {
    Err(std::io::Error::other("not supported on this system"))
}

/// Watches, after start, that every listening socket is held by this process: marks the node's
/// listeners bound for `/readyz`, or ends the process with status 1 when one is still not
/// bound after `deadline` (no process stays up with a listener that failed).
pub struct ListenerWatch {
    addrs: Vec<ListenAddr>,
    readiness: Arc<Readiness>,
    deadline: Duration,
}

impl ListenerWatch {
    /// Watch `addrs` for at most `deadline`.
    pub fn new(addrs: Vec<ListenAddr>, readiness: Arc<Readiness>, deadline: Duration) -> Self {
        ListenerWatch {
            addrs,
            readiness,
            deadline,
        }
    }

    fn missing(&self) -> Result<Vec<&ListenAddr>, std::io::Error> {
        let bound = bound_by_this_process()?;
        Ok(self
            .addrs
            .iter()
            .filter(|a| !bound.contains(&a.addr))
            .collect())
    }
}

#[async_trait]
impl BackgroundService for ListenerWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let started = Instant::now();
        loop {
            match self.missing() {
                Ok(missing) if missing.is_empty() => {
                    self.readiness.mark_listeners_bound();
                    return;
                }
                Err(e) => {
                    log::warn!("cannot tell which sockets are bound ({e}); assuming all are");
                    self.readiness.mark_listeners_bound();
                    return;
                }
                Ok(missing) if started.elapsed() >= self.deadline => {
                    for a in missing {
                        log::error!(
                            "{}: not listening on {} after {:?} (address in use?); exiting",
                            a.what,
                            a.addr,
                            self.deadline
                        );
                    }
                    std::process::exit(1);
                }
                Ok(_) => {}
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_rows_are_parsed_in_host_order() {
        let v4 = u32::from_ne_bytes([127, 0, 0, 1]);
        let v6: String = [0u32, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]
            .iter()
            .map(|w| format!("{w:08X}"))
            .collect();
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {v4:08X}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1\n\
             \x20  1: {v4:08X}:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 43 1\n\
             \x20  2: {v4:08X}:1F92 0100007F:0050 01 00000000:00000000 00:00000000 00000000  1000        0 42 1\n\
             \x20  3: {v6}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 42 1\n"
        );
        let ours: HashSet<u64> = [42].into_iter().collect();
        let rows = listening_rows(&text, &ours);
        assert_eq!(
            rows,
            vec![
                "127.0.0.1:8080".parse::<SocketAddr>().expect("v4"),
                "[::1]:80".parse().expect("v6")
            ]
        );
    }

    #[test]
    fn this_process_sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        assert!(bound_by_this_process().expect("proc").contains(&addr));
        let busy = check_bindable(&[ListenAddr {
            what: "listener t".into(),
            addr,
        }])
        .expect_err("in use");
        assert!(busy
            .to_string()
            .starts_with(&format!("listener t: cannot listen on {addr}")));
        drop(l);
        assert!(!bound_by_this_process().expect("proc").contains(&addr));
    }
}
