//! What `/readyz` answers: ready once every listener is bound, the node serves routes or a
//! snapshot from an authoritative source (with a `control:` block: the control plane or the
//! state file, even one without routes), and every pool has had its first health-check pass.
//! A control-fed node with no routes of its own that has neither heard from its control plane
//! nor restored a state file that verifies is not ready (and its listeners answer 503).

use crate::snapshot::Snapshot;
use std::sync::atomic::{AtomicBool, Ordering};

/// The node-wide readiness facts that are not part of the snapshot itself.
#[derive(Debug)]
pub struct Readiness {
    control_fed: bool,
    received: AtomicBool,
    listeners_bound: AtomicBool,
}

impl Readiness {
    /// For a node with (`control_fed`) or without a `control:` block; nothing is bound yet.
    pub fn new(control_fed: bool) -> Self {
        Readiness {
            control_fed,
            received: AtomicBool::new(false),
            listeners_bound: AtomicBool::new(false),
        }
    }

    /// The node now serves a snapshot from the control plane or from its state file.
    pub fn mark_received(&self) {
        self.received.store(true, Ordering::Relaxed);
    }

    /// Every listener (and the admin listener) is bound by this process.
    pub fn mark_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Relaxed);
    }

    /// Whether every listener has been seen bound.
    pub fn listeners_bound(&self) -> bool {
        self.listeners_bound.load(Ordering::Relaxed)
    }

    /// Whether a control-fed node has a snapshot from the control plane or its state file
    /// (always true for a node without a `control:` block).
    pub fn snapshot_received(&self) -> bool {
        !self.control_fed || self.received.load(Ordering::Relaxed)
    }

    /// `Ok` when ready to take traffic, else why not (the `/readyz` body).
    pub fn verdict(&self, snapshot: &Snapshot) -> Result<(), &'static str> {
        if !self.listeners_bound() {
            return Err("not ready: listeners not bound yet");
        }
        if snapshot.routes.is_empty() && !self.snapshot_received() {
            return Err(
                "not ready: no routes, and no snapshot from the control plane or the state file yet",
            );
        }
        if !snapshot.ready() {
            return Err("not ready: waiting for first health checks");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Policy};

    #[test]
    fn every_condition_is_needed() {
        let c = Config::from_yaml_str(
            "listeners: [{listen: \"127.0.0.1:1\"}]\npools: {a: {backends: [\"127.0.0.1:2\"]}}\nroutes: [{hosts: [x.com], pool: a}]\n",
        )
        .expect("config");
        let s = Snapshot::build(&c, None).expect("snapshot");
        let file = Readiness::new(false);
        assert!(file.verdict(&s).is_err(), "listeners not bound");
        file.mark_listeners_bound();
        assert_eq!(file.verdict(&s), Ok(()));
        let fed = Readiness::new(true);
        fed.mark_listeners_bound();
        assert_eq!(
            fed.verdict(&s),
            Ok(()),
            "the file's routes serve until contact"
        );
        let empty = c.with_policy(&Policy {
            pools: Default::default(),
            routes: Vec::new(),
            classes: Default::default(),
            tier: None,
        });
        let none = Snapshot::build(&empty, None).expect("empty snapshot");
        assert!(fed.verdict(&none).unwrap_err().contains("control plane"));
        fed.mark_received();
        assert_eq!(
            fed.verdict(&none),
            Ok(()),
            "an empty policy is what it was told"
        );
    }
}
