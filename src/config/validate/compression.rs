//! A route's `compression` block: the coding, its level, the minimum size and the media types.

use super::Errors;
use crate::config::raw::RawCompression;
use crate::config::{Coding, CompressionSpec, MediaRange};

/// The route's compression, or `None` when the block turns it off (`enabled: false`). Every
/// problem is reported under `path`; the spec returned then is not used.
pub(super) fn compression(
    path: &str,
    raw: RawCompression,
    errs: &mut Errors,
) -> Option<CompressionSpec> {
    if !raw.enabled {
        return None;
    }
    let d = CompressionSpec::default();
    let coding = match raw.algorithm.as_deref() {
        None => d.coding,
        Some(text) => match Coding::from_token(text) {
            Some(c) if !text.eq_ignore_ascii_case("x-gzip") => c,
            _ => {
                errs.push(
                    format!("{path}.algorithm"),
                    format!("must be br or gzip, not {text:?}"),
                );
                d.coding
            }
        },
    };
    let level = raw.level.unwrap_or_else(|| coding.default_level());
    if !coding.levels().contains(&level) {
        let (lo, hi) = coding.levels().into_inner();
        errs.push(
            format!("{path}.level"),
            format!("{} levels are {lo} to {hi}, not {level}", coding.token()),
        );
    }
    let types = match raw.types {
        None => d.types,
        Some(list) => {
            if list.is_empty() {
                errs.push(
                    format!("{path}.types"),
                    "list at least one media type (or remove the key for the default list)",
                );
            }
            let mut out = Vec::new();
            for (i, text) in list.iter().enumerate() {
                match MediaRange::parse(text) {
                    Ok(r) => out.push(r),
                    Err(e) => errs.push(format!("{path}.types[{i}]"), e),
                }
            }
            out
        }
    };
    Some(CompressionSpec {
        coding,
        level,
        min_size: raw.min_size.map_or(d.min_size, |s| s.0),
        types,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Coding, Config, MediaRange, DEFAULT_MIN_COMPRESS_SIZE};

    #[test]
    fn a_compression_block_takes_its_defaults_and_its_settings() {
        let c = Config::from_yaml_str(
            r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, cache: {}, compression: {}}
  - hosts: [b.com]
    pool: p
    compression: {algorithm: gzip, level: 9, min_size: 4KiB, types: [text/html, "application/*"]}
  - {hosts: [c.com], pool: p, compression: {enabled: false, level: 99}}
  - {hosts: [d.com], pool: p}
"#,
        )
        .expect("valid");
        let a = c.routes[0].compression.as_ref().expect("on");
        assert_eq!((a.coding, a.level), (Coding::Br, 5));
        assert_eq!(a.min_size, DEFAULT_MIN_COMPRESS_SIZE);
        assert!(a.compresses_type("text/css"));
        let b = c.routes[1].compression.as_ref().expect("on");
        assert_eq!((b.coding, b.level, b.min_size), (Coding::Gzip, 9, 4096));
        assert_eq!(
            b.types,
            [
                MediaRange::Exact("text/html".into()),
                MediaRange::AnySubtype("application".into())
            ]
        );
        assert_eq!(c.routes[2].compression, None, "enabled: false");
        assert_eq!(c.routes[3].compression, None);
    }

    #[test]
    fn every_compression_error_is_reported_at_its_key_path() {
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    compression: {algorithm: zstd, level: 12, types: [text/html, "text", "a/b; q=1"]}
  - {hosts: [b.com], pool: p, compression: {algorithm: gzip, level: 10, types: []}}
  - {hosts: [c.com], pool: p, compression: {min_size: lots, speed: 3}}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].compression.algorithm",
                "routes[0].compression.level",
                "routes[0].compression.types[1]",
                "routes[0].compression.types[2]",
                "routes[1].compression.level",
                "routes[1].compression.types",
                "routes[2].compression.min_size",
                "routes[2].compression",
            ],
            "{errs:#?}"
        );
        assert!(
            errs[1].message.contains("br levels are 1 to 11"),
            "{errs:#?}"
        );
        assert!(
            errs[7].message.contains("unknown field `speed`"),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_control_plane_policy_carries_compression_with_the_same_checks() {
        let policy: serde_yaml::Value = serde_yaml::from_str(
            r#"
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, cache: {}, compression: {level: 4}}
  - {hosts: [b.com], pool: p, compression: {types: ["nope"]}}
"#,
        )
        .expect("yaml");
        let errs = super::super::validate_policy(policy).expect_err("invalid");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "routes[1].compression.types[0]");
    }
}
