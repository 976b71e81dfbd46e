//! The answers verge writes itself (refusals, routing misses, purges, proxy failures): a short
//! plain text, or the route's or listener's custom page for the status (`error_pages`), with
//! the request id; and which status a failure becomes.

use super::context::RequestCtx;
use super::request_id;
use crate::config::ErrorPage;
use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Write a short plain-text response that verge generated itself, and close the connection
/// after it.
pub async fn respond_plain(session: &mut Session, status: u16, text: &str) -> Result<()> {
    respond_local(session, status, text, &[]).await
}

/// verge's own answer for a routed (or refused) request: the custom page for `status` of the
/// request's route or listener when there is one, else `text`; with the request id in a field
/// and in the body, and extra `fields` (`Location`, `Retry-After`).
pub async fn answer(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    text: &str,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    let id = ctx.request_id.as_deref();
    let mut all = fields.to_vec();
    if let Some(id) = id {
        all.push((request_id::HEADER, id));
    }
    match ctx.error_page(status) {
        Some(page) => respond_page(session, status, page, id, &all).await,
        None => {
            let text = request_id::on_local_answer(text, id);
            respond_local(session, status, &text, &all).await
        }
    }
}

/// Write a custom error page, its variables filled in, and close the connection after it.
async fn respond_page(
    session: &mut Session,
    status: u16,
    page: &ErrorPage,
    id: Option<&str>,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    let body = Bytes::from(page.render(status, id));
    write_local(session, status, page.content_type.as_bytes(), body, fields).await
}

/// [`respond_plain`] with extra fields (`Location`, `Retry-After`, `X-Request-Id`).
pub async fn respond_local(
    session: &mut Session,
    status: u16,
    text: &str,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    let body = Bytes::from(format!("{text}\n"));
    write_local(session, status, b"text/plain; charset=utf-8", body, fields).await
}

async fn write_local(
    session: &mut Session,
    status: u16,
    content_type: &[u8],
    body: Bytes,
    fields: &[(&'static str, &str)],
) -> Result<()> {
    let resp = local_head(status, content_type, body.len(), fields)?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The head of an answer verge writes itself, before the writer adds `Date` and `Connection`
/// (the connection closes after it).
pub fn local_head(
    status: u16,
    content_type: &[u8],
    body_len: usize,
    fields: &[(&'static str, &str)],
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4 + fields.len()))?;
    for (name, value) in fields {
        resp.insert_header(*name, *value)?;
    }
    resp.insert_header("content-type", content_type.to_vec())?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("server", "verge")?;
    Ok(resp)
}

/// The status a client gets for a failure verge could not proxy around (0: none, the client
/// is gone).
pub fn failure_status(e: &Error) -> u16 {
    if let Some(refusal) = super::request_body::BodyRefusal::behind(e) {
        return refusal.status();
    }
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// The body of the error page for `code`, unless the request said why it failed.
pub fn failure_text(code: u16, why: Option<&str>) -> String {
    if let Some(why) = why {
        return why.to_string();
    }
    match code {
        504 => "verge: upstream timed out",
        502 => "verge: bad gateway",
        408 => "verge: request timed out",
        400 => "verge: bad request",
        _ => "verge: internal error",
    }
    .to_string()
}

/// Whether a final response head has gone to the client already: anything but an interim 1xx
/// (a 101 is final: the connection is a tunnel from then on). After one, an error page would
/// be read as the end of that response's body; closing the connection is the only honest
/// signal left.
pub fn final_head_sent(written: Option<&ResponseHeader>) -> bool {
    written.is_some_and(|r| {
        !r.status.is_informational() || r.status == http::StatusCode::SWITCHING_PROTOCOLS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_only_before_a_final_head() {
        let head = |status| ResponseHeader::build(status, None).expect("resp");
        assert!(!final_head_sent(None));
        assert!(!final_head_sent(Some(&head(100))));
        assert!(!final_head_sent(Some(&head(103))));
        assert!(final_head_sent(Some(&head(101))), "a tunnel");
        assert!(final_head_sent(Some(&head(200))));
        assert!(final_head_sent(Some(&head(502))));
    }

    #[test]
    fn statuses_for_failures() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        assert_eq!(failure_status(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(failure_status(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(failure_status(&Error::new(ErrorType::HTTPStatus(502))), 502);
        assert_eq!(failure_status(&Error::new(ErrorType::InternalError)), 500);
        assert_eq!(failure_text(504, None), "verge: upstream timed out");
        assert_eq!(failure_text(502, Some("why")), "why");
    }
}
