//! How a cache entry's metadata is kept in memory: pingora's internal fields, and the response
//! head in its HTTP/1.1 wire form, in one allocation of its own size (the head a plain hit sends
//! comes first, so a hit writes it as it is). pingora's `ResponseHeader` (a field map and a
//! name-case map, several times the size of the head) is parsed back from those bytes only when
//! something asks for one: a hit or a revalidation through pingora's phases, a purge that reads
//! tags, the admin listener. A hit rebuilds its `CacheMeta` without the zstd decompression of
//! `CacheMeta::deserialize`, and a write skips the header compression of `CacheMeta::serialize`.

use crate::config::Coding;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, Version};
use once_cell::sync::Lazy;
use pingora_cache::cache_control::InterpretCacheControl;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use serde::Serialize;
use std::num::NonZeroU64;
use std::ops::Range;
use std::sync::OnceLock;
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

/// The status line a [`ClientHead`] starts with.
const STATUS_LINE: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// One entry's metadata, ready to become a `CacheMeta` again.
///
/// `head` holds the stored fields as `Name: value\r\n` lines, names in their stored case. For an
/// entry with a [`ClientHead`] it is that head (status line and the fields a hit sends, in the
/// order it sends them), then the stored fields a hit does not send, then, when that is not
/// the stored order, the stored order: for each stored field in turn, the index of its line, as
/// a little-endian `u16`. For any other entry it is the stored fields alone, in stored order.
/// Outside a client head, a line of one of verge's own fields (`OWN_FIELDS`) is kept with a
/// one-byte token in place of its name and `: ` (`compacted`).
///
/// pingora's `InternalMetaV2` fields are kept apart, without the ones a new entry has equal to
/// `created` (`updated`, `provenance`) and without the constant `version`: those are kept, with
/// pingora's encoding, only for an entry `CacheMeta::new` cannot rebuild (`Refreshed`).
/// 144 bytes: with its `Arc` header it fills a 160-byte size class of the allocator, and the
/// head of a typical entry (five origin fields, three of verge's) a 256-byte one.
#[derive(Debug)]
pub struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    epoch_override: Option<SystemTime>,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    /// What a revalidated or refetched entry keeps beside (`updated` or `provenance` differ
    /// from `created`); behind a thin pointer, as it is rarely there.
    refreshed: Option<Box<Refreshed>>,
    head: Bytes,
    /// Where the field lines end in `head` (and the stored order, if any, begins).
    lines_end: u32,
    /// How many bytes fewer the own fields' tokens made `head`.
    tokenised: u32,
    status: StatusCode,
    /// HTTP/1.0 (otherwise HTTP/1.1, as pingora's header serialization keeps it).
    http10: bool,
    /// Whether the header kept its field names' case (`false`: an HTTP/2 response).
    cased: bool,
    /// What a plain hit needs beside the bytes of its [`ClientHead`]; `None` when the entry is
    /// not one the front door may answer by itself.
    client: Option<ClientFacts>,
}

/// What [`StoredMeta::size`] charges for the struct itself: its size before it dropped the
/// fields `Refreshed` keeps (176 bytes), so the budget holds the same entries as then.
const CHARGED_STRUCT_BYTES: usize = 176;

/// An entry's internal fields as `CacheMeta::new` does not make them (see [`StoredMeta`]).
#[derive(Debug)]
struct Refreshed {
    /// pingora's encoding of every internal field.
    encoded: Box<[u8]>,
    /// pingora's `CacheMeta::updated`.
    updated: SystemTime,
}

/// A [`ClientHead`] as [`StoredMeta`] keeps it, beside its bytes: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct ClientFacts {
    /// Where the head ends in [`StoredMeta::head`].
    end: u32,
    /// [`ClientHead::content_length`] plus one (in 8 bytes, where `Option<usize>` takes 16).
    content_length: Option<NonZeroU64>,
    has_date: bool,
    coding: Option<Coding>,
    /// [`StoredHead::shared_with_credentials`], decided when stored.
    shared_with_credentials: bool,
    /// [`StoredHead::forbids_stale`], decided when stored.
    forbids_stale: bool,
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
#[derive(Debug, Clone, Copy)]
pub struct ClientHead<'a> {
    /// The bytes, ending with the last stored field's CRLF.
    pub bytes: &'a [u8],
    /// The `Content-Length` it announces; `None`: a coded body stored without one.
    pub content_length: Option<usize>,
    /// Whether it carries a `Date` (a response stored without one gets the time it is served).
    pub has_date: bool,
    /// The content coding of a body stored under `Vary: Accept-Encoding`.
    pub coding: Option<Coding>,
}

/// A stored response head, as the checks that read one get it: a `ResponseHeader` at hand, or a
/// stored entry's, parsed when first asked for ([`HeadOnDemand`]).
pub trait StoredHead: std::fmt::Debug + Sync {
    /// The response header.
    fn header(&self) -> &ResponseHeader;

    /// Whether it may answer a request that carries credentials
    /// ([`super::rfc9111::shared_with_credentials`]).
    fn shared_with_credentials(&self) -> bool {
        super::rfc9111::shared_with_credentials(self.header())
    }

    /// Whether its directives forbid serving it stale
    /// ([`super::request_directives::forbids_stale`]).
    fn forbids_stale(&self) -> bool {
        super::request_directives::forbids_stale(self.header())
    }
}

impl StoredHead for ResponseHeader {
    fn header(&self) -> &ResponseHeader {
        self
    }
}

