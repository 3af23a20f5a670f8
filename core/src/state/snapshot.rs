//! The snapshot file: the state machine at one applied index, written and read as a stream
//! of frames, so neither the leader building it, the transport carrying it nor the follower
//! installing it holds the whole store in memory.
//!
//! Layout: [`MAGIC`], then frames. A frame is `len: u32 LE`, `crc32c(payload): u32 LE`,
//! `payload`: one encoded `SnapshotFrame`. The first frame is the head (revisions, cluster ID,
//! members), then MVCC rows in key order (about [`ROWS_FRAME_BYTES`] a frame), then the end
//! frame with the number of rows. A file that stops early, has a bad checksum or an
//! oversized frame, frames out of order, or bytes after the end is refused whole
//! ([`SnapshotFileError::Damaged`]), never installed in part.
//!
//! The raft snapshot's data is a `SnapshotRef` (size and CRC-32C of the whole file), which
//! the receiving transport checks the file against before raft sees the message.

use crate::proto::detcdpb::{snapshot_frame::Frame, MvccRow, MvccRows, SnapshotData};
use crate::proto::detcdpb::{SnapshotFrame, SnapshotRef};
use prost::Message as _;
use std::io::{self, Read, Write};

/// First bytes of every snapshot file (the version is in it).
pub const MAGIC: &[u8] = b"detcd-snapshot-1\n";
/// Rows are cut into frames of about this many bytes.
pub const ROWS_FRAME_BYTES: usize = 1 << 20;
/// A frame claiming more than this is damage (a single row is at most etcd's 1.5 MiB request
/// limit; a row frame overshoots [`ROWS_FRAME_BYTES`] by at most one row).
pub const MAX_FRAME_BYTES: u32 = 64 << 20;

/// A snapshot saved by a client (Maintenance.Snapshot, `etcdctl snapshot save`) is the
/// snapshot file padded with zero bytes to a multiple of this, then the SHA-256 of those
/// bytes: etcd's clients (clientv3/snapshot `hasChecksum`) accept a saved file only if its
/// size is a multiple of 512 plus the 32-byte digest, as bbolt files always are.
pub const SAVED_ALIGN: u64 = 512;

/// Why a snapshot file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("reading the snapshot file: {0}")]
    Io(#[from] io::Error),
    #[error("snapshot file damaged at byte {offset}: {what}")]
    Damaged { offset: u64, what: String },
}

/// Size and CRC-32C of a byte stream, to check a received file against its `SnapshotRef`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileCheck {
    pub size: u64,
    pub crc32c: u32,
}

impl FileCheck {
    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
    }

    /// True if the bytes seen are exactly the file `r` names.
    pub fn matches(&self, r: &SnapshotRef) -> bool {
        self.size == r.size && self.crc32c == r.crc32c
    }

    pub fn to_ref(self) -> SnapshotRef {
        SnapshotRef {
            size: self.size,
            crc32c: self.crc32c,
        }
    }
}

/// Writes a snapshot file: [`Self::new`] with the head, [`Self::push_row`] for every row in
/// key order, then [`Self::finish`]. Holds at most one frame of rows.
pub struct SnapshotWriter<W: Write> {
    out: W,
    check: FileCheck,
    rows: Vec<MvccRow>,
    rows_bytes: usize,
    row_count: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the magic and the head frame (`head.rows` must be empty: rows are pushed).
    pub fn new(out: W, head: &SnapshotData) -> io::Result<Self> {
        assert!(head.rows.is_empty(), "rows go in frames of their own");
        let mut w = SnapshotWriter {
            out,
            check: FileCheck::default(),
            rows: Vec::new(),
            rows_bytes: 0,
            row_count: 0,
        };
        w.write(MAGIC)?;
        w.frame(Frame::Head(head.clone()))?;
        Ok(w)
    }

    /// Adds one MVCC row (its revision key and encoded value).
    pub fn push_row(&mut self, revision: &[u8], value: &[u8]) -> io::Result<()> {
        self.rows.push(MvccRow {
            revision: revision.to_vec(),
            value: value.to_vec(),
        });
        self.rows_bytes += revision.len() + value.len() + 8;
        self.row_count += 1;
        if self.rows_bytes >= ROWS_FRAME_BYTES {
            self.flush_rows()?;
        }
        Ok(())
    }

    /// Writes the last rows and the end frame; returns the output (flushed, not synced) and
    /// the file's size and checksum.
    pub fn finish(mut self) -> io::Result<(W, SnapshotRef)> {
        self.flush_rows()?;
        self.frame(Frame::End(self.row_count))?;
        self.out.flush()?;
        Ok((self.out, self.check.to_ref()))
    }

