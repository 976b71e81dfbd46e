//! Whether a node still talks to the control plane: alive, late or dead, judged by the age of
//! its last report against its poll interval (a node reports after every long-poll round).

use std::time::Duration;

/// How a node's last report compares with the interval it polls at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It reported within one poll interval (and a grace).
    Alive,
    /// It missed a report, but not three.
    Late,
    /// It missed three reports or more: it is stopped, or cut off from the control plane.
    Dead,
}

impl Liveness {
    /// The word the API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Alive => "alive",
            Liveness::Late => "late",
            Liveness::Dead => "dead",
        }
    }
}

/// The slack allowed on top of a poll interval: a quarter of it, at least 2 s (a report is
/// sent when a long poll ends, and both take some time on a busy machine).
fn grace(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_secs(2))
}

/// Judge a node whose last report is `report_age` old and that polls every `interval` at most
/// (its long-poll wait, capped by the control plane's `max_wait`).
pub fn judge(report_age: Duration, interval: Duration) -> Liveness {
    if report_age <= interval + grace(interval) {
        Liveness::Alive
    } else if report_age <= interval * 3 + grace(interval) {
        Liveness::Late
    } else {
        Liveness::Dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_late_after_one_missed_report_and_dead_after_three() {
        let s = Duration::from_secs;
        assert_eq!(judge(s(0), s(30)), Liveness::Alive);
        assert_eq!(judge(s(37), s(30)), Liveness::Alive);
        assert_eq!(judge(s(38), s(30)), Liveness::Late);
        assert_eq!(judge(s(97), s(30)), Liveness::Late);
        assert_eq!(judge(s(98), s(30)), Liveness::Dead);
        // short intervals get at least 2 s of grace
        assert_eq!(judge(s(3), s(1)), Liveness::Alive);
        assert_eq!(judge(s(4), s(1)), Liveness::Late);
        assert_eq!(judge(s(6), s(1)), Liveness::Dead);
    }
}
