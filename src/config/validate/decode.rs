//! Decoding a YAML value into a raw serde type, reporting every type error at its full key path.
//!
//! serde stops at the first error, and a `serde_yaml::Value` carries no paths. So when a value
//! does not decode, it is written out as YAML and decoded again from that text, whose error
//! names the key path inside the value; that node is recorded and dropped, and decoding starts
//! over until the rest decodes (or an error leaves nothing to drop). What remains is returned,
//! so the checks after decoding still run on every part that was well-typed.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// Most nodes dropped from one value before giving up on finding more errors in it.
const MAX_ERRORS: usize = 64;

/// One step of a key path inside a value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A key path inside a value, as steps.
type Steps = Vec<Step>;

/// One type error inside a decoded value.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DecodeError {
    /// Where, relative to the value (empty: the value itself).
    pub path: String,
    /// What is wrong (serde's message, without its line and column).
    pub message: String,
    /// The node whose line to report, relative to the value, when it is not `path` itself
    /// (an unknown key is reported on its map but sits on its own line).
    pub at: Option<String>,
}

/// What was dropped, as the checks after decoding must see it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Dropped {
    /// A node and everything under it.
    Subtree(String),
    /// A list that lost an element (checks of the list itself, such as "empty", are moot).
    List(String),
}

impl Dropped {
    /// The same, for a value found at `prefix`.
    pub fn under(self, prefix: &str) -> Dropped {
        match self {
            Dropped::Subtree(p) => Dropped::Subtree(super::join_path(prefix, &p)),
            Dropped::List(p) => Dropped::List(super::join_path(prefix, &p)),
        }
    }

    /// Whether an error at `path` is about what was dropped.
    pub fn covers(&self, path: &str) -> bool {
        match self {
            Dropped::Subtree(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '['])),
            Dropped::List(p) => path == p,
        }
    }
}

/// The outcome of decoding one value.
#[derive(Debug)]
pub(super) struct Decoded<T> {
    /// What decoded once every ill-typed node was dropped, if anything did.
    pub value: Option<T>,
    /// Every type error found, in document order.
    pub errors: Vec<DecodeError>,
    /// The nodes dropped to find them (paths relative to the value).
    pub dropped: Vec<Dropped>,
}

/// Decode `value` as `T`, collecting every type error (see the module comment).
pub(super) fn decode_all<T: DeserializeOwned>(value: Value) -> Decoded<T> {
    let mut out = Decoded {
        value: None,
        errors: Vec::new(),
        dropped: Vec::new(),
    };
    let mut work = value;
    // Elements dropped from lists, to map indices in `work` back to the original value:
    // (the list's original path, the element's original index).
    let mut removed: Vec<(Steps, usize)> = Vec::new();
    // Original paths of dropped nodes, to silence "missing field" for what was dropped.
    let mut dropped_paths: Vec<Steps> = Vec::new();
    for _ in 0..MAX_ERRORS {
        let first = match serde_yaml::from_value::<T>(work.clone()) {
            Ok(v) => {
                out.value = Some(v);
                return out;
            }
            Err(e) => e,
        };
        let Some((at, message)) = locate_error::<T>(&work) else {
            // Written out as text the value decodes: report it whole, as serde put it.
            out.errors.push(DecodeError {
                path: String::new(),
                message: without_location(&first),
                at: None,
            });
            return out;
        };
        let original = to_original(&at, &removed);
        // "unknown field `x`": reported on the map, dropping the key
        let (target, report_at) = match field_name(&message, "unknown field `") {
            Some(key) => {
                let mut t = at.clone();
                t.push(Step::Key(key.to_string()));
                let mut o = original.clone();
                o.push(Step::Key(key.to_string()));
                (t, Some(o))
            }
            None => (at.clone(), None),
        };
        let missing_dropped = field_name(&message, "missing field `").is_some_and(|key| {
            let mut o = original.clone();
            o.push(Step::Key(key.to_string()));
            dropped_paths.contains(&o)
        });
        if !missing_dropped {
            out.errors.push(DecodeError {
                path: render(&original),
                message,
                at: report_at.as_ref().map(|s| render(s)),
            });
        }
        if target.is_empty() {
            // The value itself is wrong (its type, or a field it must have): nothing to drop.
            return out;
        }
        let original_target = report_at.unwrap_or(original);
        match remove(&mut work, &target) {
            Some(Step::Index(_)) => {
                let mut list = original_target.clone();
                if let Some(Step::Index(i)) = list.pop() {
                    out.dropped.push(Dropped::List(render(&list)));
                    removed.push((list, i));
                }
            }
            Some(Step::Key(_)) => {}
            None => return out,
        }
        out.dropped.push(Dropped::Subtree(render(&original_target)));
        dropped_paths.push(original_target);
    }
    out
}

