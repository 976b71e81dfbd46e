//! Layers import only downward: each top-level module of `src/` may use the modules of the
//! layers below it and nothing above. Read from the source text, so a new upward `use` fails
//! here before it settles in.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The crate's modules, lowest layer first, each with what it may import besides itself.
const LAYERS: &[(&str, &[&str])] = &[
    ("http_syntax", &[]),
    ("unix_time", &[]),
    ("metrics", &[]),
    ("config", &["http_syntax", "unix_time", "metrics"]),
    (
        "access_log",
        &["config", "http_syntax", "unix_time", "metrics"],
    ),
    ("routing", &["config", "http_syntax"]),
    ("cache", &["config", "http_syntax", "unix_time", "metrics"]),
    ("upstream", &["config", "http_syntax", "metrics"]),
    (
        "control",
        &["cache", "config", "http_syntax", "unix_time", "metrics"],
    ),
    (
        "snapshot",
        &[
            "control",
            "cache",
            "upstream",
            "routing",
            "access_log",
            "config",
            "http_syntax",
            "unix_time",
            "metrics",
        ],
    ),
    (
        "node",
        &[
            "snapshot",
            "control",
            "cache",
            "upstream",
            "access_log",
            "config",
            "http_syntax",
            "unix_time",
            "metrics",
        ],
    ),
    (
        "proxy",
        &[
            "snapshot",
            "control",
            "cache",
            "upstream",
            "routing",
            "access_log",
            "config",
            "http_syntax",
            "unix_time",
            "metrics",
        ],
    ),
    (
        "ingress",
        &[
            "proxy",
            "node",
            "snapshot",
            "cache",
            "config",
            "http_syntax",
            "metrics",
        ],
    ),
];

/// Modules at the top: they assemble the rest and may import anything.
const TOP: &[&str] = &[
    "admin",
    "server",
    "embed",
    "ops",
    "verify",
    "verify_metrics",
    "lifecycle",
    "lib",
    "main",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The crate modules a file's code (comments left out) names as `crate::NAME`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` lists several
            if name.is_empty() && after.starts_with('{') {
                let end = after.find('}').unwrap_or(after.len());
                for part in after[1..end].split(',') {
                    let part: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !part.is_empty() {
                        found.insert(part);
                    }
                }
            } else if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found the sources");
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if TOP.contains(&module.as_str()) {
            continue;
        }
        let Some((_, allowed)) = LAYERS.iter().find(|(m, _)| *m == module) else {
            upward.push(format!(
                "{}: module `{module}` has no layer in tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read source");
        for name in imports(&text) {
            if name != module && !allowed.contains(&name.as_str()) {
                upward.push(format!(
                    "{}: `{module}` imports `crate::{name}`",
                    file.display()
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_reader_sees_what_a_file_imports() {
    let text = "use crate::cache::{x, y};\nuse crate::{config, metrics::M};\n// crate::proxy in a comment\nlet a = crate::upstream::pool::f(); // crate::server\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["cache", "config", "metrics", "upstream"]);
}

/// The files the Layout section of `docs/architecture.md` lists, as paths under `src/`.
fn listed_in_layout(doc: &str) -> BTreeSet<String> {
    let layout = doc
        .split("\n## Layout")
        .nth(1)
        .expect("docs/architecture.md has a Layout section");
    let layout = layout.split("\n## ").next().unwrap_or(layout);
    let mut listed = BTreeSet::new();
    let mut dir: Option<String> = None;
    for line in layout.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            dir = heading
                .trim()
                .strip_prefix("`src/")
                .and_then(|d| d.strip_suffix("/`"))
                .map(str::to_string);
            if heading.trim() == "Top level" {
                dir = Some(String::new());
            }
            continue;
        }
        let (Some(dir), Some(cell)) = (dir.as_ref(), line.strip_prefix("| `")) else {
            continue;
        };
        let Some(name) = cell.split('`').next() else {
            continue;
        };
        if !name.ends_with(".rs") {
            continue;
        }
        let name = name.strip_prefix("src/").unwrap_or(name);
        listed.insert(if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        });
    }
    listed
}

#[test]
fn the_layout_in_the_docs_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let doc = fs::read_to_string(root.join("docs/architecture.md")).expect("architecture.md");
    let listed = listed_in_layout(&doc);
    let missing: Vec<_> = present.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&present).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "docs/architecture.md Layout is out of step with src/: not listed {missing:?}, listed but gone {gone:?}"
    );
}
