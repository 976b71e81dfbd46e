//! Reading one record back from its segment file: its head and meta, its checksum table and,
//! for a hit, its first chunk (or, for a hit the memory tier takes, its whole body), each
//! verified before it is believed; a record that does not check out is `Ok(None)`, never data.
//! Every read blocks unless told not to wait ([`Wait::Never`]).

use super::hit::BodyLocation;
use super::index::Location;
use super::nowait::{self, read_one_at, Wait};
use super::record::{self, chunk_crc, Head, Kind, CHUNK, HEAD_LEN, TRAILER_LEN};
use crate::metrics::DISK_METRICS;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use std::fs::File;
use std::io::IoSliceMut;
use std::sync::Arc;

/// Read and verify a record's head and meta: `Ok(None)` when the record is not the object
/// written under `key` at `loc`. Returns the head and the meta's bytes.
pub(super) fn read_head(
    file: &File,
    loc: &Location,
    key: &HashBinary,
    wait: Wait,
) -> std::io::Result<Option<(Head, Vec<u8>)>> {
    let mut head_meta = vec![0u8; HEAD_LEN + meta_len(loc)];
    read_one_at(file, &mut head_meta, loc.offset, wait)?;
    DISK_METRICS.read_bytes.inc_by(head_meta.len() as u64);
    Ok(check_head(head_meta, loc, key))
}

fn meta_len(loc: &Location) -> usize {
    loc.internal_len as usize + loc.header_len as usize
}

/// The head decoded from `head_meta` (a record's head and meta, as read), if it and the meta
/// check out and describe the object written under `key` at `loc`.
fn check_head(head_meta: Vec<u8>, loc: &Location, key: &HashBinary) -> Option<(Head, Vec<u8>)> {
    let head = Head::decode(&head_meta).ok()?;
    let (head_bytes, meta) = head_meta.split_at(HEAD_LEN);
    let whole = Head::verify(head_bytes, meta).is_ok()
        && head.kind == Kind::Object
        && head.combined == *key
        && head.body_len == loc.body_len
        && head.meta_len() == meta_len(loc);
    whole.then_some((head, head_meta))
}

/// Read a record's checksum table with its trailer and verify it: the chunks' CRCs and the
/// bytes read, or `Ok(None)` when they do not match.
pub(super) fn read_table(
    file: &File,
    loc: &Location,
    head: &Head,
    wait: Wait,
) -> std::io::Result<Option<TableRead>> {
    let mut table = vec![0u8; head.table_len() + TRAILER_LEN];
    read_one_at(file, &mut table, loc.offset + head.table_offset(), wait)?;
    DISK_METRICS.read_bytes.inc_by(table.len() as u64);
    Ok(record::verify_table(head, &table)
        .ok()
        .map(|crcs| (crcs, table)))
}

/// A record's chunk checksums, and its table and trailer as read.
pub(super) type TableRead = (Vec<u32>, Vec<u8>);

/// The meta of the object at `loc`, checked (blocking); `Ok(None)` as [`read_head`].
pub(super) fn read_meta(
    file: &File,
    loc: &Location,
    key: &HashBinary,
) -> std::io::Result<Option<CacheMeta>> {
    let Some((_, head_meta)) = read_head(file, loc, key, Wait::Allowed)? else {
        return Ok(None);
    };
    let (internal, header) = head_meta[HEAD_LEN..].split_at(loc.internal_len as usize);
    Ok(CacheMeta::deserialize(internal, header).ok())
}

/// An object read back for a hit: its meta, where its body is, and its first chunk.
pub(super) type Entry = (CacheMeta, BodyLocation, Option<Bytes>);

/// Read and verify a record's head, meta, checksum table and first chunk.
/// `Ok(None)`: the record is not what was written under `key`.
pub(super) fn read_entry(
    file: &Arc<File>,
    loc: &Location,
    key: &HashBinary,
    wait: Wait,
) -> std::io::Result<Option<Entry>> {
    let Some((head, head_meta)) = read_head(file, loc, key, wait)? else {
        return Ok(None);
    };
    let Some((crcs, _)) = read_table(file, loc, &head, wait)? else {
        return Ok(None);
    };
    let (internal, header) = head_meta[HEAD_LEN..].split_at(loc.internal_len as usize);
    let Ok(cache_meta) = CacheMeta::deserialize(internal, header) else {
        return Ok(None);
    };
    let body = BodyLocation {
        file: file.clone(),
        offset: loc.offset + head.body_offset(),
        len: head.body_len,
        crcs,
    };
    let first = if head.body_len > 0 {
        match body.read_chunk(0, wait)? {
            Some(chunk) => Some(chunk),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some((cache_meta, body, first)))
}

/// Read and verify a whole record in one read (head, meta, body, checksum table and trailer):
/// its meta and its body, or `Ok(None)` when any part of it is not what was written under
/// `key` at `loc`.
pub(super) fn read_whole(
    file: &File,
    loc: &Location,
    key: &HashBinary,
    wait: Wait,
) -> std::io::Result<Option<(CacheMeta, Bytes)>> {
    let body_len = usize::try_from(loc.body_len).map_err(std::io::Error::other)?;
    let mut head_meta = vec![0u8; HEAD_LEN + meta_len(loc)];
    let mut body = vec![0u8; body_len];
    let mut table = vec![0u8; record::chunk_count(loc.body_len) * 4 + TRAILER_LEN];
    let mut bufs = [
        IoSliceMut::new(&mut head_meta),
        IoSliceMut::new(&mut body),
        IoSliceMut::new(&mut table),
    ];
    nowait::read_exact_at(file, &mut bufs, loc.offset, wait)?;
    let read = head_meta.len() + body.len() + table.len();
    DISK_METRICS.read_bytes.inc_by(read as u64);
    let Some((head, head_meta)) = check_head(head_meta, loc, key) else {
        return Ok(None);
    };
    let Ok(crcs) = record::verify_table(&head, &table) else {
        return Ok(None);
    };
    let chunks_ok = crcs.len() == body.chunks(CHUNK).len()
        && body
            .chunks(CHUNK)
            .zip(&crcs)
            .all(|(c, &crc)| chunk_crc(c) == crc);
    if !chunks_ok {
        return Ok(None);
    }
    let (internal, header) = head_meta[HEAD_LEN..].split_at(loc.internal_len as usize);
    Ok(CacheMeta::deserialize(internal, header)
        .ok()
        .map(|meta| (meta, Bytes::from(body))))
}
