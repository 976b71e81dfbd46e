//! Route compression in Pingora's phases (`routes[].compression`), through the decisions in
//! [`super::content_coding`], pingora-core's gzip encoder, [`super::gzip_codec`] and
//! [`super::brotli_codec`]:
//!
//! - a request that may fill the cache asks the origin for `br, gzip` (one stored encoding,
//!   whatever the client accepts);
//! - an uncompressed, compressible response is compressed before it is stored
//!   (`upstream_response_filter`, `upstream_response_body_filter`); on a request that does
//!   not fill the cache, only when the client accepts the route's coding;
//! - the response goes to each client as stored when it accepts the coding, decoded when it
//!   does not (`response_filter`, `response_body_filter`); a range is served from the stored
//!   bytes in the first case, and ignored (a whole `200`) in the second.

use super::brotli_codec::{BrotliDecoder, BrotliEncoder};
use super::content_coding::{self, AcceptEncoding, Fill, Serve, UPSTREAM_ACCEPT_ENCODING};
use super::gzip_codec::GzipDecoder;
use crate::cache::storage::stored_body_len;
use crate::config::{Coding, CompressionSpec};
use crate::metrics::METRICS;
use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING, VARY};
use pingora_cache::CachePhase;
use pingora_core::protocols::http::compression::{Algorithm, Encode};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{RangeType, Session};

/// A body being re-encoded on its way (compressed into the cache, or decoded for a client).
struct Codec {
    coding: Coding,
    encoder: Box<dyn Encode + Send + Sync>,
}

impl Codec {
    /// Feed one piece of body (`None`: none) through; `end` flushes what is left.
    fn feed(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        let input = body.as_deref().unwrap_or_default();
        let out = self.encoder.encode(input, end)?;
        // an empty piece is never passed on: to a chunked writer it would end the body
        *body = (!out.is_empty()).then_some(out);
        Ok(())
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("coding", &self.coding)
            .finish()
    }
}

/// The re-encodings under way for one request.
#[derive(Debug, Default)]
pub struct Transcoding {
    /// The origin's body, compressed before the cache and the client see it.
    fill: Option<Codec>,
    /// The response's body, decoded for the client.
    serve: Option<Codec>,
}

/// A compressor for `coding` (gzip: pingora-core's; brotli: [`BrotliEncoder`]).
fn compressor(coding: Coding, level: u32) -> Result<Box<dyn Encode + Send + Sync>> {
    match coding {
        Coding::Br => Ok(Box::new(BrotliEncoder::new(level))),
        Coding::Gzip => Algorithm::Gzip
            .compressor(level)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no gzip compressor")),
    }
}

/// A decoder for `coding` ([`GzipDecoder`], [`BrotliDecoder`]).
fn decoder(coding: Coding) -> Box<dyn Encode + Send + Sync> {
    match coding {
        Coding::Br => Box::new(BrotliDecoder::new()),
        Coding::Gzip => Box::new(GzipDecoder::new()),
    }
}

/// `upstream_request_filter`: a request that may fill the cache asks for every coding verge
/// decodes, replacing the client's `Accept-Encoding`.
pub fn upstream_request(
    upstream: &mut RequestHeader,
    spec: Option<&CompressionSpec>,
    fills: bool,
) -> Result<()> {
    if spec.is_some() && fills {
        upstream.insert_header(ACCEPT_ENCODING, UPSTREAM_ACCEPT_ENCODING)?;
    }
    Ok(())
}

/// `upstream_response_filter` (before the cache sees the head): start compressing the body
/// when the response is one to compress, and mark a coded response `Vary: Accept-Encoding`.
pub fn origin_head(
    req: &RequestHeader,
    upstream: &mut ResponseHeader,
    spec: &CompressionSpec,
    fills: bool,
    state: &mut Transcoding,
) -> Result<()> {
    if upstream.status.is_informational() {
        return Ok(());
    }
    if upstream.status == http::StatusCode::NOT_MODIFIED {
        // a 304's fields replace the stored ones: a `Vary` it carries must keep the coding's
        if upstream.headers.contains_key(VARY) {
            content_coding::add_vary_accept_encoding(upstream)?;
        }
        return Ok(());
    }
    // a fill asks for the whole response even for a HEAD (pingora sends GET), and stores it
    let head = req.method == http::Method::HEAD && !fills;
    match content_coding::fill_decision(spec, head, upstream) {
        Fill::Compress(c) if fills || client_accepts(req).accepts(c) => {
            let encoder = compressor(c, spec.level)?;
            content_coding::compressed_head(upstream, c)?;
            state.fill = Some(Codec { coding: c, encoder });
        }
        _ if content_coding::content_coding(upstream).is_some() => {
            content_coding::add_vary_accept_encoding(upstream)?;
        }
        _ => {}
    }
    Ok(())
}

