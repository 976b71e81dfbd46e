//! Cache-key normalisation by device class: the `User-Agent` is reduced to `mobile`, `tablet` or
//! `desktop`, and that class, not the raw header, goes into the cache key. Two phones with
//! different browsers share one cached copy; a phone and a desktop get separate copies, and the
//! origin is asked once per class. The origin learns the class from `X-Device-Class` (and
//! should answer `Vary: User-Agent` to caches further down if its answer differs by class).
//!
//! Keying on the raw `User-Agent` (`cache.key.headers: [user-agent]`) would store a copy per
//! browser build: thousands of variants of the same page.

use verge::http::HeaderValue;
use verge::{
    async_trait, Config, Decision, Filter, FilterCtx, FilterError, RequestHeader, ResponseHeader,
    Verge,
};

/// A device class, from the `User-Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Device {
    Mobile,
    Tablet,
    Desktop,
}

impl Device {
    fn as_str(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Desktop => "desktop",
        }
    }
}

/// Classify a `User-Agent` (a short, conservative rule set: unknown agents are desktops).
fn classify(user_agent: &str) -> Device {
    let ua = user_agent.to_ascii_lowercase();
    let has = |s: &str| ua.contains(s);
    if has("ipad") || has("tablet") || has("kindle") || has("silk/") {
        Device::Tablet
    } else if has("android") && !has("mobile") {
        // Android tablets leave "Mobile" out of their user agent
        Device::Tablet
    } else if has("mobi") || has("iphone") || has("ipod") || has("android") || has("phone") {
        Device::Mobile
    } else {
        Device::Desktop
    }
}

/// Puts the device class into the cache key and tells the origin about it.
struct DeviceKey;

#[async_trait]
impl Filter for DeviceKey {
    fn name(&self) -> &str {
        "device-key"
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        let ua = req
            .headers
            .get(verge::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let device = classify(ua);
        // on every request (desktop included), so each class has its own variant
        ctx.add_cache_key("device", device.as_str())?;
        ctx.extensions_mut().insert(device);
        Ok(Decision::Continue)
    }

    async fn on_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        let device = ctx.extensions().get::<Device>().copied();
        let device = device.ok_or_else(|| FilterError::internal("no device class recorded"))?;
        upstream
            .insert_header("x-device-class", HeaderValue::from_static(device.as_str()))
            .map_err(|e| FilterError::internal(e.to_string()))
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        if let Some(device) = ctx.extensions().get::<Device>() {
            resp.insert_header("x-device-class", HeaderValue::from_static(device.as_str()))
                .map_err(|e| FilterError::internal(e.to_string()))?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "conf/examples/device_key.yaml".into());
    let config = Config::load(path.as_ref())?;
    Verge::builder(config).filter(DeviceKey).run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_classify() {
        let cases = [
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
                Device::Mobile,
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/120.0 Mobile Safari/537.36",
                Device::Mobile,
            ),
            (
                "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) Safari/604.1",
                Device::Tablet,
            ),
            (
                "Mozilla/5.0 (Linux; Android 13; SM-X700) Chrome/120.0 Safari/537.36",
                Device::Tablet,
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36",
                Device::Desktop,
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Safari/605.1.15",
                Device::Desktop,
            ),
            ("curl/8.5.0", Device::Desktop),
            ("", Device::Desktop),
        ];
        for (ua, want) in cases {
            assert_eq!(classify(ua), want, "{ua}");
        }
    }
}

// Run it (a demo origin on :9000, verge on :8080):
//
//   cargo run --example demo_origin -- --listen 127.0.0.1:9000 &
//   cargo run --example device_key -- conf/examples/device_key.yaml
//
//   curl -si localhost:8080/obj/64 -A 'Mozilla/5.0 (iPhone) Mobile/15E148' | grep -i cache-status
//   curl -si localhost:8080/obj/64 -A 'Mozilla/5.0 (Linux; Android 14) Mobile' | grep -i cache-status  # hit
//   curl -si localhost:8080/obj/64 -A 'Mozilla/5.0 (Windows NT 10.0)' | grep -i cache-status           # miss
//   curl -s localhost:9000/stats                                  # /obj/64 fetched twice: one per class
