//! The configuration reference against the config types, both ways: every key the reference
//! tables in `docs/configuration.md` (node) and `docs/control-plane.md` (control plane) name is
//! one the parser accepts, and every field of every section the parser accepts is in the
//! reference.
//!
//! It asks the parser itself, through verge's own loading path: a key is set to a map with one
//! key no type has (`__probe__`), and the errors tell whether the key is unknown where it sits
//! (`unknown field \`key\``) or, for a key whose value is a section, which fields that section
//! accepts (`unknown field \`__probe__\`, expected one of ...`).

use serde_yaml::{Mapping, Value};
use std::collections::BTreeSet;

const PROBE: &str = "__probe__";

/// The documented key paths of one reference page: `listeners[].limits.h2.frame_budget`,
/// `pools.NAME.tls.sni`, `routes[].error_pages.STATUS.file`. A table's keys are read relative
/// to the nearest heading that names a key path in backticks (and a bold `**\`name\`.**` just
/// above the table), unless they already start with that path or with its first segment.
fn documented_keys(markdown: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    let mut sub: Option<String> = None;
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with('#') {
            sub = None;
            let heading = line.trim_start_matches('#').trim();
            if let Some(path) = backticked(heading).filter(|p| heading == format!("`{p}`")) {
                section = path;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("**`") {
            sub = rest.split('`').next().map(str::to_string);
            continue;
        }
        // only reference tables: `| key | type | default | meaning |`
        if line.starts_with("| key |") && line.contains("| meaning |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        let Some(cell) = line.strip_prefix("| `").filter(|_| in_table) else {
            continue;
        };
        // one key, or several (`a.tls`, `a.auth`), in the first cell
        let first_cell = cell.split(" | ").next().unwrap_or("");
        let named: Vec<&str> = first_cell
            .split('`')
            .step_by(2)
            .map(str::trim)
            .filter(|k| !k.is_empty() && !k.starts_with(','))
            .collect();
        let type_cell = line.split(" | ").nth(1).unwrap_or("");
        for key in named {
            let key = qualified(&section, sub.as_deref(), key);
            // a type written as `{a, b: ..., c | d}` documents the fields of the key's value
            for field in braced_fields(type_cell) {
                keys.insert(format!("{key}.{field}"));
            }
            keys.insert(key);
        }
    }
    keys
}

/// The outermost field names of the first `{...}` in a type cell: `{name, token \| token_file,
/// scopes}` gives `name`, `token`, `token_file`, `scopes`; `{set: {name: value}, remove: [name]}`
/// gives `set`, `remove`.
fn braced_fields(cell: &str) -> Vec<String> {
    let Some(start) = cell.find('{') else {
        return Vec::new();
    };
    // `map name → {a, b}`: the braces are the fields of each value, not of the key itself
    if cell[..start].contains('→') {
        return Vec::new();
    }
    let mut fields = Vec::new();
    let mut depth = 0;
    let mut word = String::new();
    let mut naming = true;
    for c in cell[start..].chars() {
        match c {
            '{' | '[' => {
                depth += 1;
                if depth > 1 {
                    naming = false;
                }
            }
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    if !word.is_empty() {
                        fields.push(std::mem::take(&mut word));
                    }
                    break;
                }
            }
            ',' | '|' if depth == 1 => naming = true,
            ':' if depth == 1 => naming = false,
            c if depth == 1 && naming && (c.is_ascii_lowercase() || c == '_') => word.push(c),
            _ => {}
        }
        if !(word.is_empty() || c.is_ascii_lowercase() || c == '_') {
            fields.push(std::mem::take(&mut word));
        }
    }
    fields
}

/// `key` as a full path: as written when it already starts with the section (or the section's
/// first segment), else under the section (and the bold sub-heading, if any).
fn qualified(section: &str, sub: Option<&str>, key: &str) -> String {
    let first = section.split(['.', '[']).next().unwrap_or("");
    let absolute = section.is_empty()
        || key == section
        || key.starts_with(&format!("{section}."))
        || key.starts_with(&format!("{section}["))
        || (!first.is_empty() && key.starts_with(&format!("{first}.")))
        || (!first.is_empty() && key.starts_with(&format!("{first}[")));
    match (sub, absolute) {
        (_, true) => key.to_string(),
        (Some(sub), false) => format!("{section}.{sub}.{key}"),
        (None, false) => format!("{section}.{key}"),
    }
}

fn backticked(text: &str) -> Option<String> {
    let start = text.find('`')?;
    let rest = &text[start + 1..];
    Some(rest[..rest.find('`')?].to_string())
}

/// A document that sets `path` (placeholders filled in, one item per list) to `value`.
fn document(path: &str, value: Value) -> Value {
    let segments: Vec<&str> = path.split('.').collect();
    nest(&segments, value)
}

fn nest(segments: &[&str], value: Value) -> Value {
    let Some((first, rest)) = segments.split_first() else {
        return value;
    };
    let inner = nest(rest, value);
    let (name, list) = match first.strip_suffix("[]") {
        Some(name) => (name, true),
        None => (*first, false),
    };
    let name: Value = match name {
        "NAME" => "p".into(),
        "STATUS" => Value::from(404),
        other => other.into(),
    };
    let inner = if list {
        Value::Sequence(vec![inner])
    } else {
        inner
    };
    let mut map = Mapping::new();
    map.insert(name, inner);
    Value::Mapping(map)
}

