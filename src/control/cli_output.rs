//! What the operator commands print: tables for people (times relative on a terminal, RFC 3339
//! otherwise), JSON with readable times for scripts, a policy as YAML that can be pushed back as
//! it is, and the differences between two policy versions. Pure functions over the API's answers.

use crate::unix_time::rfc3339;
use serde_json::{json, Map, Value};
use std::fmt::Write;

/// How a table writes times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// `12s ago` (on a terminal), against this Unix-ms clock.
    Relative {
        /// Now, in Unix milliseconds.
        now_ms: u64,
    },
    /// RFC 3339 in UTC (piped or redirected output).
    Absolute,
}

impl Times {
    /// A Unix-ms timestamp as this style writes it.
    pub fn at(self, ms: u64) -> String {
        match self {
            Times::Relative { now_ms } => format!("{} ago", duration(now_ms.saturating_sub(ms))),
            Times::Absolute => rfc3339(ms),
        }
    }
}

/// A duration in milliseconds, short: `850ms`, `12s`, `4m10s`, `3h5m`, `2d3h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{s}s"),
        60..=3599 => two(s / 60, "m", s % 60, "s"),
        3600..=86_399 => two(s / 3600, "h", s % 3600 / 60, "m"),
        _ => two(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn two(a: u64, ua: &str, b: u64, ub: &str) -> String {
    if b == 0 {
        format!("{a}{ua}")
    } else {
        format!("{a}{ua}{b}{ub}")
    }
}

/// Columns padded to their widest cell, two spaces apart, with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The API's answer with every `*_ms` field made readable for scripts: timestamps become RFC
/// 3339 strings under the name without `_ms` (`written_ms` → `written`), ages and intervals
/// become seconds (`report_age_ms` → `report_age_seconds`). A `policy` document is left as it is.
pub fn readable_times(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, x) in map {
                match (k.strip_suffix("_ms"), x.as_u64()) {
                    // a policy document is shown exactly as it was written
                    _ if k == "policy" => {
                        out.insert(k.clone(), x.clone());
                    }
                    (Some(base), Some(ms)) if base.contains("age") || base.contains("interval") => {
                        out.insert(format!("{base}_seconds"), json!(ms as f64 / 1000.0));
                    }
                    (Some(base), Some(ms)) => {
                        out.insert(base.to_string(), Value::from(rfc3339(ms)));
                    }
                    _ => {
                        out.insert(k.clone(), readable_times(x));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(readable_times).collect()),
        other => other.clone(),
    }
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn text_of(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or("").to_string()
}

/// `verge nodes`: the head, then one row per node with its state, position, lag and times.
pub fn nodes_table(body: &Value, times: Times) -> String {
    let head = &body["head"];
    let mut out = format!(
        "head {}.{} (policy version {}, invalidation {})\n",
        u64_of(head, "policy_version"),
        u64_of(head, "seq"),
        u64_of(head, "policy_version"),
        u64_of(head, "seq"),
    );
    let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.is_empty() {
        out.push_str("no node has reported since the control plane started\n");
        return out;
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                text_of(n, "node"),
                text_of(n, "state"),
                format!("{}.{}", u64_of(n, "policy_version"), u64_of(n, "seq")),
                behind(u64_of(n, "policy_lag"), u64_of(n, "seq_lag")),
                times.at(u64_of(n, "applied_at_ms")),
                times.at(u64_of(n, "reported_ms")),
                duration(u64_of(n, "poll_interval_ms")),
                refused(&n["rejected"]),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "NODE",
            "STATE",
            "APPLIED",
            "BEHIND",
            "APPLIED AT",
            "LAST REPORT",
            "POLLS EVERY",
            "REFUSED",
        ],
        &rows,
    ));
    out.push_str(&staged_lines(&nodes));
    out
}

/// The unfinished staged purges, with the wave each node is in and whether it applied it:
/// `staged purge 1 (holding): edge-1 wave 1 applied, edge-2 wave 2 waiting`.
fn staged_lines(nodes: &[Value]) -> String {
    let mut purges: std::collections::BTreeMap<u64, (String, Vec<String>)> = Default::default();
    for n in nodes {
        for s in n["staged"].as_array().into_iter().flatten() {
            let entry = purges
                .entry(u64_of(s, "id"))
                .or_insert_with(|| (text_of(s, "state"), Vec::new()));
            let applied = if s["applied"] == Value::Bool(true) {
                "applied"
            } else {
                "waiting"
            };
            entry.1.push(format!(
                "{} wave {} {applied}",
                text_of(n, "node"),
                u64_of(s, "wave")
            ));
        }
    }
    purges
        .iter()
        .map(|(id, (state, nodes))| format!("staged purge {id} ({state}): {}\n", nodes.join(", ")))
        .collect()
}

