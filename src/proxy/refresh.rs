//! Background refreshes of stored responses (stale-while-revalidate, early refresh). Pingora runs
//! each one as a subrequest that it rebuilds from the client's request head written as HTTP/1
//! text (`HttpSession::to_h1_raw`), so that head must read as HTTP/1.1: an HTTP/2 head would
//! be written with the version `HTTP/2` and no `Host` (HTTP/2 carries `:authority` instead), the
//! subrequest's HTTP/1 parser refuses it, and the refresh never reaches the origin (its cache
//! lock is dropped unreleased: "Dangling cache lock").

use pingora_error::Result;
use pingora_http::RequestHeader;

/// Make an HTTP/2 request head one Pingora can rebuild as an HTTP/1.1 request: version
/// HTTP/1.1, and a `Host` from the `:authority` when the client sent none (what an HTTP/2 to
/// HTTP/1.1 gateway must do anyway, RFC 9113 §8.3.1). Returns `true` when the head was
/// HTTP/2 (and changed), so the caller can put the version back afterwards with
/// [`restore_h2_version`]; other versions are left alone.
pub fn h1_head_for_subrequest(req: &mut RequestHeader) -> Result<bool> {
    if req.version != http::Version::HTTP_2 {
        return Ok(false);
    }
    if !req.headers.contains_key(http::header::HOST) {
        if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
            req.insert_header(http::header::HOST, authority)?;
        }
    }
    req.set_version(http::Version::HTTP_11);
    Ok(true)
}

/// Undo the version change of [`h1_head_for_subrequest`] (the `Host` it added stays: it names
/// the same authority).
pub fn restore_h2_version(req: &mut RequestHeader) {
    req.set_version(http::Version::HTTP_2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h2_request(uri: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).expect("req");
        req.set_uri(http::Uri::try_from(uri).expect("uri"));
        req.set_version(http::Version::HTTP_2);
        req
    }

    /// What Pingora hands the subrequest's HTTP/1 parser.
    fn wire(req: &RequestHeader) -> String {
        let buf =
            pingora_core::protocols::http::v1::client::http_req_header_to_wire(req).expect("wire");
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[test]
    fn an_h2_head_reads_as_http11_with_a_host() {
        let mut req = h2_request("https://example.com:8443/a?b=1");
        req.insert_header("accept", "text/html").expect("h");
        assert!(wire(&req).starts_with("GET /a?b=1 HTTP/2\r\n"));
        assert!(h1_head_for_subrequest(&mut req).expect("ok"));
        let text = wire(&req);
        assert!(text.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{text}");
        assert_eq!(
            req.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"example.com:8443"[..])
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nhost: example.com:8443\r\n"),
            "{text}"
        );
        restore_h2_version(&mut req);
        assert_eq!(req.version, http::Version::HTTP_2);
    }

    #[test]
    fn a_host_the_client_sent_is_kept() {
        let mut req = h2_request("https://example.com/a");
        req.insert_header("host", "example.com").expect("h");
        assert!(h1_head_for_subrequest(&mut req).expect("ok"));
        assert_eq!(req.headers.get_all("host").iter().count(), 1);
    }

    #[test]
    fn http1_heads_are_left_alone() {
        let mut req = RequestHeader::build("GET", b"/a", None).expect("req");
        req.insert_header("host", "a.test").expect("h");
        let before = wire(&req);
        assert!(!h1_head_for_subrequest(&mut req).expect("ok"));
        assert_eq!(wire(&req), before);
    }
}