/// The first error decoding `value` as `T` from its YAML text: where (steps inside `value`) and
/// what. `None` if the text decodes (or cannot be written).
fn locate_error<T: DeserializeOwned>(value: &Value) -> Option<(Steps, String)> {
    let text = serde_yaml::to_string(value).ok()?;
    let e = serde_yaml::from_str::<T>(&text).err()?;
    let full = without_location(&e);
    // serde_yaml writes "path: message" unless the error is at the top
    if let Some((head, rest)) = full.split_once(": ") {
        if let Some(steps) = parse_steps(head) {
            if resolve(value, &steps).is_some() {
                return Some((steps, rest.to_string()));
            }
        }
    }
    Some((Vec::new(), full))
}

/// A serde_yaml error's text without its trailing " at line L column C".
fn without_location(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    if let Some(loc) = e.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(head) = text.strip_suffix(&suffix) {
            return head.to_string();
        }
    }
    text
}

/// The name in a serde message such as "unknown field `x`, expected ...".
fn field_name<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Parse a serde_yaml path (`a.b[2].c`, `[0].x`) into steps.
fn parse_steps(text: &str) -> Option<Steps> {
    let mut steps = Vec::new();
    let mut rest = text
        .strip_prefix('.')
        .filter(|r| r.starts_with('['))
        .unwrap_or(text);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            steps.push(Step::Index(n.parse().ok()?));
            rest = after.strip_prefix('.').unwrap_or(after);
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        let key = &rest[..end];
        if key.is_empty() || key == "?" {
            return None;
        }
        steps.push(Step::Key(key.to_string()));
        rest = &rest[end..];
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(steps)
}

/// Steps written as a key path (`a.b[2]`).
fn render(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn child<'v>(value: &'v Value, step: &Step) -> Option<&'v Value> {
    match (value, step) {
        (Value::Tagged(t), _) => child(&t.value, step),
        (Value::Mapping(m), Step::Key(k)) => m.get(k.as_str()),
        (Value::Sequence(s), Step::Index(i)) => s.get(*i),
        _ => None,
    }
}

fn resolve<'v>(value: &'v Value, steps: &[Step]) -> Option<&'v Value> {
    steps.iter().try_fold(value, child)
}

fn resolve_mut<'v>(value: &'v mut Value, steps: &[Step]) -> Option<&'v mut Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(value);
    };
    let next = match (value, step) {
        (Value::Tagged(t), _) => return resolve_mut(&mut t.value, steps),
        (Value::Mapping(m), Step::Key(k)) => m.get_mut(k.as_str())?,
        (Value::Sequence(s), Step::Index(i)) => s.get_mut(*i)?,
        _ => return None,
    };
    resolve_mut(next, rest)
}

/// Drop the node at `steps` (not empty) from `value`; the step that named it.
fn remove(value: &mut Value, steps: &[Step]) -> Option<Step> {
    let (last, parent) = steps.split_last()?;
    let parent = match resolve_mut(value, parent)? {
        Value::Tagged(t) => &mut t.value,
        v => v,
    };
    match (parent, last) {
        (Value::Mapping(m), Step::Key(k)) => m.remove(k.as_str()).map(|_| last.clone()),
        (Value::Sequence(s), Step::Index(i)) if *i < s.len() => {
            s.remove(*i);
            Some(last.clone())
        }
        _ => None,
    }
}

