//! `verge reload` and `verge upgrade`: signal the running node named by the config's
//! `server.pid_file` (SIGHUP: reload the file in place; SIGUSR2: start the binary on disk and
//! hand the listening sockets to it), then follow the outcome on its admin listener.

use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use verge::config::Config;

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("verge: {message}");
    ExitCode::from(code)
}

/// The config (to find the pid file and the admin listener); exit 2 with its errors.
fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{e}");
        eprintln!(
            "verge: {} is not valid; nothing was signalled",
            path.display()
        );
        ExitCode::from(2)
    })
}

fn read_pid(pid_file: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read the pid file {pid_file}: {e} (is verge running?)"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{pid_file} does not hold a process id: {:?}", text.trim()))
}

/// Send `signal` (a `kill` name such as `HUP`, or `0` to test) to `pid`, with the shell's
/// `kill` (a builtin of every POSIX shell, so no package is needed for it).
fn send(signal: &'static str, pid: u32) -> Result<(), String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot signal process {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn alive(pid: u32) -> bool {
    send("0", pid).is_ok()
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("cannot start a runtime: {e}"), 1))
}

async fn status(client: &reqwest::Client, admin: SocketAddr) -> Option<Value> {
    let r = client
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

fn http_client() -> Result<reqwest::Client, ExitCode> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| fail(format!("cannot build an HTTP client: {e}"), 1))
}

/// `verge reload`: SIGHUP, then wait for the node's `/status` to show the attempt. Exit 0 when
/// applied, 1 when refused (its errors printed) or unknown, 2 when the file itself is invalid.
pub fn reload(path: &Path, timeout: Duration) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let pid = match read_pid(&config.server.pid_file) {
        Ok(p) => p,
        Err(e) => return fail(e, 1),
    };
    let (rt, client) = match runtime().and_then(|rt| http_client().map(|c| (rt, c))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let admin = config.admin.listen;
    rt.block_on(async move {
        let attempts = |s: &Value| s["reload"]["attempts"].as_u64();
        let before = status(&client, admin).await.as_ref().and_then(attempts);
        if let Err(e) = send("HUP", pid) {
            return fail(e, 1);
        }
        let Some(before) = before else {
            println!("sent SIGHUP to {pid}; its admin listener {admin} did not answer, so the outcome is unknown (see its log)");
            return ExitCode::from(1);
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(s) = status(&client, admin).await else {
                continue;
            };
            if attempts(&s).is_some_and(|n| n > before) {
                let last = &s["reload"]["last"];
                return if last["outcome"] == "success" {
                    println!(
                        "reloaded: process {pid} serves config {}",
                        last["version"].as_str().unwrap_or("?")
                    );
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "verge: reload refused ({}); process {pid} keeps its old config:",
                        last["outcome"].as_str().unwrap_or("?")
                    );
                    for line in last["errors"].as_array().into_iter().flatten() {
                        eprintln!("  {}", line.as_str().unwrap_or_default());
                    }
                    ExitCode::from(1)
                };
            }
        }
        fail(
            format!("sent SIGHUP to {pid} but {admin}/status showed no reload within {timeout:?}"),
            1,
        )
    })
}

/// `verge upgrade`: SIGUSR2, then wait until a new process has taken over (the pid file names
/// it and its `/status` says ready). The old process drains and exits by itself.
pub fn upgrade(path: &Path, timeout: Duration) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) =
        verge::config::certificates::check_certificates(&config, std::time::SystemTime::now())
    {
        eprint!("{e}");
        return fail(
            format!("{} is not valid; nothing was signalled", path.display()),
            2,
        );
    }
    let pid_file = config.server.pid_file.clone();
    let old = match read_pid(&pid_file) {
        Ok(p) => p,
        Err(e) => return fail(e, 1),
    };
    if let Err(e) = send("USR2", old) {
        return fail(e, 1);
    }
    let (rt, client) = match runtime().and_then(|rt| http_client().map(|c| (rt, c))) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let admin = config.admin.listen;
    rt.block_on(async move {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let new = match read_pid(&pid_file) {
                Ok(p) if p != old && alive(p) => p,
                _ if !alive(old) => {
                    return fail(format!("process {old} exited and no new process took over"), 1)
                }
                _ => continue,
            };
            let Some(s) = status(&client, admin).await else {
                continue;
            };
            if s["pid"].as_u64() == Some(u64::from(new)) && s["ready"] == true {
                println!("upgraded: process {new} serves; process {old} drains and exits");
                return ExitCode::SUCCESS;
            }
        }
        fail(
            format!(
                "no new process took over within {timeout:?}; process {old} keeps serving (see its log)"
            ),
            1,
        )
    })
}
