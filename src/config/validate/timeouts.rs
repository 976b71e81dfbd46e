//! Upstream timeouts: `upstream_defaults.timeouts`, `pools.*.timeouts` and `routes[].timeouts`.

use super::Errors;
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::units::ConfDuration;

pub(super) fn merge_timeouts(
    base: Timeouts,
    raw: Option<&RawTimeouts>,
    path: &str,
    errs: &mut Errors,
) -> Timeouts {
    let r = route_timeouts(raw, path, errs);
    Timeouts {
        connect: r.connect.unwrap_or(base.connect),
        read: r.read.unwrap_or(base.read),
        write: r.write.unwrap_or(base.write),
        idle: r.idle.unwrap_or(base.idle),
        // 0s: off
        total: match r.total {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => base.total,
        },
    }
}

pub(super) fn route_timeouts(
    raw: Option<&RawTimeouts>,
    path: &str,
    errs: &mut Errors,
) -> RouteTimeouts {
    let Some(raw) = raw else {
        return RouteTimeouts::default();
    };
    let mut check = |key: &str, v: Option<ConfDuration>, allow_zero: bool| {
        v.and_then(|d| {
            if d.0.is_zero() && !allow_zero {
                errs.push(format!("{path}.{key}"), "must be greater than zero");
                None
            } else {
                Some(d.0)
            }
        })
    };
    RouteTimeouts {
        connect: check("connect", raw.connect, false),
        read: check("read", raw.read, false),
        write: check("write", raw.write, false),
        // idle 0 means "do not pool upstream connections"
        idle: check("idle", raw.idle, true),
        // total 0 means "no whole-response deadline"
        total: check("total", raw.total, true),
    }
}
