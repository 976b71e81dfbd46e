//! The `error_pages` of a route or a listener: per status, a body from a file (read now, so
//! `verge check` finds a missing one) or inline, and its content type.

use super::Errors;
use crate::config::edge::{ErrorPage, ErrorPages};
use crate::config::raw::RawErrorPage;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest error page body.
const MAX_PAGE: u64 = 64 << 10;

/// The content type of a page that names none.
const DEFAULT_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Validate `error_pages` at `path` (`routes[2].error_pages`).
pub(super) fn error_pages(
    path: &str,
    raw: BTreeMap<u16, RawErrorPage>,
    errs: &mut Errors,
) -> ErrorPages {
    let mut pages = BTreeMap::new();
    for (status, page) in raw {
        let at = format!("{path}.{status}");
        if !(400..=599).contains(&status) {
            errs.push(&at, "error pages are for statuses 400 to 599");
            continue;
        }
        if let Some(page) = error_page(&at, page, errs) {
            pages.insert(status, Arc::new(page));
        }
    }
    ErrorPages(pages)
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
