//! Where a member keeps snapshot files (the format is detcd-core's `state::snapshot`): built
//! for a lagging follower, or received from the leader beside its MsgSnapshot. Files are
//! named by raft index; a file is visible only once complete and synced ([`FileWriter::commit`]),
//! and a commit removes all but the [`FILES_KEPT`] committed last (by commit order, not index:
//! a file received but never installed may have a higher index than every later one). Removing
//! old files is best effort: it never fails a commit.
//!
//! All methods block on disk: call them off the async workers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Snapshot files kept: the newest, and the one before it (a send may still read it).
pub const FILES_KEPT: usize = 2;

/// A member's snapshot files: a directory in production, memory in the simulator.
pub trait SnapshotFiles: Send + Sync {
    /// Starts a new file for the snapshot at `index`; it replaces any file of that index
    /// when committed, and is discarded if dropped before.
    fn create(&self, index: u64) -> io::Result<Box<dyn FileWriter>>;
    /// Opens the committed file of the snapshot at `index`.
    fn open(&self, index: u64) -> io::Result<Box<dyn Read + Send>>;
    /// Removes the file of the snapshot at `index` (best effort): a follower's file once it
    /// is installed. Nothing may be reading it: the directory's files are cut down before
    /// they are unlinked ([`remove_gradually`]).
    fn remove(&self, index: u64);
}

/// Bytes written to a snapshot file between syncs: the kernel never holds more of it dirty,
/// so the final sync does not flush the whole store at once while the raft log's fsyncs wait
/// behind it on the same disk (a one-second put stall at a million keys without it).
const SYNC_EVERY_BYTES: u64 = 16 << 20;

/// A snapshot file being written.
pub trait FileWriter: Write + Send {
    /// Syncs the file and makes it visible under its index.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// Snapshot files in `<data-dir>/member/snap/`, as `<index in hex>.snap` (etcd keeps its
/// snapshots in the same directory).
pub struct DirSnapshots {
    dir: PathBuf,
    next_tmp: AtomicU64,
    /// Committed indexes, oldest commit first; held while a commit renames and cleans up.
    committed: Mutex<std::collections::VecDeque<u64>>,
}

impl DirSnapshots {
    /// Opens (creating) the directory and removes files a crash left half-written.
    pub fn open(dir: PathBuf) -> io::Result<Arc<DirSnapshots>> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        let files = DirSnapshots {
            dir,
            next_tmp: AtomicU64::new(0),
            committed: Mutex::new(Default::default()),
        };
        // Files of an earlier run count as committed before anything of this one, by index.
        *files.committed.lock().unwrap() = files.indexes()?.into();
        Ok(Arc::new(files))
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}.snap"))
    }

    /// Indexes of the committed files, oldest first.
    fn indexes(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".snap") {
                if let Ok(i) = u64::from_str_radix(hex, 16) {
                    out.push(i);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl SnapshotFiles for Arc<DirSnapshots> {
    fn create(&self, index: u64) -> io::Result<Box<dyn FileWriter>> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{index:016x}.{n}.tmp"));
        let file = File::create(&tmp)?;
        Ok(Box::new(DirWriter {
            files: self.clone(),
            index,
            tmp,
            file: Some(file),
            unsynced: 0,
        }))
    }

    fn open(&self, index: u64) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(File::open(self.path(index))?))
    }

    fn remove(&self, index: u64) {
        self.committed.lock().unwrap().retain(|i| *i != index);
        match remove_gradually(&self.path(index)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(index, "removing a snapshot file: {e}"),
        }
    }
}

/// Bytes cut off the end of a file per step of [`remove_gradually`], and the pause after each.
const REMOVE_STEP_BYTES: u64 = 16 << 20;
const REMOVE_STEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Removes a large file a slice at a time. ext4 frees a whole file's blocks in one journal
/// commit, which every fsync on the disk then waits for: unlinking a 333 MB snapshot file at
/// once stalled the other members' raft log fsyncs by ~160 ms on this machine, and 16 MiB
/// steps 10 ms apart kept them under 20 ms (issue 8). Blocks ~10 ms per 16 MiB, so off the
/// async workers only; it cuts the file for anyone still reading it, so only for a file
/// nobody reads (a follower's installed snapshot).
fn remove_gradually(path: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > REMOVE_STEP_BYTES {
        len -= REMOVE_STEP_BYTES;
        file.set_len(len)?;
        std::thread::sleep(REMOVE_STEP_PAUSE);
    }
    drop(file);
    std::fs::remove_file(path)
}

