//! Reading one record back from its segment file (blocking): its head and meta, its checksum
//! table and, for a hit, its first chunk, each verified before it is believed; a record that
//! does not check out is `Ok(None)`, never data.

use super::hit::BodyLocation;
use super::index::Location;
use super::record::{self, Head, Kind, HEAD_LEN, TRAILER_LEN};
use crate::metrics::DISK_METRICS;
use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Read and verify a record's head and meta (blocking): `Ok(None)` when the record is not the
/// object written under `key` at `loc`. Returns the head and the meta's bytes.
pub(super) fn read_head(
    file: &File,
    loc: &Location,
    key: &HashBinary,
) -> std::io::Result<Option<(Head, Vec<u8>)>> {
    let meta_len = loc.internal_len as usize + loc.header_len as usize;
    let mut head_meta = vec![0u8; HEAD_LEN + meta_len];
    file.read_exact_at(&mut head_meta, loc.offset)?;
    DISK_METRICS.read_bytes.inc_by(head_meta.len() as u64);
    let Ok(head) = Head::decode(&head_meta) else {
        return Ok(None);
    };
    let (head_bytes, meta) = head_meta.split_at(HEAD_LEN);
    let whole = Head::verify(head_bytes, meta).is_ok()
        && head.kind == Kind::Object
        && head.combined == *key
        && head.body_len == loc.body_len
        && head.meta_len() == meta_len;
    Ok(whole.then_some((head, head_meta)))
}

/// Read a record's checksum table with its trailer and verify it (blocking): the chunks'
/// CRCs and the bytes read, or `Ok(None)` when they do not match.
pub(super) fn read_table(
    file: &File,
    loc: &Location,
    head: &Head,
) -> std::io::Result<Option<TableRead>> {
    let mut table = vec![0u8; head.table_len() + TRAILER_LEN];
    file.read_exact_at(&mut table, loc.offset + head.table_offset())?;
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
    let Some((_, head_meta)) = read_head(file, loc, key)? else {
        return Ok(None);
    };
    let (internal, header) = head_meta[HEAD_LEN..].split_at(loc.internal_len as usize);
    Ok(CacheMeta::deserialize(internal, header).ok())
}

/// An object read back for a hit: its meta, where its body is, and its first chunk.
pub(super) type Entry = (CacheMeta, BodyLocation, Option<Bytes>);

/// Read and verify a record's head, meta, checksum table and first chunk (blocking).
/// `Ok(None)`: the record is not what was written under `key`.
pub(super) fn read_entry(
    file: &Arc<File>,
    loc: &Location,
    key: &HashBinary,
) -> std::io::Result<Option<Entry>> {
    let Some((head, head_meta)) = read_head(file, loc, key)? else {
        return Ok(None);
    };
    let Some((crcs, _)) = read_table(file, loc, &head)? else {
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
        match body.read_chunk(0)? {
            Some(chunk) => Some(chunk),
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some((cache_meta, body, first)))
}