/// The snapshot a node refused (its NACK), as `3.7 invalid_policy: why`; `-` when none.
fn refused(rejected: &Value) -> String {
    if rejected.is_null() {
        return "-".into();
    }
    format!(
        "{}.{} {}: {}",
        u64_of(rejected, "policy_version"),
        u64_of(rejected, "seq"),
        text_of(rejected, "reason"),
        text_of(rejected, "error")
    )
}

fn behind(policy_lag: u64, seq_lag: u64) -> String {
    match (policy_lag, seq_lag) {
        (0, 0) => "-".into(),
        (p, 0) => format!("{p} policy"),
        (0, s) => format!("{s} purge(s)"),
        (p, s) => format!("{p} policy, {s} purge(s)"),
    }
}

/// `verge policy history`: one row per version kept, the newest marked current.
pub fn history_table(body: &Value, times: Times) -> String {
    let versions = body["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        return "no policy has been written yet\n".into();
    }
    let last = versions.len() - 1;
    let rows: Vec<Vec<String>> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut note = Vec::new();
            if let Some(of) = v["rollback_of"].as_u64() {
                note.push(format!("rollback of {of}"));
            }
            if i == last {
                note.push("current".into());
            }
            vec![
                u64_of(v, "version").to_string(),
                times.at(u64_of(v, "written_ms")),
                text_of(v, "author"),
                note.join(", "),
            ]
        })
        .collect();
    table(&["VERSION", "WRITTEN", "AUTHOR", ""], &rows)
}

/// `verge policy get`: the document as YAML under comment lines naming its version, so the
/// output can be edited and pushed back as it is.
pub fn policy_yaml(body: &Value, times: Times) -> Result<String, String> {
    let doc = &body["policy"];
    if doc.is_null() {
        return Ok("# no policy has been written yet\n".into());
    }
    let mut out = format!(
        "# verge policy version {}, written {} by {}",
        u64_of(body, "version"),
        times.at(u64_of(body, "written_ms")),
        text_of(body, "author"),
    );
    if let Some(of) = body["rollback_of"].as_u64() {
        let _ = write!(out, " (rollback of {of})");
    }
    out.push_str("\n# edit and push back with: verge policy push FILE\n");
    let yaml = serde_yaml::to_string(doc).map_err(|e| format!("cannot write YAML: {e}"))?;
    out.push_str(&yaml);
    Ok(out)
}

/// What `verge policy push` writes from a file: the document itself, or the `policy` inside what
/// `verge policy get --json` printed, with the version it was read at (the push then replaces
/// that version only).
pub fn pushable(doc: Value) -> (Value, Option<u64>) {
    const ENVELOPE: [&str; 5] = ["version", "policy", "author", "written", "rollback_of"];
    match doc {
        Value::Object(mut map)
            if map.contains_key("policy") && map.keys().all(|k| ENVELOPE.contains(&k.as_str())) =>
        {
            let version = map.get("version").and_then(Value::as_u64);
            (map.remove("policy").unwrap_or(Value::Null), version)
        }
        other => (other, None),
    }
}

/// One difference between two documents: at `path`, `before` became `after` (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where, as `routes[0].cache.default_ttl`.
    pub path: String,
    /// The value in the first document.
    pub before: Option<Value>,
    /// The value in the second document.
    pub after: Option<Value>,
}

/// Every leaf that differs between `a` and `b`: objects key by key, arrays item by item.
pub fn diff(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    diff_at(String::new(), Some(a), Some(b), &mut out);
    out
}

