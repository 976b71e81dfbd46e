//! Secrets (bearer tokens) read from a file or an environment variable: the one reader behind a
//! node's `control.token_file`/`token_env`, the control plane's `tokens[]` and `verge --token-file`.

use std::path::Path;

/// Where a secret is kept.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    /// A file holding the secret (surrounding whitespace, such as a final newline, is dropped).
    File(&'a Path),
    /// An environment variable holding the secret.
    Env(&'a str),
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read {path:?}: {source}")]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("{0:?} is empty")]
    EmptyFile(std::path::PathBuf),
    /// The variable is not set (or holds only whitespace).
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
}

/// Read a secret, trimmed of surrounding whitespace; an empty one is an error.
pub fn read_secret(source: SecretSource<'_>) -> Result<String, SecretError> {
    match source {
        SecretSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SecretError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
            match text.trim() {
                "" => Err(SecretError::EmptyFile(path.to_path_buf())),
                t => Ok(t.to_string()),
            }
        }
        SecretSource::Env(var) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => Err(SecretError::EnvNotSet(var.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_trimmed_and_must_hold_something() {
        let dir = tempfile::tempdir().expect("tmp");
        let good = dir.path().join("good.token");
        std::fs::write(&good, "  s3cret-token\n").expect("write");
        assert_eq!(
            read_secret(SecretSource::File(&good)).expect("read"),
            "s3cret-token"
        );
        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, " \n").expect("write");
        let e = read_secret(SecretSource::File(&empty)).expect_err("empty");
        assert!(matches!(e, SecretError::EmptyFile(_)), "{e}");
        assert!(e.to_string().ends_with("empty.token\" is empty"), "{e}");
        let missing = dir.path().join("missing.token");
        let e = read_secret(SecretSource::File(&missing)).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read \""), "{e}");
    }

    #[test]
    fn an_unset_variable_is_an_error() {
        let e = read_secret(SecretSource::Env("VERGE_TEST_SECRET_NEVER_SET")).expect_err("unset");
        assert_eq!(
            e.to_string(),
            "environment variable VERGE_TEST_SECRET_NEVER_SET is not set"
        );
    }
}