/// A path in the value as it is now, mapped back to the original (before elements were dropped).
fn to_original(steps: &[Step], removed: &[(Steps, usize)]) -> Steps {
    let mut out: Steps = Vec::new();
    for step in steps {
        let step = match step {
            Step::Index(i) => {
                let mut gone: Vec<usize> = removed
                    .iter()
                    .filter(|(list, _)| *list == out)
                    .map(|(_, j)| *j)
                    .collect();
                gone.sort_unstable();
                let mut original = *i;
                for j in gone {
                    if j <= original {
                        original += 1;
                    }
                }
                Step::Index(original)
            }
            key => key.clone(),
        };
        out.push(step);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::{RawListener, RawPool, RawRoute};

    fn value(text: &str) -> Value {
        serde_yaml::from_str(text).expect("yaml")
    }

    fn paths<T>(d: &Decoded<T>) -> Vec<(&str, &str)> {
        d.errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect()
    }

    #[test]
    fn every_type_error_in_one_value_has_its_path() {
        let d = decode_all::<RawRoute>(value(
            "{hosts: [a.com, {x: 1}, b.com, [c]], pool: p, bogus: 1, timeouts: {read: forever, write: 2s, idle: never}}",
        ));
        let found = paths(&d);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!(found[0].0, "hosts[1]");
        assert_eq!(found[1].0, "hosts[3]", "indices are the document's");
        assert!(found[2] == ("", found[2].1) && found[2].1.starts_with("unknown field `bogus`"));
        assert_eq!(d.errors[2].at.as_deref(), Some("bogus"));
        assert_eq!(found[3].0, "timeouts.read");
        assert!(
            found[3].1.starts_with("invalid duration \"forever\""),
            "{found:#?}"
        );
        assert_eq!(found[4].0, "timeouts.idle");
        // what was well-typed is still there for the checks that follow
        let route = d.value.expect("the rest decodes");
        assert_eq!(route.hosts, ["a.com", "b.com"]);
        assert!(route
            .timeouts
            .is_some_and(|t| t.write.is_some() && t.read.is_none()));
        assert!(d.dropped.contains(&Dropped::List("hosts".into())));
        assert!(d.dropped.contains(&Dropped::Subtree("hosts[3]".into())));
    }

    #[test]
    fn a_dropped_required_field_is_not_also_missing() {
        let d = decode_all::<RawRoute>(value("{hosts: [a.com], pool: [p]}"));
        assert_eq!(paths(&d).len(), 1, "{:#?}", d.errors);
        assert_eq!(d.errors[0].path, "pool");
        assert!(d.value.is_none());
        let d = decode_all::<RawListener>(value("{listen: x, tls: {cert: [c], key: k}}"));
        assert_eq!(paths(&d).len(), 1, "{:#?}", d.errors);
        assert_eq!(d.errors[0].path, "tls.cert");
        assert!(d.value.is_some_and(|l| l.tls.is_none()));
    }

    #[test]
    fn errors_of_the_value_itself_stop_there() {
        let d = decode_all::<RawPool>(value("[1, 2]"));
        assert_eq!(paths(&d).len(), 1);
        assert_eq!(d.errors[0].path, "");
        assert!(d.errors[0].message.starts_with("invalid type: sequence"));
        let d = decode_all::<RawPool>(value("{selection: x, backends: [a, {addr: b, weight: x}]}"));
        assert_eq!(paths(&d)[0].0, "backends[1].weight");
        assert!(
            d.errors[0]
                .message
                .contains("invalid type: string \"x\", expected u32"),
            "{:#?}",
            d.errors
        );
    }

    #[test]
    fn paths_parse_and_render() {
        let steps = parse_steps("a.b[2].c").expect("path");
        assert_eq!(render(&steps), "a.b[2].c");
        assert_eq!(
            parse_steps(".[0].x"),
            Some(vec![Step::Index(0), Step::Key("x".into())])
        );
        assert_eq!(parse_steps("a.?"), None);
        assert_eq!(parse_steps("a[x]"), None);
        let removed = vec![
            (vec![Step::Key("l".into())], 1),
            (vec![Step::Key("l".into())], 2),
        ];
        let now = [Step::Key("l".into()), Step::Index(1)];
        assert_eq!(render(&to_original(&now, &removed)), "l[3]");
    }
}
