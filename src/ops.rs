//! The operator subcommands (`verge policy`, `verge purge`, `verge nodes`): calls to `verge control`,
//! printed as tables for people (see `control::cli_output`) or as JSON with `--json`.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use verge::config::secret::{read_secret, SecretSource};
use verge::config::units::parse_duration;
use verge::config::Policy;
use verge::control::cli_output::{
    diff, diff_json, diff_text, history_table, nodes_table, policy_yaml, pushable, readable_times,
    Times,
};
use verge::control::client::{exit_code, Answer, ControlClient};
use verge::control::wire::unix_ms;

/// The exit code of `verge purge --wait` when a live node has not applied the purge in time.
const NOT_APPLIED: u8 = 6;

/// Where the control plane is, and how to print. The token comes from `--token-file` or
/// `VERGE_TOKEN`, never from the command line itself.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Control-plane URL (or VERGE_CONTROL_URL).
    #[arg(long, global = true)]
    control: Option<String>,
    /// File holding the bearer token (or set VERGE_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON for scripts (times in RFC 3339) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Print the current policy (or VERSION) as YAML that `policy push` takes back as it is.
    Get { version: Option<u64> },
    /// Validate FILE locally, then write it as the next version (compare-and-set). The
    /// document in force already writes nothing.
    Push {
        file: PathBuf,
        /// The version you expect to replace; default: the version in a `policy get --json`
        /// file, else the current one, read just before.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// List the versions kept.
    History,
    /// Show what changed from version FROM to version TO (default: the current one).
    Diff { from: u64, to: Option<u64> },
    /// Write an old version's document again as a new version.
    Rollback { version: u64 },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PurgeKind {
    Url,
    Prefix,
    Host,
    Tag,
    All,
}

impl PurgeKind {
    fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Url => "url",
            PurgeKind::Prefix => "prefix",
            PurgeKind::Host => "host",
            PurgeKind::Tag => "tag",
            PurgeKind::All => "all",
        }
    }
}

/// The control-plane client `args` name (for `verge verify --from-control`).
pub fn control_client(args: &ControlArgs) -> Result<ControlClient, String> {
    client(args)
}

/// Whether `--json` was given.
pub fn wants_json(args: &ControlArgs) -> bool {
    args.json
}

fn client(args: &ControlArgs) -> Result<ControlClient, String> {
    let base = args
        .control
        .clone()
        .or_else(|| std::env::var("VERGE_CONTROL_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:9900".into());
    let token = match &args.token_file {
        Some(f) => {
            Some(read_secret(SecretSource::File(f)).map_err(|e| format!("--token-file: {e}"))?)
        }
        // unset (or blank): no token
        None => read_secret(SecretSource::Env("VERGE_TOKEN")).ok(),
    };
    ControlClient::new(&base, token).map_err(|e| e.to_string())
}

/// How this run prints: JSON, or tables with times relative on a terminal and RFC 3339
/// otherwise.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
    times: Times,
}

impl Out {
    fn of(args: &ControlArgs) -> Out {
        let times = if std::io::stdout().is_terminal() {
            Times::Relative {
                now_ms: unix_ms(SystemTime::now()),
            }
        } else {
            Times::Absolute
        };
        Out {
            json: args.json,
            times,
        }
    }

    fn json(self, v: &Value) {
        println!(
            "{}",
            serde_json::to_string_pretty(&readable_times(v)).unwrap_or_default()
        );
    }
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("verge: {message}");
    ExitCode::from(code)
}

