//! What the control plane and nodes exchange: invalidations, snapshots, positions, reports, and
//! the checksum and signature of a snapshot message.

pub use crate::cache::invalidation::{
    check_expected_version, parse_target, Invalidation, InvalidationKind, NodeSelector, Target,
    MAX_TARGET_LEN,
};
pub use crate::config::keys::{SigningKey, VerifyingKey};
pub use crate::unix_time::{from_unix_ms, unix_ms};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How far a node (or the control plane) has got: policy version and invalidation sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Position {
    /// The policy version (0: none yet).
    pub policy_version: u64,
    /// The last invalidation sequence number applied (0: none).
    pub seq: u64,
}

impl Position {
    /// True when neither part of `other` is behind this one's.
    pub fn is_at_or_after(&self, other: &Position) -> bool {
        self.policy_version >= other.policy_version && self.seq >= other.seq
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.policy_version, self.seq)
    }
}

impl FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, q) = s
            .split_once('.')
            .ok_or_else(|| format!("{s:?} is not <policy_version>.<seq>"))?;
        let num = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| format!("{s:?} is not <policy_version>.<seq>"))
        };
        Ok(Position {
            policy_version: num(p)?,
            seq: num(q)?,
        })
    }
}

/// What `GET /v1/snapshot` returns: everything (`full`) or what is new after the node's position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMessage {
    /// A full snapshot replaces the node's state; a delta adds to it.
    pub full: bool,
    /// The policy version this message brings the node to.
    pub policy_version: u64,
    /// The invalidation sequence this message brings the node to.
    pub seq: u64,
    /// The policy document; in a delta only when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// Invalidations after the node's `seq` (delta) or the whole retained log (full).
    #[serde(default)]
    pub invalidations: Vec<Invalidation>,
    /// How long the control plane keeps invalidations; nodes forget theirs after the same time.
    pub retention_secs: u64,
    /// The identity of the store the positions come from (a shared store's epoch). A full
    /// message from another epoch replaces a node's state even when its position is lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl SnapshotMessage {
    /// Where a node stands after applying this message.
    pub fn position(&self) -> Position {
        Position {
            policy_version: self.policy_version,
            seq: self.seq,
        }
    }

    /// The message for a node that does not say it skips waves ([`FEATURE_WAVES`]): one older
    /// than staged purges, which ignores `nodes` and would apply every wave. The waves that
    /// name their nodes are left out (such a node is never named: it is in the last wave,
    /// which it applies as any purge); their `seq`s still count, as the message's `seq` says.
    pub fn without_named_waves(mut self) -> SnapshotMessage {
        self.invalidations
            .retain(|i| !matches!(i.nodes, Some(NodeSelector::Only(_))));
        self
    }
}

/// What a node says it does, in its reports and its snapshot polls (`features`): it skips the
/// waves of a staged purge that do not name it. A node without it (older than staged purges)
/// applies every wave, so the control plane puts it in the last wave only, and leaves the
/// earlier waves out of the snapshots it sends it.
pub const FEATURE_WAVES: &str = "waves";