struct DirWriter {
    files: Arc<DirSnapshots>,
    index: u64,
    tmp: PathBuf,
    file: Option<File>,
    /// Bytes written since the last sync.
    unsynced: u64,
}

impl Write for DirWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("open until commit");
        let n = file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
    }
}

impl FileWriter for DirWriter {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.as_ref().expect("committed once");
        file.sync_all()?;
        let mut committed = self.files.committed.lock().unwrap();
        std::fs::rename(&self.tmp, self.files.path(self.index))?;
        self.file = None; // renamed: nothing left for Drop to remove
        File::open(&self.files.dir)?.sync_all()?;
        // Older files go; one being read stays readable until closed (unlinked, not cut).
        for old in forget_oldest(&mut committed, self.index) {
            match std::fs::remove_file(self.files.path(old)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(index = old, "removing an old snapshot file: {e}"),
            }
        }
        Ok(())
    }
}

/// Records `index` as committed last; returns the indexes beyond [`FILES_KEPT`] to remove.
fn forget_oldest(committed: &mut std::collections::VecDeque<u64>, index: u64) -> Vec<u64> {
    committed.retain(|i| *i != index);
    committed.push_back(index);
    let extra = committed.len().saturating_sub(FILES_KEPT);
    committed.drain(..extra).collect()
}

impl Drop for DirWriter {
    /// A file never committed (the transfer failed, or the commit did) leaves nothing behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Snapshot files in memory (the simulator's disks; a crash keeps committed files, which
/// were synced).
#[derive(Clone, Default)]
pub struct MemSnapshots {
    files: Arc<Mutex<MemFiles>>,
}

#[derive(Default)]
struct MemFiles {
    bytes: BTreeMap<u64, Arc<Vec<u8>>>,
    committed: std::collections::VecDeque<u64>,
}

impl SnapshotFiles for MemSnapshots {
    fn create(&self, index: u64) -> io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(MemWriter {
            files: self.clone(),
            index,
            bytes: Vec::new(),
        }))
    }

    fn open(&self, index: u64) -> io::Result<Box<dyn Read + Send>> {
        let files = self.files.lock().unwrap();
        let bytes = files.bytes.get(&index).cloned().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no snapshot file {index}"))
        })?;
        Ok(Box::new(io::Cursor::new(ArcBytes(bytes))))
    }

    fn remove(&self, index: u64) {
        let mut files = self.files.lock().unwrap();
        files.bytes.remove(&index);
        files.committed.retain(|i| *i != index);
    }
}

struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

struct MemWriter {
    files: MemSnapshots,
    index: u64,
    bytes: Vec<u8>,
}

impl Write for MemWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileWriter for MemWriter {
    fn commit(self: Box<Self>) -> io::Result<()> {
        let mut files = self.files.files.lock().unwrap();
        files.bytes.insert(self.index, Arc::new(self.bytes));
        for old in forget_oldest(&mut files.committed, self.index) {
            files.bytes.remove(&old);
        }
        Ok(())
    }
}

/// Bytes per chunk of a snapshot file on the wire.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the network, or received ahead of the disk, at most: the memory a
/// transfer holds is this many chunks plus HTTP/2's flow-control window.
const CHUNKS_AHEAD: usize = 4;

/// Runs a disk loop: on a blocking thread in production, as a task of the simulated node
/// under madsim (which has no threads; its files are memory and never block).
fn run_disk_loop(work: impl std::future::Future<Output = ()> + Send + 'static) {
    #[cfg(not(madsim))]
    tokio::task::spawn_blocking(move || futures::executor::block_on(work));
    #[cfg(madsim)]
    tokio::spawn(work);
}

/// Reads the file of snapshot `index` in [`CHUNK_BYTES`] chunks, off the async workers; the
/// channel ends after the last chunk, or with the error that stopped the read.
pub fn read_chunks(
    files: Arc<dyn SnapshotFiles>,
    index: u64,
) -> tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    run_disk_loop(async move {
        let mut file = match files.open(index) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            let res = loop {
                match file.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == chunk.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = res {
                let _ = tx.send(Err(e)).await;
                return;
            }
            if filled == 0 {
                return;
            }
            chunk.truncate(filled);
            if tx.send(Ok(chunk)).await.is_err() {
                return; // the send was abandoned
            }
        }
    });
    rx
}

