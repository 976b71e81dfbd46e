//! The request as the cache's decisions read it: method, version and fields. Both ways in fill
//! it: the full path from Pingora's parsed head, the hit lane from the field lines the front
//! door's scan found in the raw head. Every request rule (bypass, directives) takes this view,
//! so a rule added for one path holds for the other by construction.

use crate::http_syntax::head_index::FieldSpan;
use http::{HeaderMap, Method, Version};
use pingora_cache::cache_control::CacheControl;
use pingora_http::RequestHeader;

/// A request's method, version and fields, whichever parser read them.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    method: &'a Method,
    version: Version,
    fields: Fields<'a>,
}

#[derive(Clone, Copy)]
enum Fields<'a> {
    /// Pingora's parsed head.
    Map(&'a HeaderMap),
    /// Field lines where the front door's scan found them in the raw head (the first slice),
    /// in order.
    Indexed(&'a [u8], &'a [FieldSpan]),
}

impl<'a> RequestView<'a> {
    /// The view of a head Pingora parsed.
    pub fn from_head(req: &'a RequestHeader) -> Self {
        RequestView {
            method: &req.method,
            version: req.version,
            fields: Fields::Map(&req.headers),
        }
    }

    /// The view of a raw `head` whose field lines lie at `fields` (the hit lane).
    pub fn from_index(
        method: &'a Method,
        version: Version,
        head: &'a [u8],
        fields: &'a [FieldSpan],
    ) -> Self {
        RequestView {
            method,
            version,
            fields: Fields::Indexed(head, fields),
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The HTTP version of the request.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The values of every field line named `name` (lowercase), in order.
    pub fn values(&self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (map, indexed) = match self.fields {
            Fields::Map(m) => (Some(m), None),
            Fields::Indexed(head, spans) => (None, Some((head, spans))),
        };
        let from_map = map
            .into_iter()
            .flat_map(move |m| m.get_all(name).into_iter().map(|v| v.as_bytes()));
        let from_index = indexed.into_iter().flat_map(move |(head, spans)| {
            spans
                .iter()
                .filter(move |f| f.name(head).eq_ignore_ascii_case(name.as_bytes()))
                .map(move |f| f.value(head))
        });
        from_map.chain(from_index)
    }

    /// Whether the request has a field named `name` (lowercase).
    pub fn contains(&self, name: &'static str) -> bool {
        self.values(name).next().is_some()
    }

    /// The request's `Cache-Control`, parsed as pingora-cache parses it; `None` without one.
    pub fn cache_control(&self) -> Option<CacheControl> {
        match self.fields {
            Fields::Map(m) => CacheControl::from_headers_named("cache-control", m),
            Fields::Indexed(..) => {
                let mut lines = self.values("cache-control").peekable();
                lines.peek()?;
                let mut map = HeaderMap::new();
                for value in lines {
                    // a value the scan took but `http` does not is no directive of ours
                    if let Ok(v) = http::HeaderValue::from_bytes(value) {
                        map.append(http::header::CACHE_CONTROL, v);
                    }
                }
                CacheControl::from_headers_named("cache-control", &map)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_syntax::head_index::HeadIndex;

    #[test]
    fn both_parsers_give_the_same_view() {
        let raw = b"GET /a HTTP/1.1\r\nHost: a\r\nCache-Control: max-age=5\r\ncookie: x=1\r\nCache-Control: no-cache\r\n\r\n";
        // the field lines as the front door's scan indexes them: name, then value after ": "
        let mut index = HeadIndex::new();
        let mut at = raw.iter().position(|b| *b == b'\n').expect("line") + 1;
        while raw[at] != b'\r' {
            let end = at + raw[at..].iter().position(|b| *b == b'\r').expect("end");
            let colon = at + raw[at..end].iter().position(|b| *b == b':').expect(":");
            index.push_field((at, colon), (colon + 2, end));
            at = end + 2;
        }
        let spans = index.fields().expect("indexed");
        let lane = RequestView::from_index(&Method::GET, Version::HTTP_11, raw, spans);

        let mut req = RequestHeader::build("GET", b"/a", None).expect("req");
        req.append_header("host", "a").expect("h");
        req.append_header("cache-control", "max-age=5").expect("h");
        req.append_header("cookie", "x=1").expect("h");
        req.append_header("cache-control", "no-cache").expect("h");
        let full = RequestView::from_head(&req);

        for view in [lane, full] {
            assert_eq!(view.method(), Method::GET);
            let values: Vec<&[u8]> = view.values("cache-control").collect();
            assert_eq!(values, [&b"max-age=5"[..], b"no-cache"]);
            assert!(view.contains("cookie"));
            assert!(!view.contains("authorization"));
            let cc = view.cache_control().expect("cc");
            assert!(cc.no_cache());
            assert_eq!(cc.max_age().ok().flatten(), Some(5));
        }
    }
}