    fn flush_rows(&mut self) -> io::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        self.rows_bytes = 0;
        self.frame(Frame::Rows(MvccRows { rows }))
    }

    fn frame(&mut self, frame: Frame) -> io::Result<()> {
        let payload = SnapshotFrame { frame: Some(frame) }.encode_to_vec();
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME_BYTES)
            .ok_or_else(|| io::Error::other("snapshot frame too large"))?;
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        self.write(&header)?;
        self.write(&payload)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check.update(bytes);
        self.out.write_all(bytes)
    }
}

/// Reads a snapshot file frame by frame ([`Self::open`], then [`Self::next_rows`] until
/// `None`). Every damage is an error; `None` comes only after a valid end frame at EOF.
pub struct SnapshotReader<R: Read> {
    input: R,
    offset: u64,
    rows_seen: u64,
    done: bool,
    /// Zero bytes up to the next multiple of [`SAVED_ALIGN`] may follow the end frame.
    padded: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Checks the magic and reads the head frame.
    pub fn open(input: R) -> Result<(Self, SnapshotData), SnapshotFileError> {
        Self::open_with(input, false)
    }

    /// [`Self::open`] for the content of a client's saved snapshot (its SHA-256 trailer
    /// already taken off): after the end frame, only zero padding up to the next multiple of
    /// [`SAVED_ALIGN`] may follow.
    pub fn open_padded(input: R) -> Result<(Self, SnapshotData), SnapshotFileError> {
        Self::open_with(input, true)
    }