/// A refusal from the control plane on stderr (its error, the current version on a conflict,
/// every validation error), and its exit code.
fn refused(a: &Answer) -> ExitCode {
    let mut msg = format!("control plane answered {}", a.status);
    match a.body["error"].as_str() {
        Some(e) => msg.push_str(&format!(": {e}")),
        None if !a.body.is_null() => msg.push_str(&format!(": {}", a.body)),
        None => {}
    }
    if let Some(v) = a.body["current_version"].as_u64() {
        msg.push_str(&format!(" (current version {v})"));
    }
    for e in a.body["errors"].as_array().into_iter().flatten() {
        msg.push_str(&format!(
            "\n  {}: {}",
            e["path"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        ));
    }
    fail(msg, exit_code(a.status))
}

/// One call whose answer must be a success: its body, or the exit code already reported.
async fn call(
    c: &ControlClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
    if_match: Option<u64>,
) -> Result<Value, ExitCode> {
    match c.call(method, path, body, if_match).await {
        Ok(a) if (200..300).contains(&a.status) => Ok(a.body),
        Ok(a) => Err(refused(&a)),
        Err(e) => Err(fail(e, 1)),
    }
}

async fn get(c: &ControlClient, path: &str) -> Result<Value, ExitCode> {
    call(c, Method::GET, path, None, None).await
}

fn version_path(version: Option<u64>) -> String {
    version.map_or_else(
        || "/v1/policy".to_string(),
        |v| format!("/v1/policy/versions/{v}"),
    )
}

/// Run `work` on a small runtime with a client for the control plane.
fn run<F, Fut>(args: &ControlArgs, work: F) -> ExitCode
where
    F: FnOnce(ControlClient, Out) -> Fut,
    Fut: std::future::Future<Output = Result<(), ExitCode>>,
{
    let c = match client(args) {
        Ok(c) => c,
        Err(e) => return fail(e, 2),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start a runtime: {e}"), 1),
    };
    let out = Out::of(args);
    match rt.block_on(work(c, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// `verge policy ...`
pub fn policy(args: &ControlArgs, action: PolicyAction) -> ExitCode {
    run(args, |c, out| async move {
        match action {
            PolicyAction::Get { version } => {
                let body = get(&c, &version_path(version)).await?;
                if out.json {
                    out.json(&body);
                } else {
                    print!("{}", policy_yaml(&body, out.times).map_err(|e| fail(e, 1))?);
                }
            }
            PolicyAction::History => {
                let body = get(&c, "/v1/policy/history").await?;
                if out.json {
                    out.json(&body);
                } else {
                    print!("{}", history_table(&body, out.times));
                }
            }
            PolicyAction::Diff { from, to } => {
                let a = get(&c, &version_path(Some(from))).await?;
                let b = get(&c, &version_path(to)).await?;
                let to = b["version"].as_u64().unwrap_or(0);
                let changes = diff(&a["policy"], &b["policy"]);
                if out.json {
                    out.json(&diff_json(from, to, &changes));
                } else {
                    print!("{}", diff_text(from, to, &changes));
                }
            }
            PolicyAction::Push { file, if_match } => push(&c, out, &file, if_match).await?,
            PolicyAction::Rollback { version } => {
                let current = get(&c, "/v1/policy").await?["version"]
                    .as_u64()
                    .unwrap_or(0);
                let body = json!({ "version": version });
                let answer = call(
                    &c,
                    Method::POST,
                    "/v1/policy/rollback",
                    Some(&body),
                    Some(current),
                )
                .await?;
                written(out, &answer, &format!(" (rollback of {version})"));
            }
        }
        Ok(())
    })
}

async fn push(
    c: &ControlClient,
    out: Out,
    file: &std::path::Path,
    if_match: Option<u64>,
) -> Result<(), ExitCode> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(format!("cannot read {}: {e}", file.display()), 2))?;
    let doc = Policy::document_from_text(&text)
        .map_err(|e| fail(format!("{}: {e}", file.display()), 2))?;
    let (doc, read_at) = pushable(doc);
    Policy::from_json(&doc).map_err(|e| fail(format!("{}: {e}", file.display()), 2))?;
    let expected = match if_match.or(read_at) {
        Some(v) => v,
        None => get(c, "/v1/policy").await?["version"].as_u64().unwrap_or(0),
    };
    let answer = call(c, Method::PUT, "/v1/policy", Some(&doc), Some(expected)).await?;
    written(out, &answer, "");
    Ok(())
}

/// What a policy write did: a new version, or nothing when the document was in force already.
fn written(out: Out, answer: &Value, note: &str) {
    if out.json {
        return out.json(answer);
    }
    let v = answer["version"].as_u64().unwrap_or(0);
    if answer["unchanged"] == json!(true) {
        println!("policy unchanged: version {v} is already this document; nothing was written");
    } else {
        println!("policy version {v} written{note}");
    }
}

/// How `verge purge` purges.
pub struct PurgeFlags {
    /// Mark stale instead of removing.
    pub soft: bool,
    /// `--confirm-all`, which purging everything needs.
    pub confirm_all: bool,
    /// The origin object's new ETag (`--expected-version`).
    pub expected_version: Option<String>,
    /// Whether and how to stage it.
    pub stages: Stages,
}

/// How `verge purge` stages a purge: `--wave`, `--hold`, `--ack-timeout`, `--at-once`.
pub struct Stages {
    /// One wave each: `10%` or `node-a,node-b`.
    pub waves: Vec<String>,
    /// After each acknowledged wave.
    pub hold: Option<String>,
    /// For each wave's acknowledgements.
    pub ack_timeout: Option<String>,
    /// `all` at once, not staged.
    pub at_once: bool,
}

impl Stages {
    /// The staged-purge body for `kind`, or `None` when the purge goes to every node at once.
    fn body(
        &self,
        kind: PurgeKind,
        targets: &[String],
        soft: bool,
    ) -> Result<Option<Value>, String> {
        let asked = !self.waves.is_empty() || self.hold.is_some() || self.ack_timeout.is_some();
        let staged = match kind {
            PurgeKind::All => !self.at_once,
            PurgeKind::Host | PurgeKind::Prefix => asked,
            PurgeKind::Url | PurgeKind::Tag if asked => {
                return Err("only all, host and prefix purges are staged".into())
            }
            PurgeKind::Url | PurgeKind::Tag => false,
        };
        if !staged {
            if asked {
                return Err(
                    "--at-once sends the purge to every node: no --wave, --hold or --ack-timeout"
                        .into(),
                );
            }
            return Ok(None);
        }
        let target = match (kind, targets) {
            (PurgeKind::All, []) => String::new(),
            (PurgeKind::All, _) => return Err("purge all takes no target".into()),
            (_, [one]) => one.clone(),
            _ => return Err("a staged purge has one target".into()),
        };
        let mut body = json!({"kind": kind.as_str(), "target": target, "soft": soft});
        if !self.waves.is_empty() {
            let waves: Vec<Value> = self
                .waves
                .iter()
                .map(|w| match w.trim() {
                    share if share.ends_with('%') => Value::from(share),
                    ids => Value::from(ids.split(',').map(str::trim).collect::<Vec<_>>()),
                })
                .collect();
            body["waves"] = Value::from(waves);
        }
        if let Some(h) = &self.hold {
            body["hold"] = Value::from(h.as_str());
        }
        if let Some(t) = &self.ack_timeout {
            body["ack_timeout"] = Value::from(t.as_str());
        }
        Ok(Some(body))
    }
}

#[derive(Subcommand, Debug)]
pub enum StagedAction {
    /// Show one staged purge, wave by wave.
    Show { id: u64 },
    /// Hold a staged purge at its current wave.
    Pause { id: u64 },
    /// Go on (a stalled one sends its next wave without the missing acknowledgements).
    Resume { id: u64 },
    /// Stop for good: the waves not sent never will be.
    Abort { id: u64 },
}

/// One staged purge for people: a line, then a line per wave.
fn staged_text(p: &Value) -> String {
    let target = p["target"].as_str().unwrap_or("");
    let mut out = format!(
        "staged purge {}: {}{}{} {}, wave {} of {}, hold {}s\n",
        p["id"],
        p["kind"].as_str().unwrap_or(""),
        if target.is_empty() { "" } else { " " },
        target,
        p["state"].as_str().unwrap_or(""),
        p["wave"],
        p["waves"].as_array().map_or(0, Vec::len),
        p["hold_secs"],
    );
    for w in p["waves"].as_array().into_iter().flatten() {
        let nodes = match &w["nodes"] {
            Value::Array(ids) => ids
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            _ => "every other node".into(),
        };
        let seq = w["seq"]
            .as_u64()
            .map_or(String::new(), |s| format!(" seq {s}"));
        let pending: Vec<&str> = w["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let pending = if pending.is_empty() {
            String::new()
        } else {
            format!(", not yet applied by {}", pending.join(", "))
        };
        out.push_str(&format!(
            "  wave {}: {} ({}{seq}{pending})\n",
            w["wave"],
            nodes,
            w["state"].as_str().unwrap_or("")
        ));
    }
    if let Some(e) = p["error"].as_str() {
        out.push_str(&format!("  last error: {e}\n"));
    }
    out
}

/// `verge staged [show|pause|resume|abort ID]`
pub fn staged(args: &ControlArgs, action: Option<StagedAction>) -> ExitCode {
    run(args, |c, out| async move {
        let answer = match action {
            None => get(&c, "/v1/staged-purges").await?,
            Some(StagedAction::Show { id }) => get(&c, &format!("/v1/staged-purges/{id}")).await?,
            Some(StagedAction::Pause { id }) => op(&c, id, "pause").await?,
            Some(StagedAction::Resume { id }) => op(&c, id, "resume").await?,
            Some(StagedAction::Abort { id }) => op(&c, id, "abort").await?,
        };
        if out.json {
            out.json(&answer);
        } else if let Some(list) = answer["staged_purges"].as_array() {
            if list.is_empty() {
                println!("no staged purge");
            }
            list.iter().for_each(|p| print!("{}", staged_text(p)));
        } else {
            print!("{}", staged_text(&answer));
        }
        Ok(())
    })
}

async fn op(c: &ControlClient, id: u64, op: &str) -> Result<Value, ExitCode> {
    let path = format!("/v1/staged-purges/{id}/{op}");
    call(c, Method::POST, &path, Some(&json!({})), None).await
}

/// `verge purge KIND TARGET... [--soft] [--expected-version ETAG] [--wait[=TIMEOUT]]`
pub fn purge(
    args: &ControlArgs,
    kind: PurgeKind,
    targets: Vec<String>,
    flags: PurgeFlags,
    wait: Option<String>,
) -> ExitCode {
    let mut body = json!({ "kind": kind.as_str(), "soft": flags.soft });
    if let Some(v) = flags.expected_version {
        body["expected_version"] = Value::from(v);
    }
    match kind {
        PurgeKind::All => {
            if !flags.confirm_all {
                return fail("purging everything needs --confirm-all", 2);
            }
            body["confirm"] = Value::from("all");
        }
        _ if targets.is_empty() => return fail("give at least one target", 2),
        _ => body["targets"] = Value::from(targets.clone()),
    }
    let wait = match wait.as_deref().map(parse_duration).transpose() {
        Ok(w) => w,
        Err(e) => return fail(format!("--wait: {e}"), 2),
    };
    let staged = match flags.stages.body(kind, &targets, flags.soft) {
        Ok(s) => s,
        Err(e) => return fail(e, 2),
    };
    if let Some(mut staged) = staged {
        if wait.is_some() {
            return fail(
                "a staged purge is followed with `verge staged show ID`, not --wait",
                2,
            );
        }
        if matches!(kind, PurgeKind::All) {
            staged["confirm"] = Value::from("all");
        }
        return run(args, |c, out| async move {
            let answer = call(&c, Method::POST, "/v1/staged-purges", Some(&staged), None).await?;
            if out.json {
                out.json(&answer);
            } else {
                print!("{}", staged_text(&answer));
            }
            Ok(())
        });
    }
    run(args, |c, out| async move {
        let mut answer = call(&c, Method::POST, "/v1/invalidations", Some(&body), None).await?;
        let seq = answer["seq"].as_u64().unwrap_or(0);
        let Some(timeout) = wait else {
            if out.json {
                out.json(&answer);
            } else {
                println!("purge accepted as seq {seq}");
            }
            return Ok(());
        };
        let waited = wait_applied(&c, seq, timeout).await.inspect_err(|_| {
            eprintln!("verge: purge seq {seq} was accepted, but the nodes could not be followed");
        })?;
        let pending = waited.pending();
        if out.json {
            answer["wait"] = json!({
                "applied": pending.is_empty(),
                "pending": pending.iter().map(|n| &n["node"]).collect::<Vec<_>>(),
                "dead": waited.dead(),
                "nodes": waited.nodes,
            });
            out.json(&answer);
        } else if pending.is_empty() {
            let live = waited.live();
            match live.len() {
                0 => println!("purge seq {seq} accepted; no live node to wait for"),
                n => println!(
                    "purge seq {seq} applied by every live node ({n}): {}",
                    names(&live)
                ),
            }
            let dead = waited.dead();
            if !dead.is_empty() {
                println!("not waited for (dead): {}", dead.join(", "));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let who: Vec<String> = pending
            .iter()
            .map(|n| {
                format!(
                    "{} ({}, at seq {})",
                    n["node"].as_str().unwrap_or(""),
                    n["state"].as_str().unwrap_or(""),
                    n["seq"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        Err(fail(
            format!(
                "purge seq {seq} not applied within {} by: {}",
                verge::control::cli_output::duration(
                    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
                ),
                who.join(", ")
            ),
            NOT_APPLIED,
        ))
    })
}

/// The nodes as the control plane listed them when the wait ended.
struct Waited {
    seq: u64,
    nodes: Vec<Value>,
}

impl Waited {
    fn live(&self) -> Vec<&Value> {
        self.nodes.iter().filter(|n| n["state"] != "dead").collect()
    }

    fn pending(&self) -> Vec<&Value> {
        self.live()
            .into_iter()
            .filter(|n| n["seq"].as_u64().unwrap_or(0) < self.seq)
            .collect()
    }

    fn dead(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n["state"] == "dead")
            .map(|n| n["node"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn names(nodes: &[&Value]) -> String {
    nodes
        .iter()
        .map(|n| n["node"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Poll the node list until every live (alive or late) node reports `seq` or later, or until
/// `timeout`.
async fn wait_applied(c: &ControlClient, seq: u64, timeout: Duration) -> Result<Waited, ExitCode> {
    let deadline = Instant::now() + timeout;
    loop {
        let body = get(c, "/v1/nodes").await?;
        let waited = Waited {
            seq,
            nodes: body["nodes"].as_array().cloned().unwrap_or_default(),
        };
        if waited.pending().is_empty() || Instant::now() >= deadline {
            return Ok(waited);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `verge nodes`
pub fn nodes(args: &ControlArgs) -> ExitCode {
    run(args, |c, out| async move {
        let body = get(&c, "/v1/nodes").await?;
        if out.json {
            out.json(&body);
        } else {
            print!("{}", nodes_table(&body, out.times));
        }
        Ok(())
    })
}
