//! A simulated disk for one member: redb runs on it through `StorageBackend`, the raft log
//! file through `LogFile`.
//!
//! The data file keeps two images: `volatile` (what the member has written) and `durable`
//! (what the last `sync_data` made safe). The log file, append-only between atomic
//! replacements, keeps its bytes and how many of them are synced. A crash throws away what was
//! not synced in both (or keeps a torn half of the last unsynced write, when that fault is on). Each open gets a generation:
//! after a crash, the dead member's handles (whose tasks madsim may drop later) can neither read
//! nor write, so nothing it does after "power loss" reaches the restarted member's disk.

use std::io;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Image {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    generation: u64,
    /// Fault: the next syncs fail (the member must stop, never carry on).
    fail_sync: bool,
    /// Fault: a crash keeps a torn prefix of the last unsynced write.
    torn_write: Option<(u64, Vec<u8>)>,
    tear_on_crash: bool,
    syncs: u64,
    log: LogImage,
    /// Tripwire: a process that writes a raft log file here panics with this message.
    forbid_log: Option<String>,
}

#[derive(Debug, Default)]
struct LogImage {
    bytes: Vec<u8>,
    /// `bytes[..synced]` survives a crash.
    synced: usize,
}

/// One member's disk, shared by the harness (to crash it) and the member (to use it).
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    image: Arc<Mutex<Image>>,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// A backend for a newly started member process.
    pub fn open(&self) -> SimBackend {
        let generation = self.image.lock().unwrap().generation;
        SimBackend {
            disk: self.clone(),
            generation,
        }
    }

    /// Power loss: everything not synced is gone (or torn, when that fault is on), and the
    /// old process's handles go dead.
    pub fn crash(&self) {
        let mut img = self.image.lock().unwrap();
        img.generation += 1;
        let mut survivor = img.durable.clone();
        if img.tear_on_crash {
            if let Some((offset, data)) = img.torn_write.take() {
                // Half of the last unsynced write made it to the platter.
                let half = &data[..data.len() / 2];
                let end = offset as usize + half.len();
                if survivor.len() < end {
                    survivor.resize(end, 0);
                }
                survivor[offset as usize..end].copy_from_slice(half);
            }
        }
        img.volatile = survivor;
        img.torn_write = None;
        let tear = img.tear_on_crash;
        let log = &mut img.log;
        let unsynced = log.bytes.len() - log.synced;
        let keep = if tear {
            log.synced + unsynced / 2
        } else {
            log.synced
        };
        log.bytes.truncate(keep);
        log.synced = keep;
    }

    /// The data dir is lost (`rm -rf`, or a new disk): both images of the data file and the
    /// whole raft log file are gone, and the old process's handles go dead. (Snapshot files are
    /// kept by the member's `MemSnapshots`, not here: they may stay.)
    pub fn wipe(&self) {
        let mut img = self.image.lock().unwrap();
        img.generation += 1;
        img.volatile.clear();
        img.durable.clear();
        img.torn_write = None;
        img.log = LogImage::default();
    }

    /// A tripwire for a member that must refuse to start: the first raft log write on this
    /// disk (a member starting afresh writes its first log before it talks to any peer)
    /// panics with `message`, inside the member, before its raft can do anything.
    pub fn forbid_log_writes(&self, message: String) {
        self.image.lock().unwrap().forbid_log = Some(message);
    }

    /// Bytes in the raft log file.
    pub fn log_len(&self) -> u64 {
        self.image.lock().unwrap().log.bytes.len() as u64
    }

    /// The raft log file for a newly started member process.
    pub fn open_log(&self) -> SimLogFile {
        SimLogFile(self.open())
    }

    pub fn set_fail_sync(&self, fail: bool) {
        self.image.lock().unwrap().fail_sync = fail;
    }

    pub fn set_tear_on_crash(&self, tear: bool) {
        self.image.lock().unwrap().tear_on_crash = tear;
    }

    pub fn syncs(&self) -> u64 {
        self.image.lock().unwrap().syncs
    }

    pub fn len(&self) -> u64 {
        self.image.lock().unwrap().volatile.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// redb's view of a `SimDisk`, bound to one process lifetime (generation).
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    generation: u64,
}

impl SimBackend {
    fn with<T>(&self, f: impl FnOnce(&mut Image) -> io::Result<T>) -> io::Result<T> {
        let mut img = self.disk.image.lock().unwrap();
        if img.generation != self.generation {
            return Err(io::Error::other("simulated disk: process crashed"));
        }
        f(&mut img)
    }
}