/// Writes a new file of snapshot `index` off the async workers: send `Some(bytes)` for each
/// chunk, then `None` to commit it. The receiver answers once: committed, or why not (a
/// sender dropped before `None` discards the file).
pub fn write_chunks(
    files: Arc<dyn SnapshotFiles>,
    index: u64,
) -> (
    tokio::sync::mpsc::Sender<Option<Vec<u8>>>,
    tokio::sync::oneshot::Receiver<io::Result<()>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(CHUNKS_AHEAD);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    run_disk_loop(async move {
        let res = async {
            let mut file = files.create(index)?;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Some(bytes) => file.write_all(&bytes)?,
                    None => return file.commit(),
                }
            }
            // UnexpectedEof: the receiver maps it to "the sender's file is at fault".
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the transfer ended before the file was complete",
            ))
        }
        .await;
        let _ = done_tx.send(res);
    });
    (tx, done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(files: &dyn SnapshotFiles) {
        let mut w = files.create(5).unwrap();
        w.write_all(b"five").unwrap();
        assert!(files.open(5).is_err(), "invisible before commit");
        w.commit().unwrap();
        let mut got = String::new();
        files.open(5).unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "five");
        // A writer dropped without commit leaves nothing.
        let mut w = files.create(6).unwrap();
        w.write_all(b"six").unwrap();
        drop(w);
        assert!(files.open(6).is_err());
        // Only the FILES_KEPT committed last stay, whatever their indexes: a file received
        // with a high index and never installed does not push out the newer ones.
        for i in [90, 7, 8] {
            let mut w = files.create(i).unwrap();
            w.write_all(b"x").unwrap();
            w.commit().unwrap();
        }
        assert!(files.open(5).is_err() && files.open(90).is_err());
        assert!(files.open(7).is_ok() && files.open(8).is_ok());
        // Committing an index again keeps one file of it.
        let mut w = files.create(8).unwrap();
        w.write_all(b"again").unwrap();
        w.commit().unwrap();
        assert!(files.open(7).is_ok() && files.open(8).is_ok());
        files.remove(8);
        files.remove(8); // twice is fine
        assert!(files.open(8).is_err() && files.open(7).is_ok());
    }

    #[tokio::test]
    async fn chunks_round_trip_through_the_disk_loops() {
        let files: Arc<dyn SnapshotFiles> = Arc::new(MemSnapshots::default());
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 2 + 10).map(|i| i as u8).collect();
        let (tx, done) = write_chunks(files.clone(), 3);
        for c in bytes.chunks(1000) {
            tx.send(Some(c.to_vec())).await.unwrap();
        }
        tx.send(None).await.unwrap();
        done.await.unwrap().unwrap();
        let mut rx = read_chunks(files.clone(), 3);
        let mut got = Vec::new();
        let mut chunks = 0;
        while let Some(c) = rx.recv().await {
            got.extend(c.unwrap());
            chunks += 1;
        }
        assert_eq!((got == bytes, chunks), (true, 3));
        // A transfer that stops short stores nothing.
        let (tx, done) = write_chunks(files.clone(), 4);
        tx.send(Some(vec![1])).await.unwrap();
        drop(tx);
        assert!(done.await.unwrap().is_err());
        assert!(files.open(4).is_err());
        let mut missing = read_chunks(files, 99);
        assert!(missing.recv().await.unwrap().is_err());
    }

    #[test]
    fn files_appear_on_commit_and_old_ones_go() {
        exercise(&MemSnapshots::default());
        let dir = std::env::temp_dir().join(format!("detcd-snap-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0000000000000009.3.tmp"), b"half").unwrap();
        let d = DirSnapshots::open(dir.clone()).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "crash leftovers removed"
        );
        exercise(&d);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_file_is_removed_in_steps() {
        let dir = std::env::temp_dir().join(format!("detcd-snap-remove-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big");
        let file = File::create(&path).unwrap();
        file.set_len(2 * REMOVE_STEP_BYTES + 5).unwrap(); // sparse: three steps, no disk
        drop(file);
        remove_gradually(&path).unwrap();
        assert!(!path.exists());
        let err = remove_gradually(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