/// A stored entry's response header, parsed from its stored bytes the first time it is asked
/// for, and then kept for as long as this lives (one request), never in the entry. Its fields
/// keep no name case: the checks that read it look fields up by name.
#[derive(Debug)]
pub struct HeadOnDemand<'a> {
    meta: &'a StoredMeta,
    parsed: OnceLock<ResponseHeader>,
}

impl<'a> HeadOnDemand<'a> {
    /// The head of `meta`, not parsed yet.
    pub fn new(meta: &'a StoredMeta) -> Self {
        HeadOnDemand {
            meta,
            parsed: OnceLock::new(),
        }
    }
}

/// The two per-request checks read what was decided when the entry was stored (an entry the
/// hit lane answers always has a client head); only the invalidation checks parse the head.
impl StoredHead for HeadOnDemand<'_> {
    fn header(&self) -> &ResponseHeader {
        self.parsed.get_or_init(|| self.meta.header_as(false))
    }

    fn shared_with_credentials(&self) -> bool {
        match self.meta.client {
            Some(c) => c.shared_with_credentials,
            None => super::rfc9111::shared_with_credentials(self.header()),
        }
    }

    fn forbids_stale(&self) -> bool {
        match self.meta.client {
            Some(c) => c.forbids_stale,
            None => super::request_directives::forbids_stale(self.header()),
        }
    }
}

/// The facts of `header`'s client head (`end` left at 0), when a hit on it can be answered as
/// stored.
fn client_facts(header: &ResponseHeader, variance: Option<HashBinary>) -> Option<ClientFacts> {
    use http::header;
    let fields = &header.headers;
    if header.status != StatusCode::OK || variance.is_some() {
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
                .parse::<usize>()
                .ok()?,
        ),
        // the full path takes a coded body's length from the stored bytes (and drops a
        // stored `Transfer-Encoding`)
        0 if coding.is_some() => None,
        _ => return None,
    };
    // what `rfc9111::shared_with_credentials` and `request_directives::forbids_stale` say, from
    // one parse of the governing directives (each of them parses them anew)
    let governing = super::rfc9111::governing_cache_control(header);
    let cc = governing.as_deref();
    Some(ClientFacts {
        end: 0,
        content_length: match content_length {
            // `u64::MAX` cannot be kept plus one; no body is that long, so no hit could be
            // answered from it anyway
            Some(n) => Some(NonZeroU64::new(u64::try_from(n).ok()?.checked_add(1)?)?),
            None => None,
        },
        has_date: fields.contains_key(header::DATE),
        coding,
        shared_with_credentials: cc.is_some_and(|c| c.allow_caching_authorized_req()),
        forbids_stale: cc.is_some_and(super::rfc9111::refuses_stale),
    })
}

/// The fields a [`ClientHead`] leaves out besides [`super::rfc9111::CLIENT_HIDDEN_HEADERS`]:
/// each response sets its own.
static ALSO_NOT_SENT: [HeaderName; 4] = [
    http::header::AGE,
    http::header::ACCEPT_RANGES,
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
];

/// The fields a [`ClientHead`] leaves out, in the order they are removed from a copy of the
/// stored header. The order matters: `HeaderMap` removes a name by moving its last name into
/// its place, and the client head is in the order that leaves.
fn not_sent() -> impl Iterator<Item = &'static HeaderName> {
    super::rfc9111::CLIENT_HIDDEN_HEADERS
        .iter()
        .chain(&ALSO_NOT_SENT)
}

/// The client head of `header` as it is sent: status line, then a copy of `header` without the
/// fields [`not_sent`] names, in wire form. What [`arranged`] reads off the stored lines
/// without the copy; kept for a header whose wire form has more lines than it has fields
/// (never: a field value holds no line break).
fn client_head_by_clone(header: &ResponseHeader) -> Vec<u8> {
    let mut client = header.clone();
    for name in not_sent() {
        client.remove_header(name);
    }
    let mut bytes = Vec::with_capacity(512);
    bytes.extend_from_slice(STATUS_LINE);
    client.header_to_h1_wire(&mut bytes);
    bytes
}

/// One field name's lines in a stored head's wire form (a name's values are adjacent there).
struct NameLines<'a> {
    name: &'a HeaderName,
    /// Its first line's index, and the number of lines.
    first: usize,
    count: usize,
    /// Where its lines are in the wire form.
    bytes: Range<usize>,
    /// Whether the client head sends it.
    sent: bool,
}

