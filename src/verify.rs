//! `verge verify URL... (--node ADMIN... | --from-control)`: a fleet freshness check. Asks each
//! node's admin listener what it would serve for each URL (`/cache/HOST/PATH?QUERY`: stored
//! version, age, what its applied invalidations say, its control-plane position), without any
//! node fetching from the origin, and names the nodes that would serve another version than
//! the expected one: the one given, the origin's current `ETag`, or the one most nodes serve.
//! With `--every` it runs until stopped, exporting the divergent nodes per class.

use crate::verify_metrics::VerifyMetrics;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use verge::cache::invalidation::version_of;
use verge::control::client::ControlClient;

/// One node's answer for one URL, judged.
struct Answer {
    url: String,
    node: String,
    /// The class the nodes' routes give the URL (`none` without one).
    class: String,
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

/// Where the nodes come from, where the truth comes from, and how often.
pub struct VerifyArgs {
    /// The URLs (`host/path?query`).
    pub urls: Vec<String>,
    /// Admin listeners given with `--node`.
    pub nodes: Vec<String>,
    /// The control plane, to take every node it knows from (`--from-control`).
    pub control: Option<ControlClient>,
    /// The origin to take each URL's current `ETag` from (`--origin http://host:port`).
    pub origin: Option<String>,
    /// The version every node should serve (`--expected-version`).
    pub expected_version: Option<String>,
    /// Print JSON.
    pub json: bool,
    /// Run every this long until stopped (`--every`).
    pub every: Option<Duration>,
    /// Serve the metrics here (`--metrics-listen`, with `--every`).
    pub metrics_listen: Option<SocketAddr>,
}

/// A node to ask: its name as printed, and its admin listener if known.
struct Node {
    name: String,
    admin: Option<String>,
}

/// The nodes to ask: the `--node` ones, then every node the control plane lists.
async fn nodes_to_ask(args: &VerifyArgs) -> Result<Vec<Node>, String> {
    let mut out: Vec<Node> = args
        .nodes
        .iter()
        .map(|a| Node {
            name: a.clone(),
            admin: Some(a.clone()),
        })
        .collect();
    if let Some(c) = &args.control {
        let a = c
            .call(reqwest::Method::GET, "/v1/nodes", None, None)
            .await
            .map_err(|e| e.to_string())?;
        if a.status != 200 {
            return Err(format!(
                "control plane answered {} to /v1/nodes: {}",
                a.status, a.body
            ));
        }
        for n in a.body["nodes"].as_array().into_iter().flatten() {
            out.push(Node {
                name: n["node"].as_str().unwrap_or("").to_string(),
                admin: n["admin"].as_str().map(str::to_string),
            });
        }
    }
    Ok(out)
}

/// The origin's current version of `url` (its `ETag`), asked at `origin` with the URL's host.
async fn origin_version(
    client: &reqwest::Client,
    origin: &str,
    url: &str,
) -> Result<String, String> {
    let target = url
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = match target.find('/') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, "/"),
    };
    let resp = client
        .get(format!("{}{path}", origin.trim_end_matches('/')))
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .map_err(|e| format!("origin {origin}: {e}"))?;
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    etag.ok_or_else(|| {
        format!(
            "origin answered {} for {url} without an ETag",
            resp.status()
        )
    })
}

/// One round: every URL asked of every node, judged.
async fn round(client: &reqwest::Client, args: &VerifyArgs) -> Result<Vec<Answer>, String> {
    let nodes = nodes_to_ask(args).await?;
    if nodes.is_empty() {
        return Err("no node to ask".into());
    }
    let mut answers = Vec::new();
    for url in &args.urls {
        let mut docs = Vec::with_capacity(nodes.len());
        for n in &nodes {
            docs.push(match &n.admin {
                Some(a) => ask(client, a, url).await,
                None => Value::Null,
            });
        }
        let given = match (&args.expected_version, &args.origin) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(o)) => Some(origin_version(client, o, url).await?),
            (None, None) => None,
        };
        let refs: Vec<&Value> = docs.iter().collect();
        let want = expected(given.as_deref(), &refs).map(str::to_string);
        // the class the nodes' routes give the URL (labels stay class names)
        let class = docs
            .iter()
            .find_map(|d| d["class"].as_str())
            .unwrap_or("none")
            .to_string();
        for (node, doc) in nodes.iter().zip(docs) {
            let divergent = match &node.admin {
                None => Some("reports no admin address".into()),
                Some(_) => divergence(&doc, want.as_deref()),
            };
            answers.push(Answer {
                url: url.clone(),
                node: node.name.clone(),
                class: class.clone(),
                divergent,
                doc,
            });
        }
    }
    Ok(answers)
}

/// Print one round's answers (a table, or JSON); the number that diverge.
fn print(answers: &[Answer], json_out: bool) -> usize {
    let divergent = answers.iter().filter(|a| a.divergent.is_some()).count();
    if json_out {
        let rows: Vec<Value> = answers
            .iter()
            .map(|a| {
                json!({"url": a.url, "node": a.node, "class": a.class, "answer": a.doc,
                       "divergent": a.divergent})
            })
            .collect();
        println!("{}", json!({"divergent": divergent, "answers": rows}));
    } else {
        println!("URL\tNODE\tSERVES\tETAG\tAGE\tSEQ\tVERDICT");
        for a in answers {
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
    divergent
}

/// The nodes with at least one divergent answer, per class of the URLs.
fn divergent_nodes_per_class(answers: &[Answer]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for a in answers {
        let nodes = out.entry(a.class.clone()).or_default();
        if a.divergent.is_some() {
            nodes.insert(a.node.clone());
        }
    }
    out
}

/// Run the check once (exit 1 when a node diverges or cannot be asked, 2 on bad arguments), or
/// with `every` until stopped.
pub fn verify(args: VerifyArgs) -> ExitCode {
    if args.urls.is_empty() || (args.nodes.is_empty() && args.control.is_none()) {
        eprintln!("verge: give at least one URL, and --node or --from-control");
        return ExitCode::from(2);
    }
    if args.metrics_listen.is_some() && args.every.is_none() {
        eprintln!("verge: --metrics-listen goes with --every");
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
    let Some(every) = args.every else {
        return match rt.block_on(round(&client, &args)) {
            Ok(answers) if print(&answers, args.json) > 0 => ExitCode::from(1),
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verge: {e}");
                ExitCode::from(1)
            }
        };
    };
    rt.block_on(async {
        let metrics = match VerifyMetrics::new() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("verge: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(addr) = args.metrics_listen {
            if let Err(e) = metrics.serve(addr).await {
                eprintln!("verge: --metrics-listen {addr}: {e}");
                return ExitCode::from(2);
            }
        }
        loop {
            match round(&client, &args).await {
                Ok(answers) => {
                    print(&answers, args.json);
                    metrics.record(&divergent_nodes_per_class(&answers));
                }
                Err(e) => {
                    eprintln!("verge: {e}");
                    metrics.failed();
                }
            }
            tokio::time::sleep(every).await;
        }
    })
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
