//! Turning fuzz bytes into test inputs, and keeping documents hermetic (no DNS, no special files).

/// A fuzz input read front to back: a few control bytes, then text lines.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    /// The next byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// The next four bytes as a big-endian number (missing bytes count as 0).
    pub fn u32(&mut self) -> u32 {
        (0..4).fold(0u32, |n, _| (n << 8) | u32::from(self.byte()))
    }

    /// Everything left, as bytes.
    pub fn rest_bytes(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Everything left, as text (invalid UTF-8 replaced).
    pub fn rest_text(&mut self) -> String {
        let text = String::from_utf8_lossy(self.bytes).into_owned();
        self.bytes = &[];
        text
    }
}

/// Whether a parsed document can be validated without touching the outside world: the
/// validator resolves `host:port` strings that are not IP literals (DNS) and reads the files a
/// document names, so documents with such strings are skipped rather than fuzzed.
pub fn hermetic_yaml(value: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match value {
        Value::String(s) => hermetic_str(s),
        Value::Sequence(items) => items.iter().all(hermetic_yaml),
        Value::Mapping(map) => map
            .iter()
            .all(|(k, v)| hermetic_yaml(k) && hermetic_yaml(v)),
        Value::Tagged(t) => hermetic_yaml(&t.value),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

/// [`hermetic_yaml`] for a JSON document (the control plane's policy).
pub fn hermetic_json(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => hermetic_str(s),
        Value::Array(items) => items.iter().all(hermetic_json),
        Value::Object(map) => map.iter().all(|(k, v)| hermetic_str(k) && hermetic_json(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

fn hermetic_str(s: &str) -> bool {
    // Device and kernel files could block or never end (`/dev/zero`, `/dev/stdin`).
    let special = ["dev", "proc", "sys", "fd"].iter().any(|d| s.contains(d));
    // `host:port` that is no IP literal would be resolved; other strings with ':' are known
    // forms that are never resolved (hash keys, the control-plane URL).
    let resolvable = s.contains(':')
        && s.parse::<std::net::SocketAddr>().is_err()
        && s.parse::<std::net::IpAddr>().is_err()
        && !["header:", "cookie:", "http://", "https://"]
            .iter()
            .any(|p| s.starts_with(p));
    !special && !resolvable
}