/// The stored head of `header`, whose field lines are `wire` (its wire form), with the client
/// head first (see [`StoredMeta`]), with where that head ends and where the lines end. The
/// same bytes as [`with_client_head`] over [`client_head_by_clone`]'s head, but read off
/// `wire` and the order of `header`'s names: the copy of the header, its removals and its
/// second serialisation are not made. `None` as there.
fn arranged(header: &ResponseHeader, wire: &[u8]) -> Option<(Vec<u8>, usize, usize, usize)> {
    let spans = lines(wire, 0);
    if spans.len() != header.headers.len() {
        let client = client_head_by_clone(header);
        let (head, lines_end) = with_client_head(wire, &client)?;
        let (head, lines_end, tokenised) = compacted(head, client.len(), lines_end);
        return Some((head, client.len(), lines_end, tokenised));
    }
    if spans.len() > usize::from(u16::MAX) + 1 {
        // more lines than the stored order can count
        return None;
    }
    // line `i` of the wire form is the map's `i`th value, names in map order
    let mut names: Vec<NameLines<'_>> = Vec::with_capacity(header.headers.keys_len());
    for (line, ((name, _), span)) in header.headers.iter().zip(&spans).enumerate() {
        match names.last_mut() {
            Some(last) if last.name == name => {
                last.count += 1;
                last.bytes.end = span.end;
            }
            _ => names.push(NameLines {
                name,
                first: line,
                count: 1,
                bytes: span.clone(),
                sent: true,
            }),
        }
    }
    // the client head's names, removed as `HeaderMap::remove` does: the last one moves in
    let mut sent: Vec<usize> = (0..names.len()).collect();
    for gone in not_sent() {
        if let Some(at) = sent.iter().position(|&n| names[n].name == gone) {
            names[sent.swap_remove(at)].sent = false;
        }
    }
    // the client's lines, then the others in stored order; the stored order after them when
    // that differs (the client's names are not the first ones in their stored order)
    let in_order = sent.iter().enumerate().all(|(i, &n)| i == n);
    let order_len = if in_order { 0 } else { 2 * spans.len() };
    // the lines a hit does not send, own fields' ones to be kept with their tokens
    let unsent = || {
        names
            .iter()
            .filter(|n| !n.sent)
            .flat_map(|n| &spans[n.first..n.first + n.count])
            .map(|line| &wire[line.clone()])
    };
    let tokenised: usize = unsent().filter_map(own_token).map(|(_, len)| len - 1).sum();
    let mut head = Vec::with_capacity(STATUS_LINE.len() + wire.len() + order_len - tokenised);
    head.extend_from_slice(STATUS_LINE);
    for &n in &sent {
        head.extend_from_slice(&wire[names[n].bytes.clone()]);
    }
    let client_end = head.len();
    unsent().for_each(|line| push_line(&mut head, line));
    let lines_end = head.len();
    if !in_order {
        // where each stored line is among the head's lines
        let mut place = vec![0u16; spans.len()];
        let mut next = 0u16;
        let unsent = names.iter().filter(|n| !n.sent);
        for n in sent.iter().map(|&n| &names[n]).chain(unsent) {
            for at in &mut place[n.first..n.first + n.count] {
                *at = next;
                next = next.wrapping_add(1);
            }
        }
        place
            .iter()
            .for_each(|at| head.extend_from_slice(&at.to_le_bytes()));
    }
    Some((head, client_end, lines_end, tokenised))
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

/// The `Name: value\r\n` lines of `wire` (each with its CRLF), from `from` on.
fn lines(wire: &[u8], from: usize) -> Vec<Range<usize>> {
    line_spans(wire, from).collect()
}

/// [`lines`], one at a time.
fn line_spans(wire: &[u8], from: usize) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = from;
    std::iter::from_fn(move || {
        let n = wire.get(start..)?.iter().position(|b| *b == b'\n')?;
        let line = start..start + n + 1;
        start = line.end;
        Some(line)
    })
}

/// The stored head for a header whose field lines (in stored order) are `wire`, with a client
/// head: that head, the lines it leaves out, and the stored order when it differs (see
/// [`StoredMeta`]). `None` when the client head is not made of stored lines (never), or the
/// header has more fields than the order can count.
fn with_client_head(wire: &[u8], client: &[u8]) -> Option<(Vec<u8>, usize)> {
    let stored = lines(wire, 0);
    let sent = lines(client, STATUS_LINE.len());
    let mut taken = vec![false; sent.len()];
    let mut order = Vec::with_capacity(stored.len());
    let mut left_out = Vec::new();
    for line in &stored {
        let line = &wire[line.clone()];
        let found = sent
            .iter()
            .enumerate()
            .position(|(j, s)| !taken[j] && &client[s.clone()] == line);
        let at = match found {
            Some(j) => {
                taken[j] = true;
                j
            }
            None => {
                left_out.push(line);
                sent.len() + left_out.len() - 1
            }
        };
        order.push(u16::try_from(at).ok()?);
    }
    if taken.contains(&false) {
        return None;
    }
    let in_order = order
        .iter()
        .enumerate()
        .all(|(i, &at)| usize::from(at) == i);
    let order_len = if in_order { 0 } else { 2 * order.len() };
    let mut head = Vec::with_capacity(client.len() + wire.len() + order_len);
    head.extend_from_slice(client);
    left_out.iter().for_each(|l| head.extend_from_slice(l));
    let lines_end = head.len();
    if !in_order {
        order
            .iter()
            .for_each(|at| head.extend_from_slice(&at.to_le_bytes()));
    }
    Some((head, lines_end))
}

/// verge's own fields ([`super::rfc9111::CLIENT_HIDDEN_HEADERS`]: on every entry, sent to no
/// client). A stored line of one of them, named exactly so, keeps the byte of its index plus
/// one (a byte no field name holds) in place of its name and `: `: 48 bytes fewer for the
/// three, which takes a typical head from a 320-byte size class of the allocator to a 256-byte
/// one.
static OWN_FIELDS: [HeaderName; 3] = [
    HeaderName::from_static(super::rfc9111::FETCHED_AT),
    HeaderName::from_static(super::rfc9111::ENTRY_URL),
    HeaderName::from_static(super::rfc9111::FETCH_MS),
];

/// The own field a stored line starting with `token` is of, if any.
fn own_field(token: u8) -> Option<&'static HeaderName> {
    OWN_FIELDS.get(usize::from(token).checked_sub(1)?)
}

/// The token of a wire-form line of an own field (`Name: value\r\n`, the name exactly as in
/// [`OWN_FIELDS`]), and the bytes it stands for.
fn own_token(line: &[u8]) -> Option<(u8, usize)> {
    // all three begin so: one comparison turns most lines away
    if !line.starts_with(b"verge-") {
        return None;
    }
    OWN_FIELDS.iter().zip(1u8..).find_map(|(name, token)| {
        let rest = line.strip_prefix(name.as_str().as_bytes())?;
        rest.starts_with(b": ")
            .then_some((token, name.as_str().len() + 2))
    })
}