    fn open_with(input: R, padded: bool) -> Result<(Self, SnapshotData), SnapshotFileError> {
        let mut r = SnapshotReader {
            input,
            offset: 0,
            rows_seen: 0,
            done: false,
            padded,
        };
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic, "the file is shorter than its magic")?;
        if magic != MAGIC {
            return Err(r.damaged(0, "not a detcd snapshot file (bad magic)"));
        }
        match r.frame()? {
            Frame::Head(head) if head.rows.is_empty() => Ok((r, head)),
            _ => Err(r.damaged(MAGIC.len() as u64, "the first frame is not the head")),
        }
    }

    /// The next frame of rows, or `None` after the end frame (whose row count must match
    /// and after which the file must end).
    pub fn next_rows(&mut self) -> Result<Option<Vec<MvccRow>>, SnapshotFileError> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        match self.frame()? {
            Frame::Rows(MvccRows { rows }) => {
                self.rows_seen += rows.len() as u64;
                Ok(Some(rows))
            }
            Frame::End(count) if count == self.rows_seen => {
                let mut rest = Vec::new();
                let limit = if self.padded { SAVED_ALIGN } else { 0 };
                (&mut self.input).take(limit + 1).read_to_end(&mut rest)?;
                let end = self.offset + rest.len() as u64;
                let padding_ok = rest.iter().all(|b| *b == 0)
                    && rest.len() as u64 <= limit
                    && (rest.is_empty() || end.is_multiple_of(SAVED_ALIGN));
                if !padding_ok {
                    return Err(self.damaged(self.offset, "bytes after the end frame"));
                }
                self.done = true;
                Ok(None)
            }
            Frame::End(count) => Err(self.damaged(
                at,
                &format!(
                    "the end frame counts {count} rows, the file has {}",
                    self.rows_seen
                ),
            )),
            Frame::Head(_) => Err(self.damaged(at, "a second head frame")),
        }
    }

    /// Bytes read so far; after the end frame, the length of the snapshot file (any padding
    /// after it not counted).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Every row, one at a time (frames are read as needed).
    pub fn rows(self) -> impl Iterator<Item = Result<MvccRow, SnapshotFileError>> {
        let mut reader = self;
        let mut frame = Vec::new().into_iter();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if failed {
                return None;
            }
            if let Some(row) = frame.next() {
                return Some(Ok(row));
            }
            match reader.next_rows() {
                Ok(Some(rows)) => frame = rows.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }

    fn frame(&mut self) -> Result<Frame, SnapshotFileError> {
        let at = self.offset;
        let mut header = [0u8; 8];
        self.read_exact(&mut header, "the file ends inside a frame header")?;
        let len = u32::from_le_bytes(header[..4].try_into().unwrap());
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > MAX_FRAME_BYTES {
            return Err(self.damaged(at, &format!("a frame claims {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload, "the file ends inside a frame")?;
        if crc32c::crc32c(&payload) != crc {
            return Err(self.damaged(at, "frame checksum mismatch"));
        }
        match SnapshotFrame::decode(payload.as_slice()) {
            Ok(SnapshotFrame { frame: Some(f) }) => Ok(f),
            Ok(SnapshotFrame { frame: None }) => Err(self.damaged(at, "an empty frame")),
            Err(e) => Err(self.damaged(at, &format!("undecodable frame: {e}"))),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], short: &str) -> Result<(), SnapshotFileError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.damaged(self.offset, short))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn damaged(&self, offset: u64, what: &str) -> SnapshotFileError {
        SnapshotFileError::Damaged {
            offset,
            what: what.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> SnapshotData {
        SnapshotData {
            cluster_id: 7,
            current_revision: 9,
            compact_revision: -1,
            ..Default::default()
        }
    }

    fn file(rows: usize, value_len: usize) -> (Vec<u8>, SnapshotRef) {
        let mut w = SnapshotWriter::new(Vec::new(), &head()).unwrap();
        for i in 0..rows {
            w.push_row(&(i as u64).to_be_bytes(), &vec![b'v'; value_len])
                .unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<(SnapshotData, Vec<MvccRow>), SnapshotFileError> {
        let (r, head) = SnapshotReader::open(bytes)?;
        let rows = r.rows().collect::<Result<Vec<_>, _>>()?;
        Ok((head, rows))
    }

    #[test]
    fn round_trip_in_several_frames() {
        // 3,000 rows of 1 KiB: more than two row frames.
        let (bytes, r) = file(3000, 1024);
        let mut check = FileCheck::default();
        check.update(&bytes);
        assert!(check.matches(&r));
        let (h, rows) = read_all(&bytes).unwrap();
        assert_eq!(h, head());
        assert_eq!(rows.len(), 3000);
        assert_eq!(rows[2999].revision, 2999u64.to_be_bytes());
        let (r, _) = SnapshotReader::open(bytes.as_slice()).unwrap();
        assert!(r.rows().count() == 3000);
        let (empty, _) = file(0, 0);
        assert_eq!(read_all(&empty).unwrap().1, vec![]);
    }

    /// Every kind of damage is refused, never read as a shorter snapshot.
    #[test]
    fn damage_is_refused() {
        let (bytes, _) = file(3000, 1024);
        let damaged = |b: &[u8]| matches!(read_all(b), Err(SnapshotFileError::Damaged { .. }));
        // Cut anywhere: at a frame boundary too (the end frame is missing).
        for cut in [
            0,
            5,
            MAGIC.len(),
            MAGIC.len() + 3,
            bytes.len() / 2,
            bytes.len() - 1,
        ] {
            assert!(damaged(&bytes[..cut]), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(damaged(&flipped));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(damaged(&trailing));
        let mut huge = bytes.clone();
        huge[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(damaged(&huge));
        // A whole row frame taken out: the end frame's count no longer matches.
        let (r, _) = SnapshotReader::open(bytes.as_slice()).unwrap();
        let head_end = r.offset as usize;
        let frame_len =
            8 + u32::from_le_bytes(bytes[head_end..head_end + 4].try_into().unwrap()) as usize;
        let mut missing = bytes[..head_end].to_vec();
        missing.extend_from_slice(&bytes[head_end + frame_len..]);
        assert!(damaged(&missing));
        assert!(damaged(b"not a snapshot at all, just text"));
    }

    /// A saved snapshot's content: the file, then zeros to a multiple of 512, and nothing
    /// else; a plain snapshot file takes no padding.
    #[test]
    fn padding_only_in_saved_content() {
        let (bytes, _) = file(10, 100);
        let padded_len = (bytes.len() as u64).div_ceil(SAVED_ALIGN) as usize * 512;
        let mut padded = bytes.clone();
        padded.resize(padded_len, 0);
        let read_padded = |b: &[u8]| -> Result<usize, SnapshotFileError> {
            let (r, _) = SnapshotReader::open_padded(b)?;
            Ok(r.rows().collect::<Result<Vec<_>, _>>()?.len())
        };
        assert_eq!(read_padded(&padded).unwrap(), 10);
        assert_eq!(read_padded(&bytes).unwrap(), 10, "no padding needed");
        assert!(read_all(&padded).is_err(), "a plain file takes no padding");
        let mut nonzero = padded.clone();
        *nonzero.last_mut().unwrap() = 1;
        assert!(read_padded(&nonzero).is_err());
        let mut short = padded.clone();
        short.pop();
        assert!(read_padded(&short).is_err(), "padding stops short of 512");
        let mut long = padded.clone();
        long.resize(padded_len + 512, 0);
        assert!(
            read_padded(&long).is_err(),
            "more than one block of padding"
        );
    }
}
