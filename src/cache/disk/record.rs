//! The disk tier's record format: one whole object (or a tombstone) appended to a segment file,
//! with checksums over its head and over every chunk of its body, and a trailer that marks it
//! complete. Pure encoding and decoding, no I/O.
//!
//! ```text
//! head     magic "VRGD" | version | kind | has variance | 0 | combined key (16) |
//!          primary key (16) | variance (16) | written (ms, u64) | internal meta length (u32) |
//!          header length (u32) | body length (u64) | CRC32 of the head and the meta
//! meta     pingora's `CacheMeta::serialize`: internal fields, then the compressed header
//! body     the response body
//! table    CRC32 of each `CHUNK` bytes of the body, in order
//! trailer  magic "DGRV" | CRC32 of the table | record length (u64)
//! ```
//!
//! All integers are little-endian. A record is complete only with its trailer: a write cut
//! short (a crash, `kill -9`) leaves a record whose trailer is missing or does not match, and
//! the scan stops there. Bodies are checked chunk by chunk as they are read, so a large object
//! is never read whole to be verified.

use pingora_cache::key::HashBinary;

/// Bytes of body covered by one checksum, and the most one disk read hands out.
pub const CHUNK: usize = 256 << 10;
/// Length of the fixed head (before the meta).
pub const HEAD_LEN: usize = 92;
/// Length of the trailer.
pub const TRAILER_LEN: usize = 16;

const MAGIC: &[u8; 4] = b"VRGD";
const TRAILER_MAGIC: &[u8; 4] = b"DGRV";
const VERSION: u8 = 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A response: meta and body.
    Object = 1,
    /// The object under `combined` was removed (a purge).
    Tombstone = 2,
    /// Every variant of the URL `primary` was removed.
    UrlTombstone = 3,
}

/// The fixed head of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// What the record holds.
    pub kind: Kind,
    /// The storage slot (primary + variance).
    pub combined: HashBinary,
    /// The URL part of the key.
    pub primary: HashBinary,
    /// The variance, if the entry has one.
    pub variance: Option<HashBinary>,
    /// When the record was written (Unix ms).
    pub written_ms: u64,
    /// Length of pingora's internal meta encoding.
    pub internal_len: u32,
    /// Length of pingora's header encoding.
    pub header_len: u32,
    /// Length of the body.
    pub body_len: u64,
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Not the start of a record (wrong magic or version, unknown kind).
    #[error("not a record")]
    NotARecord,
    /// A checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The trailer is missing or does not belong to the record.
    #[error("incomplete record")]
    Incomplete,
}

/// Number of body chunks (and checksums in the table) of a body of `len` bytes.
pub fn chunk_count(len: u64) -> usize {
    usize::try_from(len.div_ceil(CHUNK as u64)).unwrap_or(usize::MAX)
}

impl Head {
    /// Bytes of the meta that follows the head.
    pub fn meta_len(&self) -> usize {
        self.internal_len as usize + self.header_len as usize
    }

    /// Offset of the body from the start of the record.
    pub fn body_offset(&self) -> u64 {
        (HEAD_LEN + self.meta_len()) as u64
    }

    /// Offset of the checksum table from the start of the record.
    pub fn table_offset(&self) -> u64 {
        self.body_offset() + self.body_len
    }

    /// Length of the checksum table.
    pub fn table_len(&self) -> usize {
        chunk_count(self.body_len) * 4
    }

    /// The whole record's length, trailer included.
    pub fn record_len(&self) -> u64 {
        self.table_offset() + (self.table_len() + TRAILER_LEN) as u64
    }

