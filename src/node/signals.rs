//! The signals a running node answers, for [`crate::Verge::run`]: Pingora's own (SIGTERM stops
//! gracefully, SIGINT at once, SIGQUIT hands the listening sockets to a new process already
//! waiting on `server.upgrade_sock`) and SIGUSR2, the binary upgrade: the node starts the
//! binary on disk with `serve --upgrade` itself (so under systemd the new process is in the
//! unit), waits until it listens on `server.upgrade_sock`, and only then hands its sockets over
//! as SIGQUIT does. If the new process exits or never gets there, the node keeps serving.
//! SIGHUP (reload) is handled by [`crate::node::reload::ReloadService`].

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How to start the process that takes over on SIGUSR2.
#[derive(Debug, Clone)]
pub struct Successor {
    /// The binary, as found on disk at start (a package upgrade replaces it in place).
    pub program: PathBuf,
    /// The arguments before `--upgrade` (e.g. `serve -c /etc/verge/verge.yaml`).
    pub args: Vec<String>,
    /// `server.upgrade_sock`.
    pub upgrade_sock: PathBuf,
    /// How long the new process may take to load its config and wait on the socket.
    pub ready_within: Duration,
}

impl Successor {
    /// Start the new process and wait until it listens on the upgrade socket.
    async fn start(&self) -> Result<u32, String> {
        // A socket left by an earlier upgrade would look like a new process waiting.
        match std::fs::remove_file(&self.upgrade_sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot remove {}: {e}",
                    self.upgrade_sock.display()
                ))
            }
        }
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        let pid = child.id();
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(format!(
                        "the new process {pid} exited ({status}) before taking over"
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("cannot watch the new process {pid}: {e}")),
            }
            if self.upgrade_sock.exists() {
                return Ok(pid);
            }
            if started.elapsed() > self.ready_within {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the new process {pid} did not wait on {} within {:?}; stopped it",
                    self.upgrade_sock.display(),
                    self.ready_within
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Pingora's signal handling plus SIGUSR2 (binary upgrade).
pub struct NodeSignals {
    successor: Successor,
}

impl NodeSignals {
    /// Signals for a node that starts `successor` on SIGUSR2.
    pub fn new(successor: Successor) -> Self {
        NodeSignals { successor }
    }
}

#[async_trait]
impl ShutdownSignalWatch for NodeSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int), Ok(mut usr2)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined2()),
        ) else {
            log::error!("cannot handle SIGUSR2: binary upgrade through verge upgrade is off");
            return UnixShutdownSignalWatch.recv().await;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
                _ = usr2.recv() => {
                    log::info!("SIGUSR2 received, starting {} for a binary upgrade", self.successor.program.display());
                    // a stop signal while the new process starts still stops this one
                    let started = tokio::select! {
                        r = self.successor.start() => r,
                        _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    };
                    match started {
                        Ok(pid) => {
                            log::info!("process {pid} waits for the listening sockets; handing them over");
                            return ShutdownSignal::GracefulUpgrade;
                        }
                        Err(e) => log::error!("binary upgrade abandoned, still serving: {e}"),
                    }
                }
            }
        }
    }
}
