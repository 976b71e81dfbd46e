//! How a cache entry's metadata is kept in memory: pingora's internal fields plus the response
//! header already parsed, so a hit rebuilds its `CacheMeta` without the zstd decompression and
//! header reparse of `CacheMeta::deserialize`, and a write skips the header compression of
//! `CacheMeta::serialize`.

use crate::config::Coding;
use http::Version;
use once_cell::sync::Lazy;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use serde::Serialize;
use std::time::SystemTime;

/// pingora-cache's `InternalMetaV2`, field for field in its order, so `rmp_serde` encodes it to
/// the bytes `CacheMeta::deserialize` reads (checked against pingora's own encoding in tests).
#[derive(Debug, Clone, Serialize)]
struct InternalMetaV2 {
    version: u8,
    fresh_until: SystemTime,
    created: SystemTime,
    updated: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
    provenance: Option<SystemTime>,
}

/// The compressed form of a header with no fields: handed to `CacheMeta::deserialize` in place
/// of the real header, which is then swapped in already parsed.
static EMPTY_HEADER: Lazy<Option<Vec<u8>>> = Lazy::new(|| {
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    let now = SystemTime::now();
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .ok()
        .map(|(_, h)| h)
});

/// A copy of `header` whose field names and values live in one allocation of their own size,
/// which every field of the copy shares. A header parsed from the origin's response shares one
/// buffer (the whole read buffer, several KiB) with every value in it; stored as it is, each
/// entry would keep that buffer alive (about 9 KiB per entry, measured, against a few hundred
/// bytes of fields). One small allocation per name and value would cost their allocator
/// overhead on every field instead.
fn owned_header(header: &ResponseHeader) -> Result<ResponseHeader> {
    let fields = header.headers.len();
    let cased = header.has_case();
    // (name, value) spans in `all`; without case only values are copied
    let mut spans = Vec::with_capacity(fields);
    let total: usize = if cased {
        header
            .case_header_iter()
            .map(|(n, v)| n.as_slice().len() + v.len())
            .sum()
    } else {
        header.headers.values().map(http::HeaderValue::len).sum()
    };
    let mut all = bytes::BytesMut::with_capacity(total);
    let mut keep = |name: &[u8], value: &[u8], all: &mut bytes::BytesMut| {
        let n = all.len();
        all.extend_from_slice(name);
        let v = all.len();
        all.extend_from_slice(value);
        spans.push((n..v, v..all.len()));
    };
    if cased {
        for (name, value) in header.case_header_iter() {
            keep(name.as_slice(), value.as_bytes(), &mut all);
        }
    } else {
        for value in header.headers.values() {
            keep(b"", value.as_bytes(), &mut all);
        }
    }
    let all = all.freeze();
    let value = |i: usize, sensitive: bool| {
        let (_, v) = spans
            .get(i)
            .ok_or_else(|| meta_error("stored header changed while copied"))?;
        let mut copy = http::HeaderValue::from_maybe_shared(all.slice(v.clone()))
            .map_err(|_| meta_error("stored header value is invalid"))?;
        copy.set_sensitive(sensitive);
        Ok::<_, Box<Error>>(copy)
    };
    let mut copy = if cased {
        let mut copy = ResponseHeader::build(header.status, Some(fields))?;
        for (i, (_, v)) in header.case_header_iter().enumerate() {
            let name = spans.get(i).map(|(n, _)| all.slice(n.clone()));
            let name = name.ok_or_else(|| meta_error("stored header changed while copied"))?;
            copy.append_header(name, value(i, v.is_sensitive())?)?;
        }
        copy
    } else {
        let mut copy = ResponseHeader::build_no_case(header.status, Some(fields))?;
        for (i, (name, v)) in header.headers.iter().enumerate() {
            copy.append_header(name.clone(), value(i, v.is_sensitive())?)?;
        }
        copy
    };
    copy.set_version(header.version);
    copy.set_reason_phrase(header.get_reason_phrase())?;
    Ok(copy)
}

/// Bytes a stored header field costs beyond its name and value: a slot in the header map and
/// one in its case map (about 100 bytes each), and the allocations of its owned copies.
const FIELD_OVERHEAD: usize = 256;

/// One entry's metadata, ready to become a `CacheMeta` again.
#[derive(Debug)]
pub struct StoredMeta {
    fields: InternalMetaV2,
    /// pingora's encoding of `fields`, kept only for an entry `CacheMeta::new` cannot rebuild
    /// (revalidated or refetched: `updated` or `provenance` differ from `created`).
    internal: Option<Vec<u8>>,
    header: ResponseHeader,
    /// The head a plain hit sends (see [`ClientHead`]); `None` when the entry is not one the
    /// front door may answer by itself.
    client_head: Option<ClientHead>,
}

