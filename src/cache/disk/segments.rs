//! The disk tier's segment files: append-only files `NNNNNNNNNNNNNNNN.seg` in one directory,
//! written by one writer, deleted oldest first so the files together never exceed the budget.
//! Also the scan that finds the whole records of a segment after a restart.

use super::record::{self, Head, Kind, RecordError, HEAD_LEN, TRAILER_LEN};
use pingora_cache::key::HashBinary;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SUFFIX: &str = ".seg";
/// The suffix of a file an object is streamed to before it becomes a segment of its own.
pub const STREAM_SUFFIX: &str = ".part";

/// One segment file.
pub struct Segment {
    /// Its number: later segments have larger ones.
    pub id: u64,
    /// The open file, shared with readers (a reader keeps reading a segment deleted meanwhile).
    pub file: Arc<File>,
    /// Bytes in the file, counted against the budget.
    pub len: u64,
    /// The keys (combined, primary) of the objects written to it (some may have been rewritten
    /// or removed since).
    pub keys: Vec<(HashBinary, HashBinary)>,
}

/// A segment's number, file, length and the keys (combined, primary) written to it.
pub type SegmentView = (u64, Arc<File>, u64, Vec<(HashBinary, HashBinary)>);

/// What one append did.
pub struct Appended {
    /// The segment the record went to.
    pub segment: u64,
    /// Its offset there.
    pub offset: u64,
    /// Segments deleted to make room, oldest first (for the index).
    pub dropped: Vec<Segment>,
    /// A segment was created for it (readers must learn of its file).
    pub created: Option<(u64, Arc<File>)>,
}

/// Every segment, oldest first; the last is written to when it is `writable`.
pub struct Segments {
    dir: PathBuf,
    budget: u64,
    segment_size: u64,
    list: VecDeque<Segment>,
    total: u64,
    /// Bytes reserved by objects being streamed to files of their own (see
    /// [`Segments::reserve`]), counted against the budget with the segments.
    reserved: u64,
    next_id: u64,
    /// Whether the newest segment was created by this process (older ones may end in a torn
    /// record, so nothing is appended to them).
    writable: bool,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}{SUFFIX}"))
}