/// What a node reports after applying a snapshot (`POST /v1/nodes/<id>/applied`).
///
/// Fields a control plane does not know are ignored, and fields a node does not send take
/// their defaults, so nodes and control planes of different versions read each other's
/// reports. A control plane from before that (which refused unknown fields) names the fields
/// it knows in its refusal, and the node sends it only those ([`AppliedReport::fields_known`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppliedReport {
    /// The policy version in force on the node.
    pub policy_version: u64,
    /// The last invalidation applied on the node.
    pub seq: u64,
    /// When the node swapped the snapshot in (Unix milliseconds).
    pub applied_at_ms: u64,
    /// The last snapshot the node refused since it applied one (a NACK), if any. Left out of
    /// the report when there is none, so a control plane that predates it reads the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectedSnapshot>,
    /// The node's admin listener (`host:port`), where `verge verify` asks what it would serve.
    /// An unspecified address (`0.0.0.0:9901`) gets the address the report came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// What the node does that older nodes do not ([`FEATURE_WAVES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl AppliedReport {
    /// Whether the node skips the waves of a staged purge that do not name it.
    pub fn applies_waves(&self) -> bool {
        self.features.iter().any(|f| f == FEATURE_WAVES)
    }

    /// The fields a control plane that refused a report for an unknown field says it knows:
    /// serde's `unknown field `x`, expected one of `a`, `b`` in its answer. `None` when the
    /// answer is not such a refusal.
    pub fn fields_known(refusal: &str) -> Option<Vec<String>> {
        let (_, rest) = refusal.split_once("unknown field `")?;
        let (_, expected) = rest.split_once("expected ")?;
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        let mut fields = Vec::new();
        let mut rest = expected;
        while let Some(start) = rest.strip_prefix('`') {
            let (name, after) = start.split_once('`')?;
            fields.push(name.to_string());
            rest = after
                .trim_start_matches([',', ' '])
                .trim_start_matches("or ");
        }
        (!fields.is_empty()).then_some(fields)
    }

    /// The report as JSON, with only `fields` when given (what an older control plane knows).
    pub fn to_json_with(&self, fields: Option<&[String]>) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let (Some(fields), Some(map)) = (fields, v.as_object_mut()) {
            map.retain(|k, _| fields.iter().any(|f| f == k));
        }
        v
    }

    /// The admin address as others reach it: an unspecified IP (listening on every address)
    /// replaced by `peer`'s, the address the report came from. Anything that is not an
    /// `ip:port` is dropped.
    pub fn reachable_admin(&self, peer: Option<std::net::IpAddr>) -> Option<String> {
        let addr: std::net::SocketAddr = self.admin.as_deref()?.parse().ok()?;
        match (addr.ip().is_unspecified(), peer) {
            (false, _) => Some(addr.to_string()),
            (true, Some(ip)) => Some(std::net::SocketAddr::new(ip, addr.port()).to_string()),
            (true, None) => None,
        }
    }
}

/// A snapshot a node refused to apply: where it would have taken the node, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RejectedSnapshot {
    /// The policy version the refused message carried.
    pub policy_version: u64,
    /// Its invalidation sequence.
    pub seq: u64,
    /// The `verge_snapshot_rejected_total` reason (`invalid_policy`, `build`, ...).
    pub reason: String,
    /// The error, as the node logged it (at most [`MAX_REJECTION_ERROR`] bytes).
    pub error: String,
}

/// Longest rejection error a node sends and a control plane keeps.
pub const MAX_REJECTION_ERROR: usize = 1024;

impl RejectedSnapshot {
    /// The rejection, its error cut to [`MAX_REJECTION_ERROR`] bytes on a character boundary.
    pub fn new(at: Position, reason: &str, error: &str) -> RejectedSnapshot {
        let mut end = error.len().min(MAX_REJECTION_ERROR);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        RejectedSnapshot {
            policy_version: at.policy_version,
            seq: at.seq,
            reason: reason.chars().take(64).collect(),
            error: error[..end].to_string(),
        }
    }
}

/// The field that carries a snapshot message's checksum, so a node applies only the bytes the
/// control plane sent (a bit flipped on the way, or by a box in the middle, is refused).
pub const CHECKSUM_FIELD: &str = "verge-checksum";

/// The checksum of a snapshot message's body, as `CHECKSUM_FIELD` carries it.
pub fn checksum(body: &[u8]) -> String {
    use blake2::digest::{Update, VariableOutput};
    let mut digest = [0u8; 32];
    if let Ok(mut h) = blake2::Blake2bVar::new(32) {
        h.update(body);
        let _ = h.finalize_variable(&mut digest);
    }
    format!("blake2b-256={}", to_hex(&digest))
}

/// Whether `sent` (the field as received, if any) is the checksum of `body`.
pub fn checksum_matches(body: &[u8], sent: Option<&[u8]>) -> bool {
    sent.is_some_and(|s| s == checksum(body).as_bytes())
}

/// The field that carries the control plane's Ed25519 signature of a snapshot message's body
/// (`ed25519=<hex>`), when the control plane has a `signing_key`.
pub const SIGNATURE_FIELD: &str = "verge-signature";

/// What is signed: the body after this context, so a signature made for anything else never
/// passes for a snapshot's.
const SIGNED_CONTEXT: &[u8] = b"verge-snapshot-v1\n";

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    [SIGNED_CONTEXT, body].concat()
}

