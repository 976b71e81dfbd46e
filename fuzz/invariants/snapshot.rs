//! Control-plane snapshots and deltas as a node decodes and validates them
//! (`src/control/wire.rs`, `next_state` in `src/node/poller.rs`, `src/cache/invalidation/index.rs`).
//!
//! Input: a `SnapshotMessage` as JSON; any input is also tried as an invalidation target of
//! every kind and as a position (`7.42`).
//!
//! Invariants:
//! - `next_state` never panics; it refuses exactly what is older than the node's position,
//!   a policy version without a document, an invalid policy, and invalidations with an unusable
//!   target or beyond the message's own `seq`; a message at the node's position is a no-op;
//! - an accepted message moves the node to its position, its policy validates to the config the
//!   node will run, the result builds a snapshot, every new invalidation takes effect (hard:
//!   invalid, soft: at least stale), and applying the same message again changes nothing;
//! - a message survives a JSON round trip;
//! - an accepted target is canonical (parsing its rendering gives it back; hosts are what
//!   `canonical_host` gives) and reaches what it names: the URL, everything under the prefix,
//!   the host, entries carrying the tag (a tag must fit in a header value), or everything.

use super::input::{hermetic_json, Input};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use verge::cache::invalidation::index::{response_tags, InvalidationIndex, Verdict};
use verge::config::{Config, Policy};
use verge::control::wire::{
    parse_target, Invalidation, InvalidationKind, Position, SnapshotMessage, Target, MAX_TARGET_LEN,
};
use verge::node::poller::{next_state, Rejection};
use verge::snapshot::{ControlState, Snapshot};

const BASE: &str = r#"
listeners: [{listen: "127.0.0.1:1"}]
pools:
  file: {backends: ["127.0.0.1:2"]}
routes:
  - {hosts: ["*"], pool: file}
"#;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The node's file config, a fresh node (position 0.0), and a node that has applied policy
/// version 3 and invalidations up to seq 10.
struct Nodes {
    base: Config,
    fresh: Snapshot,
    advanced: Snapshot,
}

fn nodes() -> &'static Nodes {
    static NODES: OnceLock<Nodes> = OnceLock::new();
    NODES.get_or_init(|| {
        let base = Config::from_yaml_str(BASE).expect("base config");
        let fresh = Snapshot::build(&base, None).expect("fresh snapshot");
        let doc = serde_json::json!({
            "pools": {"cp": {"backends": ["127.0.0.1:3"]}},
            "routes": [{"hosts": ["example.com"], "pool": "cp", "cache": {}}]
        });
        let policy = Policy::from_json(&doc).expect("policy");
        let mut config = base.with_policy(&policy);
        config.version = "policy-3".into();
        let mut index = InvalidationIndex::default();
        let applied_at = now() - Duration::from_secs(60);
        for (seq, kind, target) in [
            (4, InvalidationKind::Url, "example.com/a"),
            (7, InvalidationKind::Tag, "t1"),
            (10, InvalidationKind::Prefix, "example.com/p/"),
        ] {
            let inv = Invalidation {
                seq,
                kind,
                target: target.into(),
                soft: false,
                created_ms: 0,
                id: None,
                expected_version: None,
                nodes: None,
            };
            index.apply(&inv, applied_at).expect("invalidation");
        }
        let state = ControlState {
            position: Position {
                policy_version: 3,
                seq: 10,
            },
            policy: Some(std::sync::Arc::new(doc)),
            invalidations: std::sync::Arc::new(index),
            retention: Duration::from_secs(3600),
            awaiting: false,
            epoch: None,
        };
        let advanced = Snapshot::build_with(&config, None, state).expect("advanced snapshot");
        Nodes {
            base,
            fresh,
            advanced,
        }
    })
}

pub fn check(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<SnapshotMessage>(data) {
        if msg.policy.as_ref().is_none_or(hermetic_json) {
            let n = nodes();
            message_invariants(&n.fresh, &n.base, &msg);
            message_invariants(&n.advanced, &n.base, &msg);
            round_trip(&msg);
        }
    }
    let text = Input::new(data).rest_text();
    for kind in [
        InvalidationKind::Url,
        InvalidationKind::Prefix,
        InvalidationKind::Host,
        InvalidationKind::Tag,
        InvalidationKind::All,
    ] {
        target_invariants(kind, &text);
    }
    if let Ok(p) = text.parse::<Position>() {
        assert_eq!(
            p.to_string().parse::<Position>(),
            Ok(p),
            "position round trip"
        );
    }
}