/// How many bytes fewer the own fields' tokens make `lines` ([`push_tokenised`]).
fn token_savings(lines: &[u8]) -> usize {
    line_spans(lines, 0)
        .filter_map(|s| own_token(&lines[s]))
        .map(|(_, len)| len - 1)
        .sum()
}

/// Append `line` to `out`, with its token if it is an own field's.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    match own_token(line) {
        Some((token, len)) => {
            out.push(token);
            out.extend_from_slice(&line[len..]);
        }
        None => out.extend_from_slice(line),
    }
}

/// Append `lines` to `out`, each own field's line with its token.
fn push_tokenised(out: &mut Vec<u8>, lines: &[u8]) {
    let mut rest = 0;
    for line in line_spans(lines, 0) {
        push_line(out, &lines[line.clone()]);
        rest = line.end;
    }
    // an unended last line as it is (a wire form has none)
    out.extend_from_slice(&lines[rest..]);
}

/// `head` (see [`StoredMeta`]) with each own field's line between `from` and `lines_end` kept
/// as its token, where its lines now end, and how many bytes fewer it is. The same head when
/// there is none.
fn compacted(head: Vec<u8>, from: usize, lines_end: usize) -> (Vec<u8>, usize, usize) {
    let Some(own) = head.get(from..lines_end) else {
        return (head, lines_end, 0);
    };
    let saved = token_savings(own);
    if saved == 0 {
        return (head, lines_end, 0);
    }
    let mut out = Vec::with_capacity(head.len() - saved);
    out.extend_from_slice(&head[..from]);
    push_tokenised(&mut out, own);
    out.extend_from_slice(&head[lines_end..]);
    (out, lines_end - saved, saved)
}

/// `meta`'s internal fields, as pingora encodes them.
fn internal_fields(meta: &CacheMeta) -> InternalMetaV2 {
    InternalMetaV2 {
        version: 2,
        fresh_until: meta.fresh_until(),
        created: meta.created(),
        updated: meta.updated(),
        stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
        stale_if_error_sec: meta.stale_if_error_sec(),
        variance: meta.variance(),
        epoch_override: meta.epoch_override(),
        provenance: Some(meta.provenance()),
    }
}

