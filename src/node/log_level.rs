//! The process log's level: `server.log_level` from the config file, applied at start and on
//! every reload, unless the `RUST_LOG` environment variable sets the filter instead.

use log::LevelFilter;

/// Start the process log on stderr. With `RUST_LOG` set, its filter (per module, as
/// `env_logger` reads it) is the whole story; without it, every record reaches the logger and
/// [`apply`] sets the level, `info` until a config says otherwise.
pub fn init() {
    let from_env = rust_log_set();
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default());
    if !from_env {
        builder.filter_level(LevelFilter::Trace);
    }
    builder.init();
    if !from_env {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Make `level` the process log's level, unless `RUST_LOG` sets the filter. Returns whether
/// it did.
pub fn apply(level: LevelFilter) -> bool {
    if rust_log_set() {
        return false;
    }
    log::set_max_level(level);
    true
}

fn rust_log_set() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}
