//! The operator subcommands (`verge policy`, `verge purge`, `verge nodes`): calls to `verge control`.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use verge::config::secret::{read_secret, SecretSource};
use verge::config::Policy;
use verge::control::client::{exit_code, Answer, ControlClient};

/// Where the control plane is. The token comes from `--token-file` or `VERGE_TOKEN`, never from
/// the command line itself.
#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Control-plane URL (or VERGE_CONTROL_URL).
    #[arg(long, global = true)]
    control: Option<String>,
    /// File holding the bearer token (or set VERGE_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyAction {
    /// Print the current policy document and its version.
    Get,
    /// Validate FILE locally, then write it as the next version (compare-and-set).
    Push {
        file: PathBuf,
        /// The version you expect to replace; default: the current one, read just before.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// List the versions kept.
    History,
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

/// Print an answer (pretty JSON) and turn its status into the exit code.
fn finish(answer: &Answer) -> ExitCode {
    let text = serde_json::to_string_pretty(&answer.body).unwrap_or_default();
    if (200..300).contains(&answer.status) {
        if !answer.body.is_null() {
            println!("{text}");
        }
    } else {
        eprintln!("verge: control plane answered {}: {text}", answer.status);
    }
    ExitCode::from(exit_code(answer.status))
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("verge: {message}");
    ExitCode::from(code)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

/// The client and a runtime to drive it, or the exit code for a bad setup.
fn connect(args: &ControlArgs) -> Result<(ControlClient, tokio::runtime::Runtime), ExitCode> {
    client(args)
        .and_then(|c| runtime().map(|r| (c, r)))
        .map_err(|e| fail(e, 2))
}

/// `verge policy ...`
pub fn policy(args: &ControlArgs, action: PolicyAction) -> ExitCode {
    let (c, rt) = match connect(args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let answer = match action {
            PolicyAction::Get => c.call(Method::GET, "/v1/policy", None, None).await,
            PolicyAction::History => c.call(Method::GET, "/v1/policy/history", None, None).await,
            PolicyAction::Push { file, if_match } => {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => return fail(format!("cannot read {}: {e}", file.display()), 2),
                };
                let doc = match Policy::document_from_text(&text) {
                    Ok(d) => d,
                    Err(e) => return fail(format!("{}: {e}", file.display()), 2),
                };
                if let Err(e) = Policy::from_json(&doc) {
                    return fail(format!("{}: {e}", file.display()), 2);
                }
                let expected = match if_match {
                    Some(v) => v,
                    None => match c.policy_version().await {
                        Ok(a) if a.status == 200 => a.body["version"].as_u64().unwrap_or(0),
                        Ok(a) => return finish(&a),
                        Err(e) => return fail(e, 1),
                    },
                };
                c.call(Method::PUT, "/v1/policy", Some(&doc), Some(expected))
                    .await
            }
            PolicyAction::Rollback { version } => {
                let current = match c.policy_version().await {
                    Ok(a) if a.status == 200 => a.body["version"].as_u64().unwrap_or(0),
                    Ok(a) => return finish(&a),
                    Err(e) => return fail(e, 1),
                };
                let body = json!({ "version": version });
                c.call(
                    Method::POST,
                    "/v1/policy/rollback",
                    Some(&body),
                    Some(current),
                )
                .await
            }
        };
        match answer {
            Ok(a) => finish(&a),
            Err(e) => fail(e, 1),
        }
    })
}

/// `verge purge KIND TARGET... [--soft]`
pub fn purge(
    args: &ControlArgs,
    kind: PurgeKind,
    targets: Vec<String>,
    soft: bool,
    confirm_all: bool,
) -> ExitCode {
    let (c, rt) = match connect(args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut body = json!({ "kind": kind.as_str(), "soft": soft });
    match kind {
        PurgeKind::All => {
            if !confirm_all {
                return fail("purging everything needs --confirm-all", 2);
            }
            body["confirm"] = Value::from("all");
        }
        _ if targets.is_empty() => return fail("give at least one target", 2),
        _ => body["targets"] = Value::from(targets),
    }
    rt.block_on(async move {
        match c
            .call(Method::POST, "/v1/invalidations", Some(&body), None)
            .await
        {
            Ok(a) => finish(&a),
            Err(e) => fail(e, 1),
        }
    })
}

/// `verge nodes`
pub fn nodes(args: &ControlArgs) -> ExitCode {
    let (c, rt) = match connect(args) {
        Ok(x) => x,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match c.call(Method::GET, "/v1/nodes", None, None).await {
            Ok(a) => finish(&a),
            Err(e) => fail(e, 1),
        }
    })
}