fn meta_error(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

impl StoredMeta {
    /// Capture `meta` for storage.
    pub fn from_meta(meta: &CacheMeta) -> Result<Self> {
        let fields = internal_fields(meta);
        let simple = fields.updated == fields.created && fields.provenance == Some(fields.created);
        let refreshed = if simple {
            None
        } else {
            let encoded = rmp_serde::encode::to_vec(&fields)
                .map_err(|_| meta_error("cannot encode cache meta"))?;
            Some(Box::new(Refreshed {
                encoded: encoded.into_boxed_slice(),
                updated: fields.updated,
            }))
        };
        let header = meta.response_header();
        let mut wire = Vec::with_capacity(512);
        header.header_to_h1_wire(&mut wire);
        let arranged = client_facts(header, fields.variance).and_then(|facts| {
            let (head, client_end, lines_end, tokenised) = arranged(header, &wire)?;
            let end = u32::try_from(client_end).ok()?;
            Some((head, lines_end, tokenised, ClientFacts { end, ..facts }))
        });
        let (head, lines_end, tokenised, client) = match arranged {
            Some((head, lines_end, tokenised, facts)) => (head, lines_end, tokenised, Some(facts)),
            None => {
                let end = wire.len();
                let (head, lines_end, tokenised) = compacted(wire, 0, end);
                (head, lines_end, tokenised, None)
            }
        };
        let too_large = || meta_error("stored head too large");
        Ok(StoredMeta {
            fresh_until: fields.fresh_until,
            created: fields.created,
            epoch_override: fields.epoch_override,
            stale_while_revalidate_sec: fields.stale_while_revalidate_sec,
            stale_if_error_sec: fields.stale_if_error_sec,
            variance: fields.variance,
            refreshed,
            lines_end: u32::try_from(lines_end).map_err(|_| too_large())?,
            tokenised: u32::try_from(tokenised).map_err(|_| too_large())?,
            head: Bytes::from(head.into_boxed_slice()),
            status: header.status,
            // what pingora's header serialization keeps: HTTP/1.x version, canonical reason
            http10: header.version == Version::HTTP_10,
            cased: header.has_case(),
            client,
        })
    }

    /// A fresh `CacheMeta` equal to the one stored.
    pub fn to_meta(&self) -> Result<CacheMeta> {
        self.meta_with(self.parse_header(self.cased)?)
    }

    /// A `CacheMeta` with the stored fields (freshness, times, variance) and the stored status,
    /// but a response head without any header fields: for a caller that reads none of it
    /// (the storage's `lookup_streaming_write`, whose meta pingora discards).
    pub fn to_meta_without_head(&self) -> Result<CacheMeta> {
        let mut header = ResponseHeader::build_no_case(self.status, Some(0))?;
        if self.http10 {
            header.set_version(Version::HTTP_10);
        }
        self.meta_with(header)
    }

    /// The stored fields around `header`.
    fn meta_with(&self, header: ResponseHeader) -> Result<CacheMeta> {
        let Some(refreshed) = &self.refreshed else {
            let mut meta = CacheMeta::new(
                self.fresh_until,
                self.created,
                self.stale_while_revalidate_sec,
                self.stale_if_error_sec,
                header,
            );
            if let Some(v) = self.variance {
                meta.set_variance(v);
            }
            if let Some(epoch) = self.epoch_override {
                meta.set_epoch_override(epoch);
            }
            return Ok(meta);
        };
        let empty = EMPTY_HEADER
            .as_deref()
            .ok_or_else(|| meta_error("header serializer unavailable"))?;
        let mut meta = CacheMeta::deserialize(&refreshed.encoded, empty)?;
        *meta.response_header_mut() = header;
        Ok(meta)
    }

    /// The stored response header, parsed from the stored bytes. (Stored bytes that do not
    /// parse, which verge never writes, give a header with the stored status and no fields.)
    pub fn header(&self) -> ResponseHeader {
        self.header_as(self.cased)
    }

    /// [`StoredMeta::header`], with its fields' name case only if `cased` (and stored).
    fn header_as(&self, cased: bool) -> ResponseHeader {
        self.parse_header(cased).unwrap_or_else(|e| {
            log::error!("a stored response head does not parse: {e}");
            let (mut parts, ()) = http::Response::new(()).into_parts();
            parts.status = self.status;
            ResponseHeader::from(parts)
        })
    }

    fn parse_header(&self, cased: bool) -> Result<ResponseHeader> {
        let cased = cased && self.cased;
        let invalid = || meta_error("stored response head is invalid");
        let from = if self.client.is_some() {
            STATUS_LINE.len()
        } else {
            0
        };
        let end = self.lines_end as usize;
        let head = &self.head;
        let spans = lines(head.get(..end).ok_or_else(invalid)?, from);
        let mut header = if cased {
            ResponseHeader::build(self.status, Some(spans.len()))?
        } else {
            ResponseHeader::build_no_case(self.status, Some(spans.len()))?
        };
        let mut add = |span: &Range<usize>| {
            let line = &head[span.clone()];
            // `Name: value\r\n`, or an own field's token and `value\r\n`
            let own = line.first().and_then(|b| own_field(*b));
            let value_at = match own {
                Some(_) => 1,
                None => line.iter().position(|b| *b == b':').ok_or_else(invalid)? + 2,
            };
            let value = span.start + value_at..span.end - 2;
            if value.start > value.end {
                return Err(invalid());
            }
            let value = HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| invalid())?;
            match (own, cased) {
                (Some(own), true) => {
                    header.append_header(Bytes::from_static(own.as_str().as_bytes()), value)
                }
                (Some(own), false) => header.append_header(own.clone(), value),
                (None, _) => {
                    let name = span.start..span.start + value_at - 2;
                    if cased {
                        header.append_header(head.slice(name), value)
                    } else {
                        let name = HeaderName::from_bytes(&head[name]).map_err(|_| invalid())?;
                        header.append_header(name, value)
                    }
                }
            }
        };
        let order = head.get(end..).unwrap_or_default();
        if order.is_empty() {
            spans.iter().try_for_each(|s| add(s).map(drop))?;
        } else {
            for at in order.chunks_exact(2) {
                let at = usize::from(u16::from_le_bytes([at[0], at[1]]));
                add(spans.get(at).ok_or_else(invalid)?)?;
            }
        }
        if self.http10 {
            header.set_version(Version::HTTP_10);
        }
        Ok(header)
    }

    /// The head a plain hit on this entry sends, if the front door may answer it by itself.
    pub fn client_head(&self) -> Option<ClientHead<'_>> {
        let c = self.client?;
        Some(ClientHead {
            bytes: self.head.get(..c.end as usize)?,
            content_length: match c.content_length {
                Some(n) => Some(usize::try_from(n.get() - 1).ok()?),
                None => None,
            },
            has_date: c.has_date,
            coding: c.coding,
        })
    }

    /// Until when the entry is fresh (pingora's `CacheMeta::fresh_until`).
    pub fn fresh_until(&self) -> SystemTime {
        self.fresh_until
    }

    /// When the entry was admitted (pingora's `CacheMeta::created`).
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// When the entry was last updated (pingora's `CacheMeta::updated`): when admitted, unless
    /// it was revalidated since.
    fn updated(&self) -> SystemTime {
        self.refreshed.as_ref().map_or(self.created, |r| r.updated)
    }

    /// The entry's age at `now`, as pingora's `CacheMeta::age` computes it: from the epoch
    /// override if set, else from the last update.
    pub fn age(&self, now: SystemTime) -> std::time::Duration {
        now.duration_since(self.epoch_override.unwrap_or_else(|| self.updated()))
            .unwrap_or_default()
    }

    /// Bytes charged for this metadata: itself (`CHARGED_STRUCT_BYTES`), its stored head as
    /// it was before verge's own field names were tokenised, and pingora's encoding of its
    /// fields when kept. (What holding it costs beyond that is in the storage's per-entry
    /// charge.)
    pub fn size(&self) -> usize {
        CHARGED_STRUCT_BYTES
            + self.head.len()
            + self.tokenised as usize
            + self.refreshed.as_ref().map_or(0, |r| r.encoded.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The metadata's own struct with its `Arc` header fills a 160-byte size class (the
    /// allocator's classes step by a quarter of a power of two above 128 bytes).
    #[test]
    fn stored_meta_is_144_bytes() {
        assert_eq!(std::mem::size_of::<StoredMeta>(), 144);
        assert_eq!(std::mem::size_of::<Option<ClientFacts>>(), 16);
    }

    /// A `Content-Length` is kept plus one; one too large for that keeps no client head (no
    /// body that long can be stored).
    #[test]
    fn client_head_lengths_round_trip() {
        for n in [0usize, 1, 5, 16384, u32::MAX as usize + 7, usize::MAX - 1] {
            let mut header = ResponseHeader::build(200, None).expect("header");
            header
                .insert_header("content-length", n.to_string())
                .expect("h");
            let now = SystemTime::now();
            let meta = CacheMeta::new(now, now, 0, 0, header);
            let stored = StoredMeta::from_meta(&meta).expect("stored");
            let head = stored.client_head().expect("a client head");
            assert_eq!(head.content_length, Some(n));
        }
        let mut header = ResponseHeader::build(200, None).expect("header");
        header
            .insert_header("content-length", usize::MAX.to_string())
            .expect("h");
        let now = SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        assert!(StoredMeta::from_meta(&meta)
            .expect("stored")
            .client_head()
            .is_none());
    }

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

    /// The client head of a stored `200` with these fields (and this variance), as stored.
    fn client_head(fields: &[(&str, &str)], variance: Option<HashBinary>) -> Option<Owned> {
        let mut header = ResponseHeader::build(200, None).expect("header");
        for (name, value) in fields {
            header.append_header(name.to_string(), *value).expect("h");
        }
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(now, now, 0, 0, header);
        if let Some(v) = variance {
            meta.set_variance_key(v);
        }
        let stored = StoredMeta::from_meta(&meta).expect("store");
        let head = stored.client_head()?;
        Some(Owned {
            bytes: head.bytes.to_vec(),
            content_length: head.content_length,
            coding: head.coding,
        })
    }

    /// A [`ClientHead`] copied out of its entry.
    struct Owned {
        bytes: Vec<u8>,
        content_length: Option<usize>,
        coding: Option<Coding>,
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
        match &ours.refreshed {
            Some(refreshed) => {
                assert_eq!(refreshed.updated, meta.updated());
                refreshed.encoded.to_vec()
            }
            None => rmp_serde::encode::to_vec(&internal_fields(meta)).expect("encode"),
        }
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
        let new = sample();
        let fresh = StoredMeta::from_meta(&new).expect("store");
        assert!(fresh.refreshed.is_none());
        let meta = revalidated();
        let stored = StoredMeta::from_meta(&meta).expect("store");
        assert!(stored.refreshed.is_some());
        let back = stored.to_meta().expect("load");
        assert_same(&meta, &back);
        assert!(back.created() < back.updated());
        assert!(back.provenance() < back.created());
        // the age counts from the last update (which only a refreshed entry keeps apart)
        let later = SystemTime::now() + Duration::from_secs(100);
        for (stored, meta) in [(&fresh, &new), (&stored, &meta)] {
            let from = meta.epoch_override().unwrap_or(meta.updated());
            assert_eq!(
                stored.age(later),
                later.duration_since(from).expect("later")
            );
        }
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
    fn a_meta_without_its_head_keeps_every_other_field() {
        let mut simple = sample();
        simple.set_variance_key([9; 16]);
        simple.set_epoch_override(SystemTime::now() - Duration::from_secs(30));
        for meta in [simple, revalidated()] {
            let stored = StoredMeta::from_meta(&meta).expect("store");
            let bare = stored.to_meta_without_head().expect("load");
            assert!(bare.headers().is_empty());
            let mut headless = stored.to_meta().expect("load");
            assert!(!headless.headers().is_empty());
            let status = headless.response_header().status;
            *headless.response_header_mut() =
                ResponseHeader::build_no_case(status, Some(0)).expect("header");
            assert_same(&headless, &bare);
        }
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
        let header = stored.header();
        let value = header.headers.get("x-shared").expect("kept");
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

/// The stored head is parsed back into the header it was made from, field for field, in the
/// same order and case, and a hit's head is the header as the full path sends it.
#[cfg(test)]
mod head_tests {
    use super::*;
    use http::header;

    fn h1(header: &ResponseHeader) -> Vec<u8> {
        let mut buf = Vec::new();
        header.header_to_h1_wire(&mut buf);
        buf
    }

    fn stored(header: ResponseHeader) -> StoredMeta {
        let now = SystemTime::now();
        StoredMeta::from_meta(&CacheMeta::new(now, now, 0, 0, header)).expect("store")
    }

    /// The head a hit sent before heads were kept as bytes: the header without the fields
    /// clients never get, in the order that removing them leaves.
    fn sent(header: &ResponseHeader) -> Vec<u8> {
        let mut client = header.clone();
        for name in crate::cache::rfc9111::CLIENT_HIDDEN_HEADERS.iter().chain([
            &header::AGE,
            &header::ACCEPT_RANGES,
            &header::CONNECTION,
            &header::TRANSFER_ENCODING,
        ]) {
            client.remove_header(name);
        }
        let mut buf = STATUS_LINE.to_vec();
        client.header_to_h1_wire(&mut buf);
        buf
    }

    fn interleaved() -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).expect("header");
        for (name, value) in [
            ("Content-Type", "text/html"),
            ("Accept-Ranges", "bytes"),
            ("surrogate-key", "a b"),
            ("X-Multi", "1"),
            ("ETag", "\"v1\""),
            ("x-multi", "2"),
            ("Age", "3"),
            ("X-Empty", ""),
            ("Content-Length", "5"),
            ("Cache-Tag", "t1"),
            ("X-Multi", " 3"),
        ] {
            h.append_header(name.to_string(), value).expect("h");
        }
        h.insert_header(crate::cache::rfc9111::ENTRY_URL, "example.com/a")
            .expect("h");
        h
    }

    #[test]
    fn fields_a_hit_does_not_send_keep_their_place() {
        let header = interleaved();
        let meta = stored(header.clone());
        let head = meta.client_head().expect("a plain 200");
        assert_eq!(head.bytes, &sent(&header)[..]);
        assert_eq!(head.content_length, Some(5));
        let back = meta.header();
        assert_eq!(h1(&back), h1(&header));
        assert_eq!(back.headers, header.headers);
        let again = meta.to_meta().expect("load");
        assert_eq!(h1(again.response_header()), h1(&header));
    }

    #[test]
    fn other_heads_round_trip_too() {
        // not a 200: no client head, the fields as they are
        let mut gone = interleaved();
        gone.set_status(404).expect("status");
        let meta = stored(gone.clone());
        assert!(meta.client_head().is_none());
        let back = meta.header();
        assert_eq!((back.status, h1(&back)), (gone.status, h1(&gone)));
        // no name case (HTTP/2): titled standard names, the others as the map keeps them
        let mut plain = ResponseHeader::build_no_case(200, None).expect("header");
        plain.append_header("content-length", "2").expect("h");
        plain.append_header("x-a", "1").expect("h");
        plain.append_header("x-fetch-ms", "4").expect("h");
        let meta = stored(plain.clone());
        let back = meta.header();
        assert!(!back.has_case());
        assert_eq!(back.headers, plain.headers);
        assert_eq!(meta.client_head().expect("head").bytes, &sent(&plain)[..]);
        // HTTP/1.0 stays HTTP/1.0; no fields at all
        let mut old = ResponseHeader::build(200, None).expect("header");
        old.set_version(http::Version::HTTP_10);
        let back = stored(old).header();
        assert_eq!(back.version, http::Version::HTTP_10);
        assert!(back.headers.is_empty());
    }

    /// `from_meta` as it was before the stored head was read off the wire form: a copy of the
    /// header without the fields a hit does not send, serialised, its lines matched to the
    /// stored ones ([`with_client_head`]); and before verge's own fields were tokenised: every
    /// line as it is on the wire.
    fn from_meta_by_clone(meta: &CacheMeta) -> StoredMeta {
        let mut stored = StoredMeta::from_meta(meta).expect("store");
        let header = meta.response_header();
        let mut wire = Vec::new();
        header.header_to_h1_wire(&mut wire);
        let arranged = client_facts(header, meta.variance()).and_then(|facts| {
            let client = client_head_by_clone(header);
            let (head, lines_end) = with_client_head(&wire, &client)?;
            let end = u32::try_from(client.len()).ok()?;
            Some((head, lines_end, ClientFacts { end, ..facts }))
        });
        let (head, lines_end, client) = match arranged {
            Some((head, lines_end, facts)) => (head, lines_end, Some(facts)),
            None => {
                let end = wire.len();
                (wire, end, None)
            }
        };
        stored.head = Bytes::from(head);
        stored.lines_end = u32::try_from(lines_end).expect("small");
        stored.tokenised = 0;
        stored.client = client;
        stored
    }

    /// A response head drawn from fields a stored response may carry: the ones a hit does
    /// not send among them, names in varied case, several values per name (adjacent or not),
    /// fields replaced and removed on the way (so the map's order is not the order added),
    /// with and without name case, mostly `200`s a hit could be answered with.
    fn generated(rng: &mut crate::cache::xorshift::Rng) -> (ResponseHeader, Option<HashBinary>) {
        const NAMES: &[&str] = &[
            "Content-Type",
            "content-length",
            "Content-Length",
            "ETag",
            "Cache-Control",
            "Date",
            "Age",
            "age",
            "Accept-Ranges",
            "Connection",
            "Transfer-Encoding",
            "Vary",
            "Content-Encoding",
            "Surrogate-Key",
            "cache-tag",
            "Cache-Groups",
            "Surrogate-Control",
            "verge-fetched-at",
            "verge-entry-url",
            "verge-fetch-ms",
            "Verge-Fetched-At",
            "X-Multi",
            "x-multi",
            "X-A",
            "Set-Cookie",
            "Last-Modified",
            "server",
        ];
        const VALUES: &[&str] = &[
            "1",
            "12",
            " 3",
            "a b",
            "",
            "\"v1\"",
            "gzip",
            "br",
            "Accept-Encoding",
            "max-age=60",
            "public, max-age=5, must-revalidate",
            "chunked",
            "close",
        ];
        const FRAMING: &[&str] = &[
            "content-length",
            "transfer-encoding",
            "vary",
            "content-encoding",
        ];
        let mut fields: Vec<(&str, &str)> = (0..rng.below(20))
            .map(|_| {
                (
                    NAMES[rng.below(NAMES.len())],
                    VALUES[rng.below(VALUES.len())],
                )
            })
            .collect();
        // a third as drawn, a third with one length, a third coded under `Vary: Accept-Encoding`
        let framing: &[(&str, &str)] = match rng.below(3) {
            0 => &[],
            1 => &[("Content-Length", "12")],
            _ => &[("Content-Encoding", "br"), ("Vary", "Accept-Encoding")],
        };
        if !framing.is_empty() {
            fields.retain(|(n, _)| !FRAMING.contains(&n.to_ascii_lowercase().as_str()));
            for field in framing {
                let at = rng.below(fields.len() + 1);
                fields.insert(at, *field);
            }
        }
        let status = if rng.below(8) == 0 { 404 } else { 200 };
        let mut header = if rng.below(4) == 0 {
            ResponseHeader::build_no_case(status, None).expect("header")
        } else {
            ResponseHeader::build(status, None).expect("header")
        };
        for (name, value) in fields {
            match rng.below(10) {
                0 => header
                    .insert_header(name.to_string(), value)
                    .expect("field"),
                1 => {
                    header.remove_header(name);
                }
                _ => {
                    header
                        .append_header(name.to_string(), value)
                        .expect("field");
                }
            }
        }
        let variance = (rng.below(10) == 0).then_some([1; 16]);
        (header, variance)
    }

    #[test]
    fn the_stored_head_is_the_one_made_from_a_copy_of_the_header() {
        let mut rng = crate::cache::xorshift::Rng(0x005e_ed0f_4ead);
        let (mut with_client, mut out_of_order, mut tokenised) = (0, 0, 0);
        for _ in 0..10_000 {
            let (header, variance) = generated(&mut rng);
            let now = SystemTime::now();
            let mut meta = CacheMeta::new(now, now, 0, 0, header);
            if let Some(v) = variance {
                meta.set_variance_key(v);
            }
            let ours = StoredMeta::from_meta(&meta).expect("store");
            let mut theirs = from_meta_by_clone(&meta);
            // the head before its own fields were tokenised: parsed to the same header, and
            // charged as that head was
            assert_eq!(ours.size(), theirs.size());
            assert_eq!(h1(&theirs.header()), h1(meta.response_header()));
            for cased in [false, true] {
                let (a, b) = (ours.header_as(cased), theirs.header_as(cased));
                assert_eq!((h1(&a), a.has_case()), (h1(&b), b.has_case()));
                assert_eq!(a.headers, b.headers);
            }
            let from = theirs.client.map_or(0, |c| c.end as usize);
            let (head, lines_end, saved) =
                compacted(theirs.head.to_vec(), from, theirs.lines_end as usize);
            assert_eq!(head.len() + saved, theirs.head.len());
            tokenised += usize::from(saved > 0);
            theirs.head = Bytes::from(head);
            theirs.lines_end = u32::try_from(lines_end).expect("small");
            theirs.tokenised = u32::try_from(saved).expect("small");
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
            assert_eq!(h1(&ours.header()), h1(meta.response_header()));
            if let Some(client) = ours.client_head() {
                with_client += 1;
                assert_eq!(client.bytes, &sent(meta.response_header())[..]);
                out_of_order += usize::from(ours.lines_end as usize != ours.head.len());
            }
        }
        // the draw reaches the cases: client heads, ones out of stored order, own fields
        assert!(
            with_client > 2_000 && out_of_order > 500 && tokenised > 2_000,
            "{with_client} {out_of_order} {tokenised}"
        );
    }

    /// The head of a `bench_origin` object as verge stores it (five origin fields, three of
    /// verge's) fits a 256-byte size class of the allocator, where it took a 320-byte one
    /// before verge's own fields were tokenised; it parses back to the header it was.
    #[test]
    fn a_typical_head_fits_a_256_byte_size_class() {
        let mut h = ResponseHeader::build(200, None).expect("header");
        for (name, value) in [
            ("content-type", "application/octet-stream"),
            ("cache-control", "public, max-age=3600"),
            ("etag", "\"16384-f65535\""),
            ("content-length", "16384"),
            ("date", "Sat, 05 Dec 2026 10:09:40 GMT"),
        ] {
            h.append_header(name, value).expect("h");
        }
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(now, now, 0, 0, h);
        crate::cache::rfc9111::set_fetched_at(&mut meta, now);
        crate::cache::rfc9111::set_fetch_duration(&mut meta, std::time::Duration::from_millis(3));
        crate::cache::rfc9111::set_entry_url(&mut meta, "127.0.0.1:18080", "/obj/16384/f65535");
        let stored = StoredMeta::from_meta(&meta).expect("store");
        let wire = h1(meta.response_header());
        assert_eq!(stored.head.len() + 48, STATUS_LINE.len() + wire.len());
        assert!(stored.head.len() <= 256 && wire.len() + STATUS_LINE.len() > 256);
        assert_eq!(h1(&stored.header()), wire);
        assert_eq!(stored.size(), 176 + STATUS_LINE.len() + wire.len());
        // `own_token` turns away a line not starting so without comparing names
        assert!(OWN_FIELDS.iter().all(|n| n.as_str().starts_with("verge-")));
        let client = stored.client_head().expect("a plain 200").bytes;
        assert_eq!(client, &sent(meta.response_header())[..]);
    }

    #[test]
    fn a_hit_reads_the_head_only_when_asked() {
        let meta = stored(interleaved());
        let lazy = HeadOnDemand::new(&meta);
        assert!(lazy.parsed.get().is_none());
        let first: *const ResponseHeader = lazy.header();
        assert!(std::ptr::eq(first, lazy.header()), "parsed once");
        assert_eq!(lazy.header().headers, interleaved().headers);
    }

    #[test]
    fn the_lanes_checks_read_what_was_decided_when_stored() {
        for cc in [
            "max-age=60",
            "public, max-age=60",
            "s-maxage=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "no-cache=\"x\", max-age=5",
        ] {
            let mut h = ResponseHeader::build(200, None).expect("header");
            h.append_header("Cache-Control", cc).expect("h");
            h.append_header("Content-Length", "1").expect("h");
            let meta = stored(h.clone());
            assert!(meta.client_head().is_some(), "{cc}");
            let lazy = HeadOnDemand::new(&meta);
            assert_eq!(
                (lazy.shared_with_credentials(), lazy.forbids_stale()),
                (h.shared_with_credentials(), h.forbids_stale()),
                "{cc}"
            );
            assert!(lazy.parsed.get().is_none(), "{cc}: decided without parsing");
        }
    }
}
