//! Reads from segment files that can refuse to wait for the device (`preadv2` with
//! `RWF_NOWAIT`): a disk hit whose bytes the page cache holds is read on the request's own
//! thread, and only a read that would wait goes to the blocking pool.

use rustix::io::{preadv2, Errno, ReadWriteFlags};
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};

/// May a read wait for the device?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// No: the bytes come from the page cache, or the read fails with
    /// [`io::ErrorKind::WouldBlock`] (run it again with [`Wait::Allowed`], off the runtime).
    Never,
    /// Yes: a blocking read.
    Allowed,
}

/// The kernel or the file system refused `RWF_NOWAIT` once: every [`Wait::Never`] read is then
/// a [`io::ErrorKind::WouldBlock`] at once, so all reads go to the blocking pool as before.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Fill every buffer of `bufs`, in order, from `file` at `offset`. With [`Wait::Never`], a read
/// that would wait for the device (or a kernel without `RWF_NOWAIT`) is
/// [`io::ErrorKind::WouldBlock`], and the buffers hold nothing to be trusted. The end of the
/// file before the buffers are full is [`io::ErrorKind::UnexpectedEof`].
pub(crate) fn read_exact_at(
    file: &File,
    bufs: &mut [IoSliceMut<'_>],
    mut offset: u64,
    wait: Wait,
) -> io::Result<()> {
    let flags = match wait {
        Wait::Never if UNSUPPORTED.load(Ordering::Relaxed) => return Err(would_block()),
        Wait::Never => ReadWriteFlags::NOWAIT,
        Wait::Allowed => ReadWriteFlags::empty(),
    };
    let mut rest = bufs;
    IoSliceMut::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match preadv2(file, rest, offset, flags) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                offset += n as u64;
                IoSliceMut::advance_slices(&mut rest, n);
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if wait == Wait::Never => return Err(would_block()),
            Err(Errno::OPNOTSUPP | Errno::NOSYS) if wait == Wait::Never => {
                UNSUPPORTED.store(true, Ordering::Relaxed);
                return Err(would_block());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// [`read_exact_at`] into one buffer.
pub(crate) fn read_one_at(file: &File, buf: &mut [u8], offset: u64, wait: Wait) -> io::Result<()> {
    read_exact_at(file, &mut [IoSliceMut::new(buf)], offset, wait)
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, File::open(&path).unwrap())
    }

    #[test]
    fn scattered_reads_fill_each_buffer_in_order_either_way() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (_dir, file) = file_of(&data);
        for wait in [Wait::Allowed, Wait::Never] {
            let (mut a, mut b, mut c) = (vec![0; 10], vec![0; 70_000], vec![0; 3]);
            let mut bufs = [
                IoSliceMut::new(&mut a),
                IoSliceMut::new(&mut []),
                IoSliceMut::new(&mut b),
                IoSliceMut::new(&mut c),
            ];
            match read_exact_at(&file, &mut bufs, 5, wait) {
                Ok(()) => {}
                // the file was just written, so its pages are cached; only a kernel or file
                // system without RWF_NOWAIT says WouldBlock here
                Err(e) if wait == Wait::Never && e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{wait:?}: {e}"),
            }
            assert_eq!(a, data[5..15]);
            assert_eq!(b, data[15..70_015]);
            assert_eq!(c, data[70_015..70_018]);
        }
    }

    #[test]
    fn a_read_past_the_end_is_an_unexpected_eof() {
        let (_dir, file) = file_of(b"short");
        let mut buf = [0u8; 8];
        let err = read_one_at(&file, &mut buf, 0, Wait::Allowed).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