/// The raft log file on a `SimDisk`, bound to one process lifetime.
#[derive(Debug)]
pub struct SimLogFile(SimBackend);

impl SimLogFile {
    fn check_tripwire(&self) {
        let forbidden = self.0.disk.image.lock().unwrap().forbid_log.clone();
        if let Some(message) = forbidden {
            panic!("{message}");
        }
    }
}

impl detcd_core::wal::LogFile for SimLogFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        self.0.with(|img| Ok(img.log.bytes.clone()))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_tripwire();
        self.0.with(|img| {
            img.log.bytes.extend_from_slice(bytes);
            Ok(())
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.with(|img| {
            if img.fail_sync {
                return Err(io::Error::other("simulated fsync failure"));
            }
            img.log.synced = img.log.bytes.len();
            img.syncs += 1;
            Ok(())
        })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.with(|img| {
            img.log.bytes.truncate(len as usize);
            img.log.synced = img.log.synced.min(len as usize);
            Ok(())
        })
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_tripwire();
        self.0.with(|img| {
            if img.fail_sync {
                return Err(io::Error::other("simulated fsync failure"));
            }
            img.log.bytes = bytes.to_vec();
            img.log.synced = bytes.len();
            img.syncs += 1;
            Ok(())
        })
    }
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        self.with(|img| Ok(img.volatile.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|img| {
            let end = offset as usize + out.len();
            if end > img.volatile.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of simulated disk",
                ));
            }
            out.copy_from_slice(&img.volatile[offset as usize..end]);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|img| {
            img.volatile.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|img| {
            if img.fail_sync {
                return Err(io::Error::other("simulated fsync failure"));
            }
            img.durable = img.volatile.clone();
            img.torn_write = None;
            img.syncs += 1;
            Ok(())
        })
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with(|img| {
            let end = offset as usize + data.len();
            if img.volatile.len() < end {
                img.volatile.resize(end, 0);
            }
            img.volatile[offset as usize..end].copy_from_slice(data);
            img.torn_write = Some((offset, data.to_vec()));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn put(db: &redb::Database, k: u64, durability: redb::Durability) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        txn.open_table(T).unwrap().insert(k, k).unwrap();
        txn.commit().unwrap();
    }

    fn keys(db: &redb::Database) -> Vec<u64> {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        t.iter().unwrap().map(|r| r.unwrap().0.value()).collect()
    }

    #[test]
    fn crash_keeps_only_synced_commits() {
        let disk = SimDisk::new();
        {
            let db = redb::Builder::new()
                .create_with_backend(disk.open())
                .unwrap();
            put(&db, 1, redb::Durability::Immediate);
            put(&db, 2, redb::Durability::None);
            assert_eq!(keys(&db), vec![1, 2]);
            disk.crash();
            // The dead process's database can no longer touch the disk.
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(redb::Durability::Immediate).unwrap();
            txn.open_table(T).unwrap().insert(3, 3).unwrap();
            assert!(txn.commit().is_err());
        }
        let db = redb::Builder::new()
            .create_with_backend(disk.open())
            .unwrap();
        assert_eq!(keys(&db), vec![1]);
    }

    #[test]
    fn wipe_loses_everything() {
        use detcd_core::wal::LogFile;
        let disk = SimDisk::new();
        {
            let db = redb::Builder::new()
                .create_with_backend(disk.open())
                .unwrap();
            put(&db, 1, redb::Durability::Immediate);
            let mut log = disk.open_log();
            log.append(b"entries").unwrap();
            log.sync().unwrap();
            disk.wipe();
            // The old process's handles are dead.
            assert!(log.append(b"more").is_err());
        }
        assert!(disk.is_empty());
        assert_eq!(disk.log_len(), 0);
        let db = redb::Builder::new()
            .create_with_backend(disk.open())
            .unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(T).is_err(), "a wiped disk has no tables");
    }

    #[test]
    #[should_panic(expected = "must not start")]
    fn forbidden_log_write_panics() {
        use detcd_core::wal::LogFile;
        let disk = SimDisk::new();
        disk.forbid_log_writes("must not start".into());
        let _ = disk.open_log().replace(b"fresh log");
    }

    #[test]
    fn failed_sync_fails_the_commit() {
        let disk = SimDisk::new();
        let db = redb::Builder::new()
            .create_with_backend(disk.open())
            .unwrap();
        put(&db, 1, redb::Durability::Immediate);
        disk.set_fail_sync(true);
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        txn.open_table(T).unwrap().insert(2, 2).unwrap();
        assert!(txn.commit().is_err());
    }
}