/// Every error message for the document with `path` set to `{__probe__: 0}`.
fn probe(parse: fn(&str) -> Vec<String>, path: &str) -> Vec<String> {
    let mut value = Mapping::new();
    value.insert(PROBE.into(), 0.into());
    let text = serde_yaml::to_string(&document(path, Value::Mapping(value))).expect("YAML");
    parse(&text)
}

/// The fields a section accepts, when an error lists them for the probe key.
fn fields_listed(errors: &[String]) -> Option<Vec<String>> {
    let marker = format!("unknown field `{PROBE}`, expected ");
    let message = errors.iter().find_map(|e| e.split_once(&marker))?.1;
    let list = message.strip_prefix("one of ").unwrap_or(message);
    let mut fields = Vec::new();
    let mut rest = list;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        fields.push(after[..end].to_string());
        rest = &after[end + 1..];
        // the list ends where the message's location begins
        if !rest.starts_with(", ") && !rest.starts_with(" or ") {
            break;
        }
    }
    Some(fields)
}

/// Every key documented is known to the parser, and every field of every documented section is
/// documented. Returns what is wrong.
fn check(pages: &[&str], parse: fn(&str) -> Vec<String>) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for page in pages {
        let path = format!("{}/docs/{page}", env!("CARGO_MANIFEST_DIR"));
        let markdown = std::fs::read_to_string(path).expect("the reference page");
        keys.extend(documented_keys(&markdown));
    }
    let page = pages.join(" + ");
    assert!(keys.len() > 10, "{page}: only {keys:?} found");
    let mut wrong = Vec::new();
    let mut sections: BTreeSet<String> = BTreeSet::from([String::new()]);
    for key in &keys {
        let last = key.rsplit('.').next().unwrap_or(key).trim_end_matches("[]");
        let errors = probe(parse, key);
        if errors
            .iter()
            .any(|e| e.contains(&format!("unknown field `{last}`")))
        {
            wrong.push(format!("{page}: `{key}` is documented but not accepted"));
        }
        let mut parent = key.as_str();
        while let Some((p, _)) = parent.rsplit_once('.') {
            sections.insert(p.to_string());
            parent = p;
        }
        if !key.contains('.') && !key.ends_with("[]") {
            // a top-level section, or a list of sections
            sections.insert(key.clone());
            sections.insert(format!("{key}[]"));
        } else {
            sections.insert(key.clone());
        }
    }
    let documented = |path: &str| {
        keys.iter().any(|k| {
            k == path || k.starts_with(&format!("{path}.")) || k.starts_with(&format!("{path}[]"))
        })
    };
    for section in &sections {
        let errors = if section.is_empty() {
            let mut top = Mapping::new();
            top.insert(PROBE.into(), 0.into());
            parse(&serde_yaml::to_string(&top).expect("YAML"))
        } else {
            probe(parse, section)
        };
        let Some(fields) = fields_listed(&errors) else {
            continue;
        };
        for field in fields {
            let path = if section.is_empty() {
                field.clone()
            } else {
                format!("{section}.{field}")
            };
            if !documented(&path) {
                wrong.push(format!("{page}: `{path}` is accepted but not documented"));
            }
        }
    }
    wrong
}

fn node_errors(text: &str) -> Vec<String> {
    match verge::config::Config::from_yaml_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn control_errors(text: &str) -> Vec<String> {
    match verge::control::settings::ControlSettings::from_yaml_str(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_node_reference_and_the_config_types_agree() {
    let wrong = check(&["configuration.md"], node_errors);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_control_plane_reference_and_its_config_types_agree() {
    let wrong = check(&["control-plane.md", "etcd.md"], control_errors);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn braced_types_name_their_fields() {
    assert_eq!(
        braced_fields("list of `{name, token \\| token_file \\| token_env, scopes}`"),
        ["name", "token", "token_file", "token_env", "scopes"]
    );
    assert_eq!(
        braced_fields("`{set: {name: value}, remove: [name]}`"),
        ["set", "remove"]
    );
    assert_eq!(
        braced_fields("`\"host:port\"` or `{addr, weight}`"),
        ["addr", "weight"]
    );
    assert!(braced_fields("bool").is_empty());
    assert!(braced_fields("map name → `{budget: duration}`").is_empty());
}

#[test]
fn the_check_finds_an_undocumented_and_an_unknown_key() {
    let markdown = "## `cache`\n\n| key | type | meaning |\n|---|---|---|\n| `cache.memory` | size | budget |\n| `cache.no_such_key` | size | none |\n";
    let keys = documented_keys(markdown);
    assert_eq!(
        keys,
        BTreeSet::from(["cache.memory".to_string(), "cache.no_such_key".to_string()])
    );
    let unknown = probe(node_errors, "cache.no_such_key");
    assert!(
        unknown
            .iter()
            .any(|e| e.contains("unknown field `no_such_key`")),
        "{unknown:?}"
    );
    let fields = fields_listed(&probe(node_errors, "cache")).expect("cache's fields");
    assert!(
        fields.contains(&"memory".to_string()) && fields.contains(&"disk".to_string()),
        "{fields:?}"
    );
}
