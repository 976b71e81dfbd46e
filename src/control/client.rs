//! A small client for the control-plane API, used by the `verge policy|purge|nodes` subcommands.

use serde_json::Value;
use std::time::Duration;

/// Where the control plane is and how to authenticate.
#[derive(Debug, Clone)]
pub struct ControlClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// An answer from the control plane: status and JSON body (Null when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The decoded body.
    pub body: Value,
    /// The `ETag` (the current policy version on policy reads).
    pub etag: Option<String>,
}

/// Why a call could not be made at all.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or reading the answer failed.
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Setup(String),
}

impl ControlClient {
    /// A client for the control plane at `base` (e.g. `http://127.0.0.1:9900`), sending
    /// `token` as a bearer token when given.
    pub fn new(base: &str, token: Option<String>) -> Result<ControlClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(ControlClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// Send one call; any HTTP status is an `Answer`, only transport failures are errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.text().await.map_err(unreachable)?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            etag,
        })
    }

    /// The current policy version (0 before the first).
    pub async fn policy_version(&self) -> Result<Answer, ClientError> {
        self.call(reqwest::Method::GET, "/v1/policy", None, None)
            .await
    }
}

/// The process exit code for an HTTP status: 0 success, 2 refused input (400/404/422/428),
/// 3 conflict (412), 4 authentication or scope (401/403), 5 rate limited (429), 1 otherwise.
pub fn exit_code(status: u16) -> u8 {
    match status {
        200..=299 => 0,
        400 | 404 | 405 | 413 | 422 | 428 => 2,
        412 => 3,
        401 | 403 => 4,
        429 => 5,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_failures_apart() {
        assert_eq!(exit_code(202), 0);
        assert_eq!(exit_code(422), 2);
        assert_eq!(exit_code(412), 3);
        assert_eq!(exit_code(403), 4);
        assert_eq!(exit_code(429), 5);
        assert_eq!(exit_code(503), 1);
    }
}