fn round_trip(msg: &SnapshotMessage) {
    let Ok(bytes) = serde_json::to_vec(msg) else {
        panic!("a decoded message does not encode");
    };
    let Ok(again) = serde_json::from_slice::<SnapshotMessage>(&bytes) else {
        panic!("an encoded message does not decode");
    };
    assert_eq!(again.position(), msg.position());
    assert_eq!(again.full, msg.full);
    assert_eq!(again.policy, msg.policy);
    assert_eq!(again.invalidations, msg.invalidations);
    assert_eq!(again.retention_secs, msg.retention_secs);
}

/// The strongest verdict for where a target points, for an entry fetched before `at`.
fn verdict_for(index: &InvalidationIndex, target: &Target, at: SystemTime) -> Verdict {
    let before = at - Duration::from_millis(1);
    match target {
        Target::Url { host, path_query } => {
            index.verdict(host, path_query, std::iter::empty(), before)
        }
        Target::Prefix { host, prefix } => {
            index.verdict(host, &format!("{prefix}/x"), std::iter::empty(), before)
        }
        Target::Host(h) => index.verdict(h, "/any", std::iter::empty(), before),
        Target::Tag(t) => index.verdict("any.host", "/", std::iter::once(t.as_str()), before),
        Target::All => index.verdict("any.host", "/", std::iter::empty(), before),
    }
}

fn message_invariants(current: &Snapshot, base: &Config, msg: &SnapshotMessage) {
    let now = now();
    // a full message from another store epoch starts over from nothing
    let other_epoch = msg.epoch.as_deref() != current.control.epoch.as_deref();
    let have = if other_epoch {
        Position::default()
    } else {
        current.control.position
    };
    let got = msg.position();
    let new: Vec<&Invalidation> = msg
        .invalidations
        .iter()
        .filter(|i| i.seq > have.seq)
        .collect();
    let result = next_state(current, base, msg, now);
    let policy_changed = got.policy_version != have.policy_version
        || (msg.full && msg.policy.as_ref() != current.control.policy.as_deref());
    let (config, state) = match result {
        Err(Rejection::Older { .. }) => {
            assert!(
                !got.is_at_or_after(&have),
                "refused as older: {got} vs {have}"
            );
            return;
        }
        Err(Rejection::InvalidPolicy(why)) => {
            assert!(policy_changed, "policy refused though unchanged: {why}");
            if let Some(doc) = &msg.policy {
                assert!(
                    Policy::from_json(doc).is_err(),
                    "valid policy refused: {why}"
                );
            } else {
                assert!(!msg.full, "a full snapshot without a policy refused");
            }
            return;
        }
        Err(Rejection::InvalidInvalidation { seq, reason }) => {
            let bad = new.iter().any(|i| {
                i.seq == seq && (i.seq > got.seq || parse_target(i.kind, &i.target).is_err())
            });
            assert!(bad, "invalidation {seq} refused for no reason: {reason}");
            return;
        }
        Err(Rejection::Epoch { .. }) => {
            assert!(other_epoch && !msg.full, "refused for its epoch: {msg:?}");
            return;
        }
        Err(e @ Rejection::Build(_)) => panic!("next_state does not build: {e}"),
        Ok(None) => {
            assert!(
                got == have && !msg.full,
                "message at {got} ignored at {have}"
            );
            return;
        }
        Ok(Some(next)) => next,
    };
    assert!(got.is_at_or_after(&have), "accepted an older message");
    assert_eq!(state.position, got);
    assert_eq!(state.retention, Duration::from_secs(msg.retention_secs));
    for inv in &new {
        assert!(
            inv.seq <= got.seq,
            "accepted invalidation {} beyond {got}",
            inv.seq
        );
        let Ok(target) = parse_target(inv.kind, &inv.target) else {
            panic!("accepted an unusable target {:?}", inv.target);
        };
        let v = verdict_for(&state.invalidations, &target, now);
        let ok = if inv.soft {
            v != Verdict::Valid
        } else {
            v == Verdict::Invalid
        };
        assert!(ok, "invalidation {} has no effect: {v:?}", inv.seq);
    }
    if msg.retention_secs == 0 {
        assert_eq!(
            state.invalidations.len(),
            current.control.invalidations.len() + new.len()
        );
    }
    if policy_changed {
        match &msg.policy {
            Some(doc) => {
                let Ok(p) = Policy::from_json(doc) else {
                    panic!("an invalid policy was accepted");
                };
                assert_eq!(format!("{:?}", p.routes), format!("{:?}", config.routes));
                assert_eq!(format!("{:?}", p.pools), format!("{:?}", config.pools));
                assert_eq!(config.version, format!("policy-{}", got.policy_version));
                assert_eq!(state.policy.as_deref(), Some(doc));
            }
            None => {
                assert!(msg.full);
                assert!(state.policy.is_none());
                assert_eq!(format!("{:?}", config.routes), format!("{:?}", base.routes));
            }
        }
    }
    let next = match Snapshot::build_with(&config, None, state.clone()) {
        Ok(s) => s,
        Err(e) => panic!("an accepted message does not build: {e}"),
    };
    // The same message again changes nothing.
    match next_state(&next, base, msg, now) {
        Ok(None) => assert!(!msg.full),
        Ok(Some((_, again))) => {
            assert!(msg.full);
            assert_eq!(again.position, state.position);
            assert_eq!(again.invalidations.len(), state.invalidations.len());
        }
        Err(e) => panic!("applying {got} twice fails: {e}"),
    }
}