/// `upstream_response_body_filter`: compress the piece; at the end, count the body's bytes
/// before and after.
pub fn origin_body(
    body: &mut Option<Bytes>,
    end: bool,
    route: &str,
    state: &mut Transcoding,
) -> Result<()> {
    let Some(codec) = state.fill.as_mut() else {
        return Ok(());
    };
    codec.feed(body, end)?;
    if end {
        let (_, input, output, _) = codec.encoder.stat();
        let labels = [route, codec.coding.token()];
        METRICS
            .compressed_responses
            .with_label_values(&labels)
            .inc();
        METRICS
            .compression_input_bytes
            .with_label_values(&labels)
            .inc_by(input as u64);
        METRICS
            .compression_output_bytes
            .with_label_values(&labels)
            .inc_by(output as u64);
        state.fill = None;
    }
    Ok(())
}

fn client_accepts(req: &RequestHeader) -> AcceptEncoding {
    AcceptEncoding::parse(
        req.headers
            .get_all(ACCEPT_ENCODING)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// Whether the response goes to this client decoded.
fn decodes(req: &RequestHeader, resp: &ResponseHeader) -> Option<Coding> {
    match content_coding::serve_decision(&client_accepts(req), resp) {
        Serve::Decode(c) => Some(c),
        Serve::AsStored => None,
    }
}

/// The most ranges one request may ask for (Pingora's default).
const MAX_RANGES: usize = 200;

/// `range_header_filter`: the range to serve (Pingora's single- and multi-range rules), except
/// on a compressing route where the response goes to this client decoded: then none, and the
/// whole response goes out.
pub fn range_type(session: &mut Session, resp: &mut ResponseHeader, compresses: bool) -> RangeType {
    if compresses {
        match range_allowed(session, resp) {
            Ok(true) => {}
            Ok(false) => return RangeType::None,
            Err(e) => {
                log::warn!("compression: no range served: {e}");
                return RangeType::None;
            }
        }
    }
    pingora_proxy::range_header_filter(session.req_header(), resp, Some(MAX_RANGES))
}

/// Before a range is applied: `false` when the response goes to this client decoded (offsets
/// into the stored bytes mean nothing in the decoded ones). Otherwise a stored coded response,
/// whose length was unknown when it was stored, announces it, so its ranges can be served from
/// the stored bytes.
fn range_allowed(session: &mut Session, resp: &mut ResponseHeader) -> Result<bool> {
    if decodes(session.req_header(), resp).is_some() {
        return Ok(false);
    }
    let reads_stored = matches!(
        session.cache.phase(),
        CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating | CachePhase::Revalidated
    );
    if reads_stored
        && resp.status == http::StatusCode::OK
        && !resp.headers.contains_key(CONTENT_LENGTH)
        && content_coding::content_coding(resp).is_some()
    {
        if let Some(len) = stored_body_len(session.cache.hit_handler()) {
            resp.remove_header(&TRANSFER_ENCODING);
            resp.insert_header(CONTENT_LENGTH, len)?;
        }
    }
    Ok(true)
}

/// `response_filter`: when the client does not accept the response's coding, decode it.
pub fn client_head(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    route: &str,
    state: &mut Transcoding,
) -> Result<()> {
    if resp.status.is_informational() {
        return Ok(());
    }
    let Some(coding) = decodes(req, resp) else {
        return Ok(());
    };
    content_coding::decoded_head(resp)?;
    let bodiless = req.method == http::Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
    if !bodiless {
        let encoder = decoder(coding);
        state.serve = Some(Codec { coding, encoder });
        METRICS
            .decompressed_responses
            .with_label_values(&[route, coding.token()])
            .inc();
    }
    Ok(())
}

/// `response_body_filter`: decode the piece for the client.
pub fn client_body(body: &mut Option<Bytes>, end: bool, state: &mut Transcoding) -> Result<()> {
    let Some(codec) = state.serve.as_mut() else {
        return Ok(());
    };
    codec.feed(body, end)?;
    if end {
        state.serve = None;
    }
    Ok(())
}
