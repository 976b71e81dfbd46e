//! `verge verify URL... --node ADMIN...`: a fleet freshness check. Asks each node's admin
//! listener what it would serve for each URL (`/cache/HOST/PATH?QUERY`: stored version, age,
//! what its applied invalidations say, its control-plane position), without any node fetching
//! from the origin, and names the nodes that would serve another version than the expected one.

use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;
use verge::cache::invalidation::version_of;

/// One node's answer for one URL, judged.
struct Answer {
    url: String,
    node: String,
    /// What the node said (`Value::Null` when it could not be asked).
    doc: Value,
    /// Why it diverges, if it does.
    divergent: Option<String>,
}

/// The version a node would serve from its cache, if it would serve one (a miss or an entry
/// its invalidations refuse is fetched anew, so it is not behind).
fn served_version(doc: &Value) -> Option<Option<&str>> {
    match doc["serves"].as_str() {
        Some("fresh" | "stale") => Some(doc["etag"].as_str().map(version_of)),
        _ => None,
    }
}

/// The version to hold nodes to: the one given, else the one most nodes serve.
fn expected<'a>(given: Option<&'a str>, docs: &[&'a Value]) -> Option<&'a str> {
    if let Some(v) = given {
        return Some(version_of(v));
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for v in docs.iter().filter_map(|d| served_version(d).flatten()) {
        match counts.iter_mut().find(|(c, _)| *c == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map(|(v, _)| v)
}

/// Why `doc` diverges from `expected`, if it does.
fn divergence(doc: &Value, expected: Option<&str>) -> Option<String> {
    if doc.is_null() {
        return Some("unreachable".into());
    }
    match (served_version(doc), expected) {
        (Some(Some(v)), Some(e)) if v != e => Some(format!("serves version {v}, not {e}")),
        (Some(None), Some(e)) => Some(format!("serves an entry without ETag, not {e}")),
        _ => None,
    }
}

async fn ask(client: &reqwest::Client, node: &str, url: &str) -> Value {
    let target = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let Ok(resp) = client
        .get(format!("http://{node}/cache/{target}"))
        .send()
        .await
    else {
        return Value::Null;
    };
    resp.json::<Value>().await.unwrap_or(Value::Null)
}

/// Run the check; exit 1 when a node diverges (or cannot be asked), 2 on bad arguments.
pub fn verify(
    urls: Vec<String>,
    nodes: Vec<String>,
    expected_version: Option<String>,
    json_out: bool,
) -> ExitCode {
    if urls.is_empty() || nodes.is_empty() {
        eprintln!("verge: give at least one URL and one --node");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("verge: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("verge: {e}");
            return ExitCode::from(1);
        }
    };
    let mut answers = Vec::new();
    for url in &urls {
        let docs = rt.block_on(ask_all(&client, &nodes, url));
        let refs: Vec<&Value> = docs.iter().collect();
        let want = expected(expected_version.as_deref(), &refs).map(str::to_string);
        for (node, doc) in nodes.iter().zip(docs.iter()) {
            answers.push(Answer {
                url: url.clone(),
                node: node.clone(),
                divergent: divergence(doc, want.as_deref()),
                doc: doc.clone(),
            });
        }
    }
    let divergent = answers.iter().filter(|a| a.divergent.is_some()).count();
    if json_out {
        let rows: Vec<Value> = answers
            .iter()
            .map(|a| {
                json!({"url": a.url, "node": a.node, "answer": a.doc,
                            "divergent": a.divergent})
            })
            .collect();
        println!("{}", json!({"divergent": divergent, "answers": rows}));
    } else {
        println!("URL\tNODE\tSERVES\tETAG\tAGE\tSEQ\tVERDICT");
        for a in &answers {
            let d = &a.doc;
            let field = |v: &Value| match v {
                Value::Null => "-".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                a.url,
                a.node,
                field(&d["serves"]),
                field(&d["etag"]),
                field(&d["age"]),
                field(&d["control"]["invalidation_seq"]),
                a.divergent.as_deref().unwrap_or("ok")
            );
        }
        if divergent > 0 {
            eprintln!("verge: {divergent} answer(s) diverge");
        }
    }
    if divergent > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Ask every node about `url`, one after the other.
async fn ask_all(client: &reqwest::Client, nodes: &[String], url: &str) -> Vec<Value> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(ask(client, n, url).await);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_held_to_the_given_or_the_most_served_version() {
        let fresh = |etag: &str| json!({"serves": "fresh", "etag": etag});
        let (a, b, c) = (fresh("\"v2\""), fresh("W/\"v2\""), fresh("\"v1\""));
        let miss = json!({"serves": "miss"});
        let refetch = json!({"serves": "refetch", "etag": "\"v0\""});
        let docs = [&a, &b, &c, &miss, &refetch];
        assert_eq!(expected(None, &docs), Some("v2"));
        assert_eq!(expected(Some("\"v1\""), &docs), Some("v1"));
        assert_eq!(divergence(&a, Some("v2")), None);
        assert_eq!(divergence(&b, Some("v2")), None);
        assert_eq!(
            divergence(&c, Some("v2")).as_deref(),
            Some("serves version v1, not v2")
        );
        // a miss or a refused entry is fetched anew: not behind
        assert_eq!(divergence(&miss, Some("v2")), None);
        assert_eq!(divergence(&refetch, Some("v2")), None);
        assert_eq!(
            divergence(&Value::Null, Some("v2")).as_deref(),
            Some("unreachable")
        );
    }
}