impl Segments {
    /// The segments in `dir` (created if missing), oldest first, none of them written to.
    pub fn open(dir: &Path, budget: u64, segment_size: u64) -> std::io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(STREAM_SUFFIX)) {
                // an object a process was streaming when it stopped: never whole
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push(id);
        }
        found.sort_unstable();
        let mut list = VecDeque::new();
        let mut total = 0;
        for id in found {
            let file = OpenOptions::new().read(true).open(segment_path(dir, id))?;
            let len = file.metadata()?.len();
            total += len;
            list.push_back(Segment {
                id,
                file: Arc::new(file),
                len,
                keys: Vec::new(),
            });
        }
        let next_id = list.back().map_or(1, |s| s.id + 1);
        Ok(Segments {
            dir: dir.to_path_buf(),
            budget,
            segment_size,
            list,
            total,
            reserved: 0,
            next_id,
            writable: false,
        })
    }

    /// Bytes in all segment files, and reserved for objects being streamed.
    pub fn total(&self) -> u64 {
        self.total + self.reserved
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Delete the oldest segments until `len` more bytes fit the budget.
    fn make_room(&mut self, len: u64) -> Vec<Segment> {
        let mut dropped = Vec::new();
        while self.total() + len > self.budget {
            let Some(oldest) = self.list.pop_front() else {
                break;
            };
            if self.list.is_empty() {
                self.writable = false;
            }
            self.total -= oldest.len;
            // deleted now; readers holding the file keep reading it until they let go
            let _ = std::fs::remove_file(segment_path(&self.dir, oldest.id));
            dropped.push(oldest);
        }
        dropped
    }

    /// Reserve `len` bytes of the budget for an object being streamed to a file of its own,
    /// deleting the oldest segments to make room; returns them (for the index). Refused when
    /// the reservations alone would exceed the budget.
    pub fn reserve(&mut self, len: u64) -> std::io::Result<Vec<Segment>> {
        if self.reserved + len > self.budget {
            return Err(std::io::Error::other(
                "disk budget reserved by streaming objects",
            ));
        }
        let dropped = self.make_room(len);
        self.reserved += len;
        Ok(dropped)
    }

    /// Give back `len` reserved bytes (a streamed object was abandoned, or became a segment).
    pub fn release(&mut self, len: u64) {
        self.reserved = self.reserved.saturating_sub(len);
    }

    /// Make the whole record streamed to `part` (`len` bytes, reserved before) the newest
    /// segment, the object `object` in it; new records go to a segment after it. Returns its
    /// number.
    pub fn adopt(
        &mut self,
        part: &Path,
        file: Arc<File>,
        len: u64,
        object: (HashBinary, HashBinary),
    ) -> std::io::Result<u64> {
        if let Some(last) = self.list.back().filter(|_| self.writable) {
            let _ = last.file.sync_data();
        }
        let id = self.next_id;
        std::fs::rename(part, segment_path(&self.dir, id))?;
        self.next_id += 1;
        self.release(len);
        self.total += len;
        self.list.push_back(Segment {
            id,
            file,
            len,
            keys: vec![object],
        });
        self.writable = false;
        Ok(id)
    }

    /// Each segment's number, file and length, oldest first.
    pub fn files(&self) -> Vec<(u64, Arc<File>, u64)> {
        self.list
            .iter()
            .map(|s| (s.id, s.file.clone(), s.len))
            .collect()
    }

    /// Each segment's number, file, length and the keys written to it, oldest first (what the
    /// index checkpoint covers).
    pub fn covered(&self) -> Vec<SegmentView> {
        self.list
            .iter()
            .map(|s| (s.id, s.file.clone(), s.len, s.keys.clone()))
            .collect()
    }

    /// The oldest segment (number, file, length, keys written to it) when adding `len` bytes
    /// would delete it to keep the budget, and it is not the one being written.
    pub fn next_to_go(&self, len: u64) -> Option<SegmentView> {
        if self.total() + len <= self.budget || self.list.len() < 2 {
            return None;
        }
        self.list
            .front()
            .map(|s| (s.id, s.file.clone(), s.len, s.keys.clone()))
    }

    /// Whether segment `id` still exists.
    pub fn contains(&self, id: u64) -> bool {
        self.list.iter().any(|s| s.id == id)
    }

    /// Note that `keys` were found in segment `id` by a scan, so dropping the segment drops
    /// them.
    pub fn note_keys(&mut self, id: u64, keys: Vec<(HashBinary, HashBinary)>) {
        if let Some(s) = self.list.iter_mut().find(|s| s.id == id) {
            s.keys.extend(keys);
        }
    }

    /// The segment being written to, if any (it is never compacted).
    pub fn writable_id(&self) -> Option<u64> {
        self.list.back().filter(|_| self.writable).map(|s| s.id)
    }

    /// Each segment's number and length, oldest first.
    pub fn lengths(&self) -> Vec<(u64, u64)> {
        self.list.iter().map(|s| (s.id, s.len)).collect()
    }

    /// The keys (combined, primary) of the objects written to segments older than `id`.
    pub fn keys_before(&self, id: u64) -> Vec<(HashBinary, HashBinary)> {
        self.list
            .iter()
            .take_while(|s| s.id < id)
            .flat_map(|s| s.keys.iter().copied())
            .collect()
    }

    /// Delete segment `id` now (its records were copied or are dead); readers holding its file
    /// keep reading it until they let go.
    pub fn remove(&mut self, id: u64) -> Option<Segment> {
        let at = self.list.iter().position(|s| s.id == id)?;
        let seg = self.list.remove(at)?;
        if self.list.is_empty() {
            self.writable = false;
        }
        self.total -= seg.len;
        let _ = std::fs::remove_file(segment_path(&self.dir, id));
        Some(seg)
    }

    /// Append one record made of `parts` (`len` bytes in all), an object's when `object` says
    /// its keys (combined, primary): into the newest segment if it was started by this process
    /// and has room, else into a new one; the oldest segments are deleted first until the
    /// budget holds it. A record larger than the budget is refused.
    pub fn append(
        &mut self,
        object: Option<(HashBinary, HashBinary)>,
        parts: &[&[u8]],
        len: u64,
    ) -> std::io::Result<Appended> {
        self.append_with(object, len, |mut out| {
            parts.iter().try_for_each(|p| out.write_all(p))
        })
    }

    /// [`Segments::append`], with the record's `len` bytes written by `write`. A `write` that
    /// fails leaves a torn record: nothing more goes into that segment.
    pub fn append_with(
        &mut self,
        object: Option<(HashBinary, HashBinary)>,
        len: u64,
        write: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> std::io::Result<Appended> {
        if len + self.reserved > self.budget {
            return Err(std::io::Error::other("record larger than the disk budget"));
        }
        let full = self
            .list
            .back()
            .is_none_or(|s| !self.writable || (s.len > 0 && s.len + len > self.segment_size));
        // room for the record, in a new segment or the current one
        let dropped = self.make_room(len);
        let mut created = None;
        if full || !self.writable || self.list.is_empty() {
            if let Some(last) = self.list.back() {
                // closing a segment: make it durable before the next one starts
                let _ = last.file.sync_data();
            }
            let id = self.next_id;
            self.next_id += 1;
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(segment_path(&self.dir, id))?;
            let file = Arc::new(file);
            created = Some((id, file.clone()));
            self.list.push_back(Segment {
                id,
                file,
                len: 0,
                keys: Vec::new(),
            });
            self.writable = true;
        }
        let Some(seg) = self.list.back_mut() else {
            return Err(std::io::Error::other("no segment to write to"));
        };
        let offset = seg.len;
        if let Err(e) = write(&seg.file) {
            // a torn record: nothing more goes into this segment (the scan stops before it)
            let len = seg.file.metadata().map_or(seg.len, |m| m.len());
            self.total += len - seg.len;
            seg.len = len;
            self.writable = false;
            return Err(e);
        }
        seg.len += len;
        seg.keys.extend(object);
        self.total += len;
        Ok(Appended {
            segment: seg.id,
            offset,
            dropped,
            created,
        })
    }

    /// Make what was written durable.
    pub fn sync(&self) -> std::io::Result<()> {
        match self.list.back() {
            Some(s) if self.writable => s.file.sync_data(),
            _ => Ok(()),
        }
    }
}

/// A record found by [`scan`].
pub struct Found {
    /// Its head.
    pub head: Head,
    /// Its offset in the segment.
    pub offset: u64,
}

/// Visit every whole record of a segment of `len` bytes, in order, until the first that is not
/// whole (a torn write) or not a record. Checks each head's checksum and trailer, not bodies
/// (those are checked when read). Returns the bytes scanned.
pub fn scan(file: &File, len: u64, visit: impl FnMut(Found)) -> u64 {
    scan_from(file, 0, len, visit)
}

/// [`scan`], from the record at `start` on (where an earlier scan, or the index checkpoint,
/// stopped). Returns the offset it stopped at.
pub fn scan_from(file: &File, start: u64, len: u64, mut visit: impl FnMut(Found)) -> u64 {
    // one sequential pass: small bodies are read through the buffer, large ones seeked over
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, At { file, pos: start });
    let mut offset = start;
    let mut buffers = ScanBuffers::default();
    while offset + HEAD_LEN as u64 <= len {
        match read_record_head(&mut reader, offset, len, &mut buffers) {
            Ok(head) => {
                let next = offset + head.record_len();
                visit(Found { head, offset });
                offset = next;
            }
            Err(_) => break,
        }
    }
    offset
}

