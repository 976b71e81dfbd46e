//! Requests through verge with reqwest: one helper sends any method with a Host header and
//! extra fields, and returns what the client got ([`Got`]).

use super::process::Verge;
use std::net::SocketAddr;
use std::time::Duration;

/// A client that never reuses connections across tests and has a short timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// What a client got from verge.
pub struct Got {
    pub status: u16,
    pub cache_status: String,
    pub age: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-origin`: which test origin answered (`""` when none did).
    pub fn origin(&self) -> &str {
        self.header("x-origin").unwrap_or("")
    }
}

/// The `Cache-Status` a response carried (`""` when none).
pub fn cache_status_of(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Send `method path` to `addr` with Host `host` (reqwest's own when `None`) and extra request
/// fields.
pub async fn send(
    addr: SocketAddr,
    method: reqwest::Method,
    host: Option<&str>,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = client().request(method, format!("http://{addr}{path}"));
    if let Some(host) = host {
        req = req.header("host", host);
    }
    for (k, val) in headers {
        req = req.header(*k, *val);
    }
    let r = req.send().await.expect("request");
    let h = r.headers();
    let cache_status = cache_status_of(h);
    let age = h
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let headers = h.clone();
    Got {
        status: r.status().as_u16(),
        cache_status,
        age,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

/// GET `path` for host `c.test` with extra request headers.
pub async fn fetch(v: &Verge, path: &str, headers: &[(&str, &str)]) -> Got {
    fetch_with(v, reqwest::Method::GET, path, headers).await
}

/// Send `method` for `path` to host `c.test` with extra request headers.
pub async fn fetch_with(
    v: &Verge,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    send(v.http, method, Some("c.test"), path, headers).await
}

/// GET `path` with Host `host`.
pub async fn get(v: &Verge, host: &str, path: &str) -> Got {
    send(v.http, reqwest::Method::GET, Some(host), path, &[]).await
}
