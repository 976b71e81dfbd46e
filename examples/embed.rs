//! The smallest custom binary that embeds verge: load the YAML config named on the command line,
//! register one filter (it adds `X-Powered-By` to every response), run. Everything else (routing,
//! cache, health checks, admin, control plane, graceful upgrade) is the plain `verge serve`.

use anyhow::Context;
use verge::{async_trait, Config, Filter, FilterCtx, FilterError, ResponseHeader, Verge};

/// Adds `X-Powered-By: verge-embed` to every response.
struct PoweredBy;

#[async_trait]
impl Filter for PoweredBy {
    fn name(&self) -> &str {
        "powered-by"
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        resp.insert_header("x-powered-by", "verge-embed")
            .map_err(|e| FilterError::internal(e.to_string()))
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .context("usage: embed CONFIG.yaml")?;
    let config = Config::load(path.as_ref())?;
    Verge::builder(config).filter(PoweredBy).run()?;
    Ok(())
}

// Run it (a demo origin on :9000, verge on :8080):
//
//   cargo run --example demo_origin -- --listen 127.0.0.1:9000 &
//   cargo run --example embed -- conf/examples/embed.yaml
//
//   curl -si localhost:8080/hello | grep -i x-powered-by           # X-Powered-By: verge-embed
