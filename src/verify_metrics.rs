//! The metrics of `verge verify --every`: divergent nodes per class, rounds, and the last good
//! round's time, served as Prometheus text on `--metrics-listen`.

use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a periodic `verge verify` exports.
#[derive(Clone)]
pub struct VerifyMetrics {
    registry: Registry,
    /// `verge_verify_divergent_nodes{class}`: nodes that would serve another version of at
    /// least one URL of the class, in the last round.
    divergent: IntGaugeVec,
    /// `verge_verify_rounds_total{outcome}`: rounds done (`ok`) or failed (`error`: the
    /// control plane or the origin could not be asked).
    rounds_ok: IntCounter,
    rounds_failed: IntCounter,
    /// `verge_verify_last_round_timestamp_seconds`: when the last round ended that asked
    /// every node.
    last_round: IntGauge,
}

impl VerifyMetrics {
    /// The metrics on a registry of their own.
    pub fn new() -> Result<VerifyMetrics, prometheus::Error> {
        let registry = Registry::new();
        let divergent = IntGaugeVec::new(
            Opts::new(
                "verge_verify_divergent_nodes",
                "Nodes that would serve another version of a URL of the class, last round",
            ),
            &["class"],
        )?;
        let rounds = prometheus::IntCounterVec::new(
            Opts::new("verge_verify_rounds_total", "Verify rounds by outcome"),
            &["outcome"],
        )?;
        let last_round = IntGauge::new(
            "verge_verify_last_round_timestamp_seconds",
            "Unix time of the last round that asked every node",
        )?;
        registry.register(Box::new(divergent.clone()))?;
        registry.register(Box::new(rounds.clone()))?;
        registry.register(Box::new(last_round.clone()))?;
        Ok(VerifyMetrics {
            rounds_ok: rounds.with_label_values(&["ok"]),
            rounds_failed: rounds.with_label_values(&["error"]),
            registry,
            divergent,
            last_round,
        })
    }

    /// A round's divergent nodes per class. A class seen before and clean now goes to 0.
    pub fn record(&self, per_class: &BTreeMap<String, BTreeSet<String>>) {
        for (class, nodes) in per_class {
            self.divergent
                .with_label_values(&[class])
                .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
        }
        self.rounds_ok.inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_round.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// A round that could not ask (the gauges keep the last good round's values).
    pub fn failed(&self) {
        self.rounds_failed.inc();
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            eprintln!("verge: metrics encoding failed: {e}");
        }
        out
    }

    /// Listen on `addr` and answer every request with the metrics, in the background.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let metrics = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // the request itself does not matter: read its head, answer, close
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = metrics.render();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(())
    }
}
