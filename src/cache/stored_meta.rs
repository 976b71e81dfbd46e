//! How a cache entry's metadata is kept in memory: pingora's internal meta as its own MessagePack
//! bytes plus the response header already parsed, so a hit rebuilds its `CacheMeta` without the
//! zstd decompression and header reparse of `CacheMeta::deserialize`, and a write skips the
//! header compression of `CacheMeta::serialize`.

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
#[derive(Serialize)]
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

/// One entry's metadata, ready to become a `CacheMeta` again.
#[derive(Debug)]
pub struct StoredMeta {
    internal: Vec<u8>,
    header: ResponseHeader,
}

fn meta_error(context: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, context)
}

impl StoredMeta {
    /// Capture `meta` for storage.
    pub fn from_meta(meta: &CacheMeta) -> Result<Self> {
        let internal = InternalMetaV2 {
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
        let internal = rmp_serde::encode::to_vec(&internal)
            .map_err(|_| meta_error("cannot encode cache meta"))?;
        let mut header = meta.response_header_copy();
        // what pingora's header serialization keeps: HTTP/1.x version, canonical reason phrase
        if header.version != Version::HTTP_10 {
            header.set_version(Version::HTTP_11);
        }
        header.set_reason_phrase(None)?;
        Ok(StoredMeta { internal, header })
    }

    /// A fresh `CacheMeta` equal to the one stored.
    pub fn to_meta(&self) -> Result<CacheMeta> {
        let empty = EMPTY_HEADER
            .as_deref()
            .ok_or_else(|| meta_error("header serializer unavailable"))?;
        let mut meta = CacheMeta::deserialize(&self.internal, empty)?;
        *meta.response_header_mut() = self.header.clone();
        Ok(meta)
    }

    /// The stored response header.
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// Bytes charged for this metadata: the internal fields plus the header as it would be sent.
    pub fn size(&self) -> usize {
        let fields: usize = self
            .header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        self.internal.len() + 16 + fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> CacheMeta {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).expect("header");
        header.append_header("Content-Type", "text/plain").expect("h");
        header.append_header("ETag", "\"v1\"").expect("h");
        header.append_header("x-multi", "a").expect("h");
        header.append_header("x-multi", "b").expect("h");
        CacheMeta::new(now + Duration::from_secs(60), now, 7, 9, header)
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
        assert_eq!(a.stale_while_revalidate_sec(), b.stale_while_revalidate_sec());
        assert_eq!(a.stale_if_error_sec(), b.stale_if_error_sec());
        assert_eq!(a.variance(), b.variance());
        assert_eq!(a.epoch_override(), b.epoch_override());
        assert_eq!(a.response_header().status, b.response_header().status);
        assert_eq!(a.headers(), b.headers());
    }

    #[test]
    fn encodes_the_bytes_pingora_does() {
        let mut meta = sample();
        let ours = StoredMeta::from_meta(&meta).expect("store");
        let (theirs, _) = meta.serialize().expect("serialize");
        assert_eq!(ours.internal, theirs);
        meta.set_variance_key([3; 16]);
        meta.set_epoch_override(SystemTime::now() - Duration::from_secs(5));
        let ours = StoredMeta::from_meta(&meta).expect("store");
        let (theirs, _) = meta.serialize().expect("serialize");
        assert_eq!(ours.internal, theirs);
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
    fn keeps_header_name_case_and_counts_size() {
        let stored = StoredMeta::from_meta(&sample()).expect("store");
        let back = stored.to_meta().expect("load");
        let wire = wire(&back);
        assert!(wire.contains("Content-Type: text/plain"), "{wire}");
        assert!(stored.size() > "Content-Type: text/plain".len());
    }
}