fn target_invariants(kind: InvalidationKind, text: &str) {
    let Ok(target) = parse_target(kind, text) else {
        return;
    };
    assert!(text.trim().len() <= MAX_TARGET_LEN);
    let canonical = |h: &str| {
        assert_eq!(
            verge::http_syntax::host::canonical_host(h).as_deref(),
            Some(h),
            "{text:?} gives a host that is not canonical"
        );
    };
    let rendered = match &target {
        Target::Url { host, path_query } => {
            canonical(host);
            assert!(path_query.starts_with('/') && !path_query.contains('#'));
            format!("{host}{path_query}")
        }
        Target::Prefix { host, prefix } => {
            canonical(host);
            assert!(prefix.starts_with('/') && !prefix.contains(['#', '?']));
            format!("{host}{prefix}")
        }
        Target::Host(h) => {
            canonical(h);
            h.clone()
        }
        Target::Tag(t) => {
            assert!(t.len() <= 1024 && !t.contains([',', '"']));
            let Ok(value) = http::HeaderValue::from_str(t) else {
                panic!("tag {t:?} can never be in a response header");
            };
            let mut headers = http::HeaderMap::new();
            headers.insert("surrogate-key", value);
            let names = [http::HeaderName::from_static("surrogate-key")];
            let tags: Vec<&str> = response_tags(&headers, &names).collect();
            assert_eq!(
                tags,
                [t.as_str()],
                "tag {t:?} is not read back from a response"
            );
            t.clone()
        }
        Target::All => String::new(),
    };
    assert_eq!(
        parse_target(kind, &rendered).as_ref(),
        Ok(&target),
        "{text:?} is not canonical"
    );
    for soft in [false, true] {
        let mut index = InvalidationIndex::default();
        let inv = Invalidation {
            seq: 1,
            kind,
            target: text.to_string(),
            soft,
            created_ms: 0,
            id: None,
            expected_version: None,
            nodes: None,
        };
        let at = now();
        assert_eq!(index.apply(&inv, at), Ok(()));
        let v = verdict_for(&index, &target, at);
        if soft {
            assert_eq!(v, Verdict::Stale { since: at });
        } else {
            assert_eq!(v, Verdict::Invalid);
        }
        // An entry fetched after the invalidation is untouched.
        let after = at + Duration::from_secs(1);
        let untouched = match &target {
            Target::Url { host, path_query } => {
                index.verdict(host, path_query, std::iter::empty(), after)
            }
            _ => Verdict::Valid,
        };
        assert_eq!(untouched, Verdict::Valid);
    }
}
