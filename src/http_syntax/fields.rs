//! Field values verge reads the same way everywhere: the tokens of `Connection`, a cookie's
//! value.

/// The field names a message lists in `Connection` (lowercase), which belong to that one
/// connection only (RFC 9110 §7.6.1).
pub fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect()
}

/// The value of cookie `name` in the `Cookie` fields of `headers`.
pub fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes())
                .then(|| pair[eq + 1..].trim_ascii().to_vec())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; sid = xyz ;b=2"),
        );
        assert_eq!(cookie_value(&headers, "sid"), Some(b"xyz".to_vec()));
        assert_eq!(cookie_value(&headers, "b"), Some(b"2".to_vec()));
        assert_eq!(cookie_value(&headers, "c"), None);
    }

    #[test]
    fn connection_lists_field_names_only() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close, X-Hop"),
        );
        headers.append(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive,,te"),
        );
        assert_eq!(connection_tokens(&headers), ["x-hop", "te"]);
    }
}