/// The HTTP/1.1 head of a stored `200` with no variance, as every hit sends it before the
/// per-request fields: status line and stored fields in their stored order and case, without
/// the fields verge keeps from clients ([`super::rfc9111::CLIENT_HIDDEN_HEADERS`]) and without
/// `Age`, `Accept-Ranges` and `Connection`, which each response sets. No final empty line.
///
/// Its `Vary` is none, or only `Accept-Encoding` on a body stored in a content coding verge
/// decodes (`br`, `gzip`): what a compressing route stores, served as stored to a client that
/// accepts the coding. Otherwise it has one `Content-Length` and no `Transfer-Encoding`; a
/// coded body verge compressed as it stored it has none, and its hits announce the stored
/// length after the stored fields, as the full path does.
#[derive(Debug)]
pub struct ClientHead {
    /// The bytes, ending with the last stored field's CRLF.
    pub bytes: bytes::Bytes,
    /// The `Content-Length` it announces; `None`: a coded body stored without one.
    pub content_length: Option<usize>,
    /// Whether it carries a `Date` (a response stored without one gets the time it is served).
    pub has_date: bool,
    /// The content coding of a body stored under `Vary: Accept-Encoding`.
    pub coding: Option<Coding>,
}

/// The coding of a head whose only `Vary` is `Accept-Encoding` and whose `Content-Encoding` is
/// one coding verge decodes: `Some(None)` for a head without `Vary`, `None` for any other.
fn varied_coding(fields: &http::HeaderMap) -> Option<Option<Coding>> {
    use http::header::{CONTENT_ENCODING, VARY};
    let mut varies = fields
        .get_all(VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|n| !n.is_empty());
    match (varies.next(), varies.next()) {
        (None, _) => Some(None),
        (Some(name), None) if name.eq_ignore_ascii_case(b"accept-encoding") => {
            let mut codings = fields.get_all(CONTENT_ENCODING).iter();
            match (codings.next(), codings.next()) {
                (Some(one), None) => one.to_str().ok().and_then(Coding::from_token).map(Some),
                _ => None,
            }
        }
        _ => None,
    }
}

impl ClientHead {
    /// The head for `header`, when a hit on it can be answered as stored.
    fn of(header: &ResponseHeader, variance: Option<HashBinary>) -> Option<ClientHead> {
        use http::header;
        let fields = &header.headers;
        if header.status != http::StatusCode::OK || variance.is_some() {
            return None;
        }
        let coding = varied_coding(fields)?;
        let lengths = fields.get_all(header::CONTENT_LENGTH).iter().count();
        let content_length = match lengths {
            1 if !fields.contains_key(header::TRANSFER_ENCODING) => Some(
                fields
                    .get(header::CONTENT_LENGTH)?
                    .to_str()
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?,
            ),
            // the full path takes a coded body's length from the stored bytes (and drops a
            // stored `Transfer-Encoding`)
            0 if coding.is_some() => None,
            _ => return None,
        };
        let mut client = header.clone();
        for name in super::rfc9111::CLIENT_HIDDEN_HEADERS.iter().chain([
            &header::AGE,
            &header::ACCEPT_RANGES,
            &header::CONNECTION,
            &header::TRANSFER_ENCODING,
        ]) {
            client.remove_header(name);
        }
        let mut bytes = bytes::BytesMut::with_capacity(256);
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        client.header_to_h1_wire(&mut bytes);
        Some(ClientHead {
            bytes: bytes.freeze(),
            content_length,
            has_date: fields.contains_key(header::DATE),
            coding,
        })
    }
}

