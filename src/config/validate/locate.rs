//! Finding the line a key path (`routes[2].timeouts.read`) starts on in YAML text.
//!
//! serde_yaml tells where a node is only in an error: so the text is walked down the path with
//! a visitor that fails on arriving, and the error's location is the node's. A path that goes
//! further than the document gives the line of the deepest node it reached (never the top).

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The message of the error that marks the node looked for.
const HERE: &str = "\u{1}verge-locate-here";

/// The 1-based line `path` (or its deepest existing ancestor below the top) starts on in `text`.
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let seek = Seek {
        rest: path,
        top: true,
    };
    match seek.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| l.line()),
        _ => None,
    }
}

/// Walks to the node at `rest`.
struct Seek<'p> {
    rest: &'p str,
    top: bool,
}

impl Seek<'_> {
    /// The node reached is the one to report (unless it is the whole document).
    fn here<E: de::Error>(&self) -> E {
        E::custom(if self.top { "not found" } else { HERE })
    }
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The first step of `rest` if it is a list index: the index and what follows it.
fn index_step(rest: &str) -> Option<(usize, &str)> {
    let (n, after) = rest.strip_prefix('[')?.split_once(']')?;
    Some((n.parse().ok()?, after.strip_prefix('.').unwrap_or(after)))
}

/// What follows `key` in `rest` if `rest` starts with that key as a whole step.
fn after_key<'p>(rest: &'p str, key: &str) -> Option<&'p str> {
    let after = rest.strip_prefix(key)?;
    if after.is_empty() {
        return Some(after);
    }
    if let Some(r) = after.strip_prefix('.') {
        return Some(r);
    }
    after.starts_with('[').then_some(after)
}

macro_rules! arrive {
    ($($name:ident: $t:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $t) -> Result<(), E> {
            Err(self.here())
        })*
    };
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    arrive!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.here())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(self.here())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((n, rest)) = index_step(self.rest) else {
            return Err(self.here());
        };
        for _ in 0..n {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(self.here());
            }
        }
        // an empty `rest` fails on arriving at the element, with the element's location
        match seq.next_element_seed(Seek { rest, top: false })? {
            Some(()) | None => Err(self.here()),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.rest.is_empty() {
            return Err(self.here());
        }
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let name = match &key {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            match after_key(self.rest, &name).filter(|_| !name.is_empty()) {
                Some(rest) => {
                    map.next_value_seed(Seek { rest, top: false })?;
                    return Err(self.here());
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(self.here())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listeners: [{listen: \"127.0.0.1:8080\"}]
pools:
  my.pool:
    backends:
      - 127.0.0.1:1
      - {addr: 127.0.0.1:2, weight: x}
routes:
  - {hosts: [a.com], pool: web}
  - hosts: [b.com]
    pool: web
    timeouts:
      read: forever
";

    #[test]
    fn paths_are_found_on_their_lines() {
        assert_eq!(line_of(DOC, "listeners[0].listen"), Some(1));
        assert_eq!(
            line_of(DOC, "pools.my.pool"),
            Some(4),
            "a mapping starts at its first key"
        );
        assert_eq!(line_of(DOC, "pools.my.pool.backends[1]"), Some(6));
        assert_eq!(line_of(DOC, "pools.my.pool.backends[1].weight"), Some(6));
        assert_eq!(line_of(DOC, "routes[0].pool"), Some(8));
        assert_eq!(line_of(DOC, "routes[1]"), Some(9));
        assert_eq!(line_of(DOC, "routes[1].timeouts.read"), Some(12));
    }

    #[test]
    fn a_missing_node_gives_its_deepest_ancestor_but_never_the_top() {
        assert_eq!(line_of(DOC, "routes[1].name"), Some(9));
        assert_eq!(line_of(DOC, "routes[7]"), Some(8), "the list");
        assert_eq!(line_of(DOC, "cache.memory"), None);
        assert_eq!(line_of(DOC, ""), None);
    }
}