/// The signature of a snapshot message's body, as `SIGNATURE_FIELD` carries it.
pub fn signature(key: &SigningKey, body: &[u8]) -> String {
    use ed25519_dalek::Signer;
    format!(
        "ed25519={}",
        to_hex(&key.sign(&signed_bytes(body)).to_bytes())
    )
}

/// Whether `sent` (the field as received, if any) is a signature of `body` by one of `keys`
/// (any of them: a key being rotated in or out still verifies).
pub fn signature_matches(keys: &[VerifyingKey], body: &[u8], sent: Option<&[u8]>) -> bool {
    let Some(hex) = sent.and_then(|s| s.strip_prefix(b"ed25519=")) else {
        return false;
    };
    let Some(bytes) = from_hex::<64>(hex) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    let signed = signed_bytes(body);
    keys.iter().any(|k| k.verify_strict(&signed, &sig).is_ok())
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let body = br#"{"full":true,"policy_version":3,"seq":7}"#.to_vec();
        let sum = checksum(&body);
        assert!(
            sum.starts_with("blake2b-256=") && sum.len() == 12 + 64,
            "{sum}"
        );
        assert!(checksum_matches(&body, Some(sum.as_bytes())));
        let mut flipped = body.clone();
        flipped[20] ^= 0x01;
        assert!(!checksum_matches(&flipped, Some(sum.as_bytes())));
        assert!(!checksum_matches(&body, None), "no checksum, no trust");
    }

    #[test]
    fn any_configured_key_verifies_and_nothing_else_does() {
        let old = SigningKey::from_bytes(&[1u8; 32]);
        let new = SigningKey::from_bytes(&[2u8; 32]);
        let stranger = SigningKey::from_bytes(&[3u8; 32]);
        let keys = [old.verifying_key(), new.verifying_key()];
        let body = br#"{"full":true,"policy_version":3,"seq":7}"#.to_vec();
        for signer in [&old, &new] {
            let sig = signature(signer, &body);
            assert!(sig.starts_with("ed25519=") && sig.len() == 8 + 128, "{sig}");
            assert!(signature_matches(&keys, &body, Some(sig.as_bytes())));
        }
        let sig = signature(&new, &body);
        let mut flipped = body.clone();
        flipped[20] ^= 0x01;
        assert!(!signature_matches(&keys, &flipped, Some(sig.as_bytes())));
        let forged = signature(&stranger, &body);
        assert!(!signature_matches(&keys, &body, Some(forged.as_bytes())));
        assert!(!signature_matches(&keys, &body, None));
        assert!(!signature_matches(&keys, &body, Some(b"ed25519=zz")));
        assert!(!signature_matches(&[], &body, Some(sig.as_bytes())));
        let bad_hex = format!("ed25519={}", "g".repeat(128));
        assert!(!signature_matches(&keys, &body, Some(bad_hex.as_bytes())));
    }

    #[test]
    fn positions_parse_and_order() {
        let p: Position = "7.42".parse().unwrap();
        assert_eq!(
            p,
            Position {
                policy_version: 7,
                seq: 42
            }
        );
        assert_eq!(p.to_string(), "7.42");
        assert!("7".parse::<Position>().is_err());
        assert!("x.1".parse::<Position>().is_err());
        let q = Position {
            policy_version: 8,
            seq: 40,
        };
        assert!(!q.is_at_or_after(&p));
        assert!(!p.is_at_or_after(&q));
    }

    /// The report as a control plane from before `admin` and `features` read it: it refused
    /// fields it did not know.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct OldReport {
        policy_version: u64,
        seq: u64,
        applied_at_ms: u64,
        #[serde(default)]
        rejected: Option<RejectedSnapshot>,
    }

    fn new_report() -> AppliedReport {
        AppliedReport {
            policy_version: 3,
            seq: 9,
            applied_at_ms: 1000,
            rejected: None,
            admin: Some("10.0.0.1:9901".into()),
            features: vec![FEATURE_WAVES.into()],
        }
    }

    #[test]
    fn reports_of_old_and_new_nodes_decode_and_unknown_fields_are_ignored() {
        // an old node: no admin, no features; it applies every wave
        let old: AppliedReport =
            serde_json::from_str(r#"{"policy_version":3,"seq":9,"applied_at_ms":1000}"#).unwrap();
        assert_eq!(old.admin, None);
        assert!(old.features.is_empty() && !old.applies_waves());
        // a new node
        let new: AppliedReport =
            serde_json::from_value(serde_json::to_value(new_report()).unwrap()).unwrap();
        assert_eq!(new, new_report());
        assert!(new.applies_waves());
        // a node newer than this control plane: its fields are ignored
        let newer: AppliedReport = serde_json::from_str(
            r#"{"policy_version":3,"seq":9,"applied_at_ms":1000,"features":["waves","x"],
                "uptime_s":5,"rejected":{"policy_version":4,"seq":9,"reason":"build","error":"e","hint":1}}"#,
        )
        .unwrap();
        assert!(newer.applies_waves());
        assert_eq!(newer.rejected.map(|r| r.reason), Some("build".into()));
    }

    #[test]
    fn a_control_plane_that_refuses_new_fields_gets_only_those_it_names() {
        let report = new_report();
        // what an old control plane answers to the new report (serde's own words)
        let refusal = serde_json::from_value::<OldReport>(report.to_json_with(None))
            .unwrap_err()
            .to_string();
        let api_answer = serde_json::json!({"error": format!("invalid report: {refusal}")});
        let known = AppliedReport::fields_known(&api_answer.to_string()).unwrap();
        assert_eq!(
            known,
            ["policy_version", "seq", "applied_at_ms", "rejected"]
        );
        let old: OldReport = serde_json::from_value(report.to_json_with(Some(&known))).unwrap();
        assert_eq!(
            (old.policy_version, old.seq, old.applied_at_ms),
            (3, 9, 1000)
        );
        // serde's two- and one-field forms, and anything else
        assert_eq!(
            AppliedReport::fields_known("unknown field `x`, expected `a` or `b` at line 1"),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            AppliedReport::fields_known("unknown field `x`, expected `a`"),
            Some(vec!["a".to_string()])
        );
        assert_eq!(AppliedReport::fields_known("missing field `seq`"), None);
    }

    fn inv_json(seq: u64, nodes: Option<serde_json::Value>) -> serde_json::Value {
        let mut v = serde_json::json!({"seq": seq, "kind": "all", "target": "", "soft": false,
            "created_ms": 1});
        if let Some(n) = nodes {
            v["nodes"] = n;
        }
        v
    }

    #[test]
    fn invalidations_and_snapshots_of_old_and_new_control_planes_decode() {
        // an old control plane's purge (no id, no version, no nodes): every node applies it
        let old: Invalidation = serde_json::from_value(inv_json(1, None)).unwrap();
        assert!(old.reaches(Some("n1")) && old.nodes.is_none());
        // a wave as a control plane from before the store kept staged purges writes it: still
        // applied by the nodes it names only
        let wave: Invalidation =
            serde_json::from_value(inv_json(2, Some(serde_json::json!({"only": ["n1"]})))).unwrap();
        assert!(wave.reaches(Some("n1")) && !wave.reaches(Some("n2")));
        let rest: Invalidation =
            serde_json::from_value(inv_json(3, Some(serde_json::json!({"except": ["n1"]}))))
                .unwrap();
        assert!(!rest.reaches(Some("n1")) && rest.reaches(Some("n2")));
        // a newer control plane's fields are ignored, in an invalidation and in a message
        let mut newer = inv_json(4, None);
        newer["priority"] = serde_json::json!(1);
        let msg: SnapshotMessage = serde_json::from_value(serde_json::json!({
            "full": false, "policy_version": 1, "seq": 4, "retention_secs": 60,
            "invalidations": [inv_json(2, Some(serde_json::json!({"only": ["n1"]}))),
                              inv_json(3, Some(serde_json::json!({"except": ["n1"]}))), newer],
            "shard": "x"
        }))
        .unwrap();
        assert_eq!(msg.invalidations.len(), 3);
        // a message from before epochs: none
        assert_eq!(msg.epoch, None);
        // for a node older than waves: the named wave is left out, the rest stays, the seq too
        let for_old = msg.without_named_waves();
        let seqs: Vec<u64> = for_old.invalidations.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(for_old.seq, 4);
    }
}