/// Reads `file` from `pos` on with `pread`, leaving the file's own position alone (a segment's
/// file is shared with the writer and with readers).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for At<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(_) => None,
        }
        .ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// Bytes a scan reads at once.
const SCAN_BUFFER: usize = 1 << 20;

/// What the scan reuses from one record to the next.
struct ScanBuffers {
    head: [u8; HEAD_LEN],
    meta: Vec<u8>,
    table: Vec<u8>,
}

impl Default for ScanBuffers {
    fn default() -> Self {
        ScanBuffers {
            head: [0; HEAD_LEN],
            meta: Vec::new(),
            table: Vec::new(),
        }
    }
}

/// Read the record at `offset`, where `reader` stands, up to its end.
fn read_record_head(
    reader: &mut BufReader<At<'_>>,
    offset: u64,
    len: u64,
    b: &mut ScanBuffers,
) -> Result<Head, RecordError> {
    let incomplete = |_| RecordError::Incomplete;
    reader.read_exact(&mut b.head).map_err(incomplete)?;
    let head = Head::decode(&b.head)?;
    if offset + head.record_len() > len {
        return Err(RecordError::Incomplete);
    }
    b.meta.resize(head.meta_len(), 0);
    reader.read_exact(&mut b.meta).map_err(incomplete)?;
    Head::verify(&b.head, &b.meta)?;
    let skip = i64::try_from(head.body_len).map_err(|_| RecordError::Incomplete)?;
    reader.seek_relative(skip).map_err(incomplete)?;
    b.table.resize(head.table_len() + TRAILER_LEN, 0);
    reader.read_exact(&mut b.table).map_err(incomplete)?;
    record::verify_table(&head, &b.table)?;
    if head.kind != Kind::Object && head.body_len != 0 {
        return Err(RecordError::NotARecord);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::record::{table, trailer};

    fn record(key: u8, body: &[u8]) -> Vec<u8> {
        let head = Head {
            kind: Kind::Object,
            combined: [key; 16],
            primary: [key; 16],
            variance: None,
            written_ms: 1,
            internal_len: 2,
            header_len: 1,
            body_len: body.len() as u64,
        };
        let meta = b"abc";
        let t = table(body);
        let mut out = head.encode(meta).to_vec();
        out.extend_from_slice(meta);
        out.extend_from_slice(body);
        out.extend_from_slice(&t);
        out.extend_from_slice(&trailer(&t, head.record_len()));
        out
    }

    fn keys_in(segments: &Segments) -> Vec<(u64, Vec<u8>)> {
        segments
            .files()
            .into_iter()
            .map(|(id, file, len)| {
                let mut keys = Vec::new();
                scan(&file, len, |f| keys.push(f.head.combined[0]));
                (id, keys)
            })
            .collect()
    }

    #[test]
    fn appends_roll_over_and_the_oldest_segment_goes_to_keep_the_budget() {
        let dir = tempfile::tempdir().expect("dir");
        let r = record(1, &[0u8; 900]);
        let len = r.len() as u64;
        let mut s = Segments::open(dir.path(), len * 5, len * 2).expect("open");
        for k in 1..=7u8 {
            let rec = record(k, &[k; 900]);
            let a = s
                .append(Some(([k; 16], [k; 16])), &[&rec], len)
                .expect("append");
            assert!(s.total() <= len * 5, "within the budget");
            if k == 6 {
                assert_eq!(a.dropped.len(), 1, "the oldest segment went");
                assert_eq!(
                    a.dropped[0].keys,
                    vec![([1; 16], [1; 16]), ([2; 16], [2; 16])]
                );
            }
        }
        assert_eq!(
            keys_in(&s),
            vec![(2, vec![3, 4]), (3, vec![5, 6]), (4, vec![7])]
        );
        assert!(!segment_path(dir.path(), 1).exists());
        // reopened: the same segments, and new records go to a new one
        drop(s);
        let mut s = Segments::open(dir.path(), len * 5, len * 2).expect("open");
        assert_eq!(s.total(), len * 5);
        let rec = record(8, &[8; 900]);
        let a = s
            .append(Some(([8; 16], [8; 16])), &[&rec], len)
            .expect("append");
        assert_eq!((a.segment, a.dropped.len()), (5, 1));
        assert!(
            s.append(None, &[&rec], len * 6).is_err(),
            "larger than the budget"
        );
    }

    #[test]
    fn a_scan_stops_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.seg");
        let mut bytes = record(1, b"one");
        bytes.extend(record(2, &vec![2u8; record::CHUNK + 10]));
        let third = record(3, b"three");
        bytes.extend_from_slice(&third[..third.len() - 3]);
        std::fs::write(&path, &bytes).expect("write");
        let file = File::open(&path).expect("open");
        let mut keys = Vec::new();
        let scanned = scan(&file, bytes.len() as u64, |f| keys.push(f.head.combined[0]));
        assert_eq!(keys, vec![1, 2], "the torn third record is not whole");
        assert_eq!(scanned as usize, bytes.len() - (third.len() - 3));
        // a flipped bit in the second record's meta ends the scan there
        bytes[record(1, b"one").len() + HEAD_LEN] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let mut keys = Vec::new();
        scan(&File::open(&path).expect("open"), bytes.len() as u64, |f| {
            keys.push(f.head.combined[0])
        });
        assert_eq!(keys, vec![1]);
    }
}