    /// The head's bytes, its checksum covering `meta` too.
    pub fn encode(&self, meta: &[u8]) -> [u8; HEAD_LEN] {
        let mut out = [0u8; HEAD_LEN];
        out[0..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[6] = u8::from(self.variance.is_some());
        out[8..24].copy_from_slice(&self.combined);
        out[24..40].copy_from_slice(&self.primary);
        out[40..56].copy_from_slice(&self.variance.unwrap_or_default());
        out[56..64].copy_from_slice(&self.written_ms.to_le_bytes());
        out[64..68].copy_from_slice(&self.internal_len.to_le_bytes());
        out[68..72].copy_from_slice(&self.header_len.to_le_bytes());
        out[72..80].copy_from_slice(&self.body_len.to_le_bytes());
        // 80..88 reserved
        let crc = head_crc(&out[..88], meta);
        out[88..92].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Read a head from its bytes. Its checksum is checked by [`Head::verify`] once the meta
    /// is read.
    pub fn decode(bytes: &[u8]) -> Result<Head, RecordError> {
        let bytes: &[u8; HEAD_LEN] = bytes
            .get(..HEAD_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(RecordError::NotARecord)?;
        if &bytes[0..4] != MAGIC || bytes[4] != VERSION {
            return Err(RecordError::NotARecord);
        }
        let kind = match bytes[5] {
            1 => Kind::Object,
            2 => Kind::Tombstone,
            3 => Kind::UrlTombstone,
            _ => return Err(RecordError::NotARecord),
        };
        let key = |at: usize| -> HashBinary {
            let mut k = [0u8; 16];
            k.copy_from_slice(&bytes[at..at + 16]);
            k
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Head {
            kind,
            combined: key(8),
            primary: key(24),
            variance: (bytes[6] == 1).then(|| key(40)),
            written_ms: u64_at(56),
            internal_len: u32_at(64),
            header_len: u32_at(68),
            body_len: u64_at(72),
        })
    }

    /// Whether `head_bytes` (as read) and `meta` are what was written.
    pub fn verify(head_bytes: &[u8], meta: &[u8]) -> Result<(), RecordError> {
        let stored = head_bytes
            .get(88..92)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or(RecordError::NotARecord)?;
        if head_crc(&head_bytes[..88], meta) == stored {
            Ok(())
        } else {
            Err(RecordError::Checksum)
        }
    }
}

fn head_crc(head: &[u8], meta: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(meta);
    h.finalize()
}

/// The checksum of one body chunk.
pub fn chunk_crc(chunk: &[u8]) -> u32 {
    crc32fast::hash(chunk)
}

/// The checksum table of `body`.
pub fn table(body: &[u8]) -> Vec<u8> {
    body.chunks(CHUNK)
        .flat_map(|c| chunk_crc(c).to_le_bytes())
        .collect()
}

/// The trailer closing a record of `record_len` bytes whose checksum table is `table`.
pub fn trailer(table: &[u8], record_len: u64) -> [u8; TRAILER_LEN] {
    let mut out = [0u8; TRAILER_LEN];
    out[0..4].copy_from_slice(TRAILER_MAGIC);
    out[4..8].copy_from_slice(&crc32fast::hash(table).to_le_bytes());
    out[8..16].copy_from_slice(&record_len.to_le_bytes());
    out
}

/// Check that `table_and_trailer` (the checksum table then the trailer, as read) closes a
/// record of `head`, and return the table's checksums.
pub fn verify_table(head: &Head, table_and_trailer: &[u8]) -> Result<Vec<u32>, RecordError> {
    let n = head.table_len();
    if table_and_trailer.len() != n + TRAILER_LEN {
        return Err(RecordError::Incomplete);
    }
    let (table, end) = table_and_trailer.split_at(n);
    if end != trailer(table, head.record_len()) {
        return Err(RecordError::Incomplete);
    }
    Ok(table
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(body_len: u64) -> Head {
        Head {
            kind: Kind::Object,
            combined: [1; 16],
            primary: [2; 16],
            variance: Some([3; 16]),
            written_ms: 1_700_000_000_000,
            internal_len: 5,
            header_len: 7,
            body_len,
        }
    }

    #[test]
    fn a_head_round_trips_and_checks_its_meta() {
        let h = head(10);
        let meta = b"internalheader";
        let bytes = h.encode(&meta[..12]);
        assert_eq!(Head::decode(&bytes), Ok(h.clone()));
        assert_eq!(Head::verify(&bytes, &meta[..12]), Ok(()));
        assert_eq!(
            Head::verify(&bytes, b"internalheaD"),
            Err(RecordError::Checksum)
        );
        let mut flipped = bytes;
        flipped[75] ^= 1; // the body length
        assert_eq!(
            Head::verify(&flipped, &meta[..12]),
            Err(RecordError::Checksum)
        );
        let mut other = bytes;
        other[0] = b'X';
        assert_eq!(Head::decode(&other), Err(RecordError::NotARecord));
        assert_eq!(Head::decode(&bytes[..40]), Err(RecordError::NotARecord));
        let plain = Head {
            variance: None,
            ..h
        };
        assert_eq!(
            Head::decode(&plain.encode(b"")).map(|h| h.variance),
            Ok(None)
        );
    }

    #[test]
    fn lengths_add_up() {
        let h = head(CHUNK as u64 * 2 + 1);
        assert_eq!(h.body_offset(), (HEAD_LEN + 12) as u64);
        assert_eq!(h.table_len(), 12);
        assert_eq!(
            h.record_len(),
            h.body_offset() + h.body_len + 12 + TRAILER_LEN as u64
        );
        assert_eq!(head(0).table_len(), 0);
        assert_eq!(chunk_count(CHUNK as u64), 1);
    }

    #[test]
    fn the_trailer_closes_only_its_own_record() {
        let body = vec![7u8; CHUNK + 100];
        let h = head(body.len() as u64);
        let t = table(&body);
        let mut closing = t.clone();
        closing.extend_from_slice(&trailer(&t, h.record_len()));
        let crcs = verify_table(&h, &closing).expect("complete");
        assert_eq!(
            crcs,
            vec![chunk_crc(&body[..CHUNK]), chunk_crc(&body[CHUNK..])]
        );
        // cut short, or closing a record of another length, or a flipped table
        assert_eq!(
            verify_table(&h, &closing[..closing.len() - 1]),
            Err(RecordError::Incomplete)
        );
        let other = head(body.len() as u64 + 1);
        assert!(verify_table(&other, &closing).is_err());
        closing[0] ^= 1;
        assert_eq!(verify_table(&h, &closing), Err(RecordError::Incomplete));
    }
}