fn diff_at(path: String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                diff_at(child(k), x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                diff_at(format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        _ if a == b => {}
        _ => out.push(Change {
            path: if path.is_empty() {
                "(document)".into()
            } else {
                path
            },
            before: a.cloned(),
            after: b.cloned(),
        }),
    }
}

/// `verge policy diff A B` for people: `~` changed, `+` only in B, `-` only in A.
pub fn diff_text(from: u64, to: u64, changes: &[Change]) -> String {
    if changes.is_empty() {
        return format!("policy versions {from} and {to} are identical\n");
    }
    let mut out = format!(
        "policy version {from} -> {to}: {} change(s)\n",
        changes.len()
    );
    for c in changes {
        let _ = match (&c.before, &c.after) {
            (Some(x), Some(y)) => writeln!(out, "~ {}: {x} -> {y}", c.path),
            (None, Some(y)) => writeln!(out, "+ {}: {y}", c.path),
            (Some(x), None) => writeln!(out, "- {}: {x}", c.path),
            (None, None) => Ok(()),
        };
    }
    out
}

/// `verge policy diff A B --json`.
pub fn diff_json(from: u64, to: u64, changes: &[Change]) -> Value {
    json!({
        "from": from,
        "to": to,
        "changes": changes
            .iter()
            .map(|c| json!({"path": c.path, "before": c.before, "after": c.after}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn envelope() -> Value {
        json!({
            "version": 3,
            "written_ms": 1_796_379_454_000u64,
            "author": "ops",
            "rollback_of": 1,
            "policy": {
                "pools": {"o": {"backends": ["127.0.0.1:9000"]}},
                "routes": [{"hosts": ["*"], "pool": "o", "cache": {"default_ttl": "300s"}}],
            },
        })
    }

    #[test]
    fn durations_and_times_read_as_people_write_them() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12s");
        assert_eq!(duration(250_000), "4m10s");
        assert_eq!(duration(3_600_000), "1h");
        assert_eq!(duration(183_600_000), "2d3h");
        assert_eq!(
            Times::Relative { now_ms: 20_000 }.at(8_000),
            "12s ago".to_string()
        );
        assert_eq!(Times::Absolute.at(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn json_for_scripts_has_no_epoch_milliseconds() {
        let v = readable_times(
            &json!({"nodes": [{"reported_ms": 0, "report_age_ms": 1500, "seq": 2}]}),
        );
        assert_eq!(
            v,
            json!({"nodes": [{"reported": "1970-01-01T00:00:00Z", "report_age_seconds": 1.5, "seq": 2}]})
        );
    }

    #[test]
    fn tables_align_their_columns() {
        let t = table(
            &["NODE", "STATE"],
            &[
                vec!["a-long-name".into(), "alive".into()],
                vec!["b".into(), "dead".into()],
            ],
        );
        assert_eq!(
            t,
            "NODE         STATE\na-long-name  alive\nb            dead\n"
        );
    }

    #[test]
    fn policy_get_output_pushes_back_as_the_same_document() {
        let body = envelope();
        let yaml = policy_yaml(&body, Times::Absolute).unwrap();
        assert!(
            yaml.starts_with(
                "# verge policy version 3, written 2026-12-04T10:17:34Z by ops (rollback of 1)\n"
            ),
            "{yaml}"
        );
        let parsed = Policy::document_from_text(&yaml).unwrap();
        assert_eq!(pushable(parsed), (body["policy"].clone(), None));
        let printed = serde_json::to_string_pretty(&readable_times(&body)).unwrap();
        let parsed = Policy::document_from_text(&printed).unwrap();
        assert_eq!(pushable(parsed), (body["policy"].clone(), Some(3)));
        // a plain document is taken as it is
        assert_eq!(pushable(body["policy"].clone()).0, body["policy"]);
    }

    #[test]
    fn diff_names_each_changed_leaf() {
        let a = envelope()["policy"].clone();
        let mut b = a.clone();
        b["routes"][0]["cache"]["default_ttl"] = json!("60s");
        b["pools"]["o"]["backends"] = json!(["127.0.0.1:9000", "127.0.0.1:9001"]);
        b["pools"]["o"]["lb"] = json!("ketama");
        let changes = diff(&a, &b);
        let text = diff_text(1, 2, &changes);
        assert_eq!(
            text,
            "policy version 1 -> 2: 3 change(s)\n\
             + pools.o.backends[1]: \"127.0.0.1:9001\"\n\
             + pools.o.lb: \"ketama\"\n\
             ~ routes[0].cache.default_ttl: \"300s\" -> \"60s\"\n"
        );
        assert_eq!(
            diff_text(1, 1, &diff(&a, &a)),
            "policy versions 1 and 1 are identical\n"
        );
        assert_eq!(
            diff_json(1, 2, &changes)["changes"][2]["after"],
            json!("60s")
        );
    }
}