fn meta_error(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

impl StoredMeta {
    /// Capture `meta` for storage.
    pub fn from_meta(meta: &CacheMeta) -> Result<Self> {
        let fields = InternalMetaV2 {
            version: 2,
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            updated: meta.updated(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
            provenance: Some(meta.provenance()),
        };
        let simple = fields.updated == fields.created && fields.provenance == Some(fields.created);
        let internal = if simple {
            None
        } else {
            Some(
                rmp_serde::encode::to_vec(&fields)
                    .map_err(|_| meta_error("cannot encode cache meta"))?,
            )
        };
        let mut header = owned_header(meta.response_header())?;
        // what pingora's header serialization keeps: HTTP/1.x version, canonical reason phrase
        if header.version != Version::HTTP_10 {
            header.set_version(Version::HTTP_11);
        }
        header.set_reason_phrase(None)?;
        let client_head = ClientHead::of(&header, fields.variance);
        Ok(StoredMeta {
            fields,
            internal,
            header,
            client_head,
        })
    }

    /// A fresh `CacheMeta` equal to the one stored.
    pub fn to_meta(&self) -> Result<CacheMeta> {
        let Some(internal) = &self.internal else {
            let f = &self.fields;
            let mut meta = CacheMeta::new(
                f.fresh_until,
                f.created,
                f.stale_while_revalidate_sec,
                f.stale_if_error_sec,
                self.header.clone(),
            );
            if let Some(v) = f.variance {
                meta.set_variance(v);
            }
            if let Some(epoch) = f.epoch_override {
                meta.set_epoch_override(epoch);
            }
            return Ok(meta);
        };
        let empty = EMPTY_HEADER
            .as_deref()
            .ok_or_else(|| meta_error("header serializer unavailable"))?;
        let mut meta = CacheMeta::deserialize(internal, empty)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    /// The stored response header.
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// The head a plain hit on this entry sends, if the front door may answer it by itself.
    pub fn client_head(&self) -> Option<&ClientHead> {
        self.client_head.as_ref()
    }

    /// Until when the entry is fresh (pingora's `CacheMeta::fresh_until`).
    pub fn fresh_until(&self) -> SystemTime {
        self.fields.fresh_until
    }

    /// When the entry was admitted (pingora's `CacheMeta::created`).
    pub fn created(&self) -> SystemTime {
        self.fields.created
    }

    /// The entry's age at `now`, as pingora's `CacheMeta::age` computes it: from the epoch
    /// override if set, else from the last update.
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        let f = &self.fields;
        now.duration_since(f.epoch_override.unwrap_or(f.updated))
            .unwrap_or_default()
    }

    /// Bytes charged for this metadata: the internal fields, the header as it would be sent plus
    /// what holding each field costs (two map slots, with its name's case, and the owned name
    /// and value), and the client head kept for plain hits.
    pub fn size(&self) -> usize {
        let fields: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4 + FIELD_OVERHEAD)
            .sum();
        std::mem::size_of::<InternalMetaV2>()
            + self.internal.as_ref().map_or(0, Vec::len)
            + 16
            + fields
            + self.client_head.as_ref().map_or(0, |h| h.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        header
            .append_header("Content-Type", "text/plain")
            .expect("h");
        header.append_header("ETag", "\"v1\"").expect("h");
        header.append_header("x-multi", "a").expect("h");
        header.append_header("x-multi", "b").expect("h");
        CacheMeta::new(now + Duration::from_secs(60), now, 7, 9, header)
    }

    /// The client head of a stored `200` with these fields (and this variance).
    fn client_head(fields: &[(&str, &str)], variance: Option<HashBinary>) -> Option<ClientHead> {
        let mut header = ResponseHeader::build(200, None).expect("header");
        for (name, value) in fields {
            header.append_header(name.to_string(), *value).expect("h");
        }
        ClientHead::of(&header, variance)
    }

    #[test]
    fn a_coded_body_under_vary_accept_encoding_alone_has_a_client_head() {
        let plain = client_head(&[("content-length", "5")], None).expect("plain");
        assert_eq!((plain.content_length, plain.coding), (Some(5), None));
        // what a compressing route stores when it compressed the body: no length
        let compressed = [
            ("content-encoding", "br"),
            ("vary", "Accept-Encoding"),
            ("transfer-encoding", "chunked"),
        ];
        let head = client_head(&compressed, None).expect("coded");
        assert_eq!((head.content_length, head.coding), (None, Some(Coding::Br)));
        let text = String::from_utf8_lossy(&head.bytes).to_ascii_lowercase();
        assert!(!text.contains("transfer-encoding"), "{text}");
        // the origin's compressed body keeps its length
        let sent = [
            ("content-encoding", "x-gzip"),
            ("content-length", "9"),
            ("vary", "accept-encoding"),
        ];
        let head = client_head(&sent, None).expect("coded");
        assert_eq!(
            (head.content_length, head.coding),
            (Some(9), Some(Coding::Gzip))
        );
        for other in [
            // another field varies, or the coding is not one verge decodes, or there are two
            &[
                ("vary", "Accept-Encoding, Cookie"),
                ("content-encoding", "br"),
            ][..],
            &[
                ("vary", "Accept-Encoding"),
                ("vary", "Origin"),
                ("content-encoding", "br"),
            ],
            &[("vary", "*"), ("content-length", "1")],
            &[("vary", "Accept-Encoding"), ("content-encoding", "zstd")],
            &[
                ("vary", "Accept-Encoding"),
                ("content-encoding", "gzip, br"),
            ],
            &[("vary", "Accept-Encoding"), ("content-length", "1")],
            // a body without a coding needs its length
            &[("transfer-encoding", "chunked")],
        ] {
            assert!(client_head(other, None).is_none(), "{other:?}");
        }
        assert!(
            client_head(&compressed, Some([7; 16])).is_none(),
            "a variant"
        );
    }

    fn wire(meta: &CacheMeta) -> String {
        let mut buf = Vec::new();
        meta.response_header().header_to_h1_wire(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn assert_same(a: &CacheMeta, b: &CacheMeta) {
        assert_eq!(a.fresh_until(), b.fresh_until());
        assert_eq!(a.created(), b.created());
        assert_eq!(a.updated(), b.updated());
        assert_eq!(a.provenance(), b.provenance());
        assert_eq!(
            a.stale_while_revalidate_sec(),
            b.stale_while_revalidate_sec()
        );
        assert_eq!(a.stale_if_error_sec(), b.stale_if_error_sec());
        assert_eq!(a.variance(), b.variance());
        assert_eq!(a.epoch_override(), b.epoch_override());
        assert_eq!(a.response_header().status, b.response_header().status);
        assert_eq!(a.headers(), b.headers());
    }

    fn encoded(meta: &CacheMeta) -> Vec<u8> {
        let ours = StoredMeta::from_meta(meta).expect("store");
        rmp_serde::encode::to_vec(&ours.fields).expect("encode")
    }

    /// A meta as pingora leaves it after a revalidation: admitted earlier than last updated,
    /// with an older provenance. Only reachable through pingora's own decoding.
    fn revalidated() -> CacheMeta {
        let now = SystemTime::now();
        let fields = InternalMetaV2 {
            version: 2,
            fresh_until: now + Duration::from_secs(60),
            created: now - Duration::from_secs(20),
            updated: now - Duration::from_secs(5),
            stale_while_revalidate_sec: 1,
            stale_if_error_sec: 2,
            variance: Some([4; 16]),
            epoch_override: None,
            provenance: Some(now - Duration::from_secs(50)),
        };
        let internal = rmp_serde::encode::to_vec(&fields).expect("encode");
        let (_, header) = sample().serialize().expect("serialize");
        CacheMeta::deserialize(&internal, &header).expect("pingora decodes our encoding")
    }

    #[test]
    fn encodes_the_bytes_pingora_does() {
        let mut meta = sample();
        assert_eq!(encoded(&meta), meta.serialize().expect("serialize").0);
        meta.set_variance_key([3; 16]);
        meta.set_epoch_override(SystemTime::now() - Duration::from_secs(5));
        assert_eq!(encoded(&meta), meta.serialize().expect("serialize").0);
        let meta = revalidated();
        assert_eq!(encoded(&meta), meta.serialize().expect("serialize").0);
    }

    #[test]
    fn new_entries_take_the_fast_path_and_refreshed_ones_keep_every_field() {
        let fresh = StoredMeta::from_meta(&sample()).expect("store");
        assert!(fresh.internal.is_none());
        let meta = revalidated();
        let stored = StoredMeta::from_meta(&meta).expect("store");
        assert!(stored.internal.is_some());
        let back = stored.to_meta().expect("load");
        assert_same(&meta, &back);
        assert!(back.created() < back.updated());
        assert!(back.provenance() < back.created());
    }

    #[test]
    fn round_trips_every_field() {
        let mut meta = sample();
        meta.set_variance_key([9; 16]);
        meta.set_epoch_override(SystemTime::now() - Duration::from_secs(30));
        let back = StoredMeta::from_meta(&meta)
            .expect("store")
            .to_meta()
            .expect("load");
        assert_same(&meta, &back);
        // and the same as pingora's own round trip
        let (i, h) = meta.serialize().expect("serialize");
        let theirs = CacheMeta::deserialize(&i, &h).expect("deserialize");
        assert_same(&theirs, &back);
        assert_eq!(wire(&back), wire(&theirs));
    }

    #[test]
    fn stored_fields_do_not_share_the_buffer_they_were_parsed_from() {
        let read = bytes::Bytes::from(vec![b'v'; 4096]);
        let mut header = ResponseHeader::build(200, None).expect("header");
        header
            .append_header(
                "X-Shared",
                http::HeaderValue::from_maybe_shared(read.slice(0..3)).expect("value"),
            )
            .expect("h");
        header
            .append_header("cache-control", "max-age=5")
            .expect("h");
        let now = SystemTime::now();
        let stored = StoredMeta::from_meta(&CacheMeta::new(now, now, 0, 0, header)).expect("store");
        let value = stored.header().headers.get("x-shared").expect("kept");
        assert_eq!(value.as_bytes(), b"vvv");
        let shared = read.as_ptr_range();
        assert!(
            !shared.contains(&value.as_bytes().as_ptr()),
            "copied out of the read buffer"
        );
        let wire = {
            let mut buf = Vec::new();
            stored.header().header_to_h1_wire(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        };
        assert!(wire.contains("X-Shared: vvv"), "{wire}");
    }

    #[test]
    fn keeps_header_name_case_and_counts_size() {
        let stored = StoredMeta::from_meta(&sample()).expect("store");
        let back = stored.to_meta().expect("load");
        let wire = wire(&back);
        assert!(wire.contains("Content-Type: text/plain"), "{wire}");
        assert!(stored.size() > "Content-Type: text/plain".len());
    }
}
