//! The `error_pages` of a route or a listener: per status, a body from a file (read now, so
//! `verge check` finds a missing one) or inline, and its content type.

use super::Errors;
use crate::config::edge::{ErrorPage, ErrorPages};
use crate::config::raw::{RawErrorPage, StatusKey};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest error page body.
const MAX_PAGE: u64 = 64 << 10;

/// The content type of a page that names none.
const DEFAULT_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Validate `error_pages` at `path` (`routes[2].error_pages`).
pub(super) fn error_pages(
    path: &str,
    raw: BTreeMap<StatusKey, RawErrorPage>,
    errs: &mut Errors,
) -> ErrorPages {
    let mut pages = BTreeMap::new();
    for (StatusKey(status), page) in raw {
        let at = format!("{path}.{status}");
        if !(400..=599).contains(&status) {
            errs.push(&at, "error pages are for statuses 400 to 599");
            continue;
        }
        if let Some(page) = error_page(&at, page, errs) {
            pages.insert(status, page);
        }
    }
    ErrorPages(Arc::new(pages))
}

fn error_page(path: &str, raw: RawErrorPage, errs: &mut Errors) -> Option<ErrorPage> {
    let content_type = raw.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
    let content_type = match http::HeaderValue::from_str(content_type) {
        Ok(v) if content_type.contains('/') => Some(v),
        _ => {
            errs.push(
                format!("{path}.content_type"),
                format!("{content_type:?} is not a media type such as text/html"),
            );
            None
        }
    };
    let body = match (raw.file, raw.body) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push(path, "give exactly one of file and body");
            None
        }
        (None, Some(body)) if body.len() as u64 > MAX_PAGE => {
            errs.push(format!("{path}.body"), "is larger than 64KiB");
            None
        }
        (None, Some(body)) => Some(body),
        (Some(file), None) => match read_page(&file) {
            Ok(body) => Some(body),
            Err(e) => {
                errs.push(format!("{path}.file"), e);
                None
            }
        },
    };
    Some(ErrorPage {
        body: body?,
        content_type: content_type?,
    })
}

fn read_page(file: &str) -> Result<String, String> {
    let meta = std::fs::metadata(file).map_err(|e| format!("cannot read {file:?}: {e}"))?;
    if meta.len() > MAX_PAGE {
        return Err(format!("{file:?} is larger than 64KiB"));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {file:?}: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{file:?} is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn every_page_error_is_reported_with_its_key_path() {
        let bad = r#"
listeners:
  - listen: "127.0.0.1:8080"
    error_pages: {200: {body: x}, 404: {file: /nonexistent/404.html}}
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    error_pages:
      502: {body: x, file: y}
      503: {body: x, content_type: "no slash"}
      "abc": {body: x}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].error_pages.200",
                "listeners[0].error_pages.404.file",
                "routes[0].error_pages",
            ],
            "{text:#?}"
        );
        let good = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    error_pages:
      502: {body: x, file: y}
      503: {body: x, content_type: "no slash"}
"#;
        let errs = Config::from_yaml_str(good).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].error_pages.502",
                "routes[0].error_pages.503.content_type"
            ]
        );
    }

    #[test]
    fn pages_read_their_file_and_take_string_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("503.html"), "<p>${status}</p>").expect("page");
        let yaml = format!(
            "listeners: [{{listen: \"127.0.0.1:8080\"}}]\npools: {{p: {{backends: \
             [\"127.0.0.1:1\"]}}}}\nroutes:\n  - hosts: [a.com]\n    pool: p\n    error_pages: \
             {{\"503\": {{file: {}}}, 404: {{body: \"id ${{request_id}}\", content_type: \
             text/plain}}}}\n",
            dir.path().join("503.html").display()
        );
        let c = Config::from_yaml_str(&yaml).expect("valid");
        let pages = &c.routes[0].error_pages;
        let page = pages.get(503).expect("503");
        assert_eq!(page.render(503, None), "<p>503</p>");
        assert_eq!(page.content_type, "text/html; charset=utf-8");
        let page = pages.get(404).expect("404");
        assert_eq!(page.render(404, Some("r1")), "id r1");
        assert_eq!(page.content_type, "text/plain");
        assert!(pages.get(502).is_none());
    }
}
