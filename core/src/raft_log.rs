//! The raft log as raft-rs sees it (`raft::Storage`), kept in memory and mirrored into redb.
//!
//! Every mutation takes the caller's redb write transaction, so the driver can put a Ready's
//! entries, hard state and applied effects in one durable commit. If that commit fails the
//! member must stop (an fsync error is fatal), so memory never outlives a lost write.

use crate::tables::{meta_keys, META, RAFT_LOG};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::ReadableDatabase;
use std::cell::Cell;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt raft state in data file: {0}")]
    Corrupt(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for LogError {
            fn from(e: $t) -> Self { LogError::Storage(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

impl From<protobuf::ProtobufError> for LogError {
    fn from(e: protobuf::ProtobufError) -> Self {
        LogError::Corrupt(e.to_string())
    }
}

/// Raft's persistent view: hard state, conf state, and the entries after the last compaction.
pub struct RaftLog {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry folded into the state machine and dropped from the log.
    compacted_index: u64,
    compacted_term: u64,
    /// `entries[i].index == compacted_index + 1 + i`.
    entries: Vec<Entry>,
    /// The latest state-machine snapshot built for a lagging follower.
    snapshot: Option<Snapshot>,
    /// Set when raft asked for a snapshot we do not have; the driver builds one.
    snapshot_wanted: Cell<bool>,
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("protobuf encoding into memory cannot fail")
}

fn u64_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

impl RaftLog {
    /// Reads the raft state from the data file. `None` when the file holds no log yet.
    pub fn load(db: &redb::Database) -> Result<Option<RaftLog>, LogError> {
        let txn = db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(cs) = meta.get(meta_keys::CONF_STATE)? else {
            return Ok(None);
        };
        let conf_state = ConfState::parse_from_bytes(cs.value())?;
        let hard_state = match meta.get(meta_keys::HARD_STATE)? {
            Some(v) => HardState::parse_from_bytes(v.value())?,
            None => HardState::default(),
        };
        let (compacted_index, compacted_term) = match meta.get(meta_keys::SNAPSHOT_META)? {
            Some(v) => {
                let b = v.value();
                if b.len() != 16 {
                    return Err(LogError::Corrupt("snapshot metadata".into()));
                }
                (
                    u64::from_be_bytes(b[..8].try_into().unwrap()),
                    u64::from_be_bytes(b[8..].try_into().unwrap()),
                )
            }
            None => (0, 0),
        };
        let mut entries = Vec::new();
        let log = txn.open_table(RAFT_LOG)?;
        for row in log.range(compacted_index + 1..)? {
            let (k, v) = row?;
            let e = Entry::parse_from_bytes(v.value())?;
            let want = compacted_index + 1 + entries.len() as u64;
            if k.value() != want || e.index != want {
                return Err(LogError::Corrupt(format!(
                    "raft log gap: expected index {want}, found {}",
                    k.value()
                )));
            }
            entries.push(e);
        }
        Ok(Some(RaftLog {
            hard_state,
            conf_state,
            compacted_index,
            compacted_term,
            entries,
            snapshot: None,
            snapshot_wanted: Cell::new(false),
        }))
    }

    /// A brand-new member of a new cluster: the voters are known, the log is empty.
    pub fn bootstrap(
        txn: &redb::WriteTransaction,
        conf_state: ConfState,
    ) -> Result<RaftLog, LogError> {
        let mut meta = txn.open_table(META)?;
        meta.insert(meta_keys::CONF_STATE, encode(&conf_state).as_slice())?;
        meta.insert(
            meta_keys::HARD_STATE,
            encode(&HardState::default()).as_slice(),
        )?;
        txn.open_table(RAFT_LOG)?;
        Ok(RaftLog {
            hard_state: HardState::default(),
            conf_state,
            compacted_index: 0,
            compacted_term: 0,
            entries: Vec::new(),
            snapshot: None,
            snapshot_wanted: Cell::new(false),
        })
    }

    /// For the simulator's `forget-hardstate` mutation only: forgets the persisted term and
    /// vote, as a store that lost its hard state would (the commit index is kept).
    pub fn forget_term_and_vote(&mut self) {
        self.hard_state.term = 0;
        self.hard_state.vote = 0;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    fn last(&self) -> u64 {
        self.compacted_index + self.entries.len() as u64
    }

    /// Appends entries from a Ready, replacing any conflicting suffix.
    pub fn append(&mut self, txn: &redb::WriteTransaction, ents: &[Entry]) -> Result<(), LogError> {
        let Some(first) = ents.first() else {
            return Ok(());
        };
        if first.index <= self.compacted_index {
            return Err(LogError::Corrupt(format!(
                "append at {} overlaps compacted log (compacted through {})",
                first.index, self.compacted_index
            )));
        }
        if first.index > self.last() + 1 {
            return Err(LogError::Corrupt(format!(
                "append at {} leaves a gap after {}",
                first.index,
                self.last()
            )));
        }
        let mut table = txn.open_table(RAFT_LOG)?;
        // Drop the conflicting suffix, in memory and on disk.
        let keep = (first.index - self.compacted_index - 1) as usize;
        if keep < self.entries.len() {
            let old_last = self.last();
            for idx in first.index..=old_last {
                table.remove(idx)?;
            }
            self.entries.truncate(keep);
        }
        for e in ents {
            table.insert(e.index, encode(e).as_slice())?;
            self.entries.push(e.clone());
        }
        Ok(())
    }

    pub fn set_hard_state(
        &mut self,
        txn: &redb::WriteTransaction,
        hs: &HardState,
    ) -> Result<(), LogError> {
        txn.open_table(META)?
            .insert(meta_keys::HARD_STATE, encode(hs).as_slice())?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records a commit index change that came without a new hard state (light ready).
    pub fn set_commit(
        &mut self,
        txn: &redb::WriteTransaction,
        commit: u64,
    ) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        if commit > hs.commit {
            hs.commit = commit;
            self.set_hard_state(txn, &hs)?;
        }
        Ok(())
    }

    pub fn set_conf_state(
        &mut self,
        txn: &redb::WriteTransaction,
        cs: ConfState,
    ) -> Result<(), LogError> {
        txn.open_table(META)?
            .insert(meta_keys::CONF_STATE, encode(&cs).as_slice())?;
        self.conf_state = cs;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn install_snapshot(
        &mut self,
        txn: &redb::WriteTransaction,
        snap: &Snapshot,
    ) -> Result<(), LogError> {
        let md = snap.get_metadata();
        let mut table = txn.open_table(RAFT_LOG)?;
        table.retain(|_, _| false)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(
            meta_keys::SNAPSHOT_META,
            u64_pair(md.index, md.term).as_slice(),
        )?;
        meta.insert(
            meta_keys::CONF_STATE,
            encode(md.get_conf_state()).as_slice(),
        )?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(md.index);
        hs.term = hs.term.max(md.term);
        meta.insert(meta_keys::HARD_STATE, encode(&hs).as_slice())?;
        self.hard_state = hs;
        self.conf_state = md.get_conf_state().clone();
        self.compacted_index = md.index;
        self.compacted_term = md.term;
        self.entries.clear();
        self.snapshot = Some(snap.clone());
        Ok(())
    }

    /// Drops entries through `index` (already applied, and covered by the state machine).
    pub fn compact(&mut self, txn: &redb::WriteTransaction, index: u64) -> Result<(), LogError> {
        if index <= self.compacted_index {
            return Ok(());
        }
        if index > self.last() {
            return Err(LogError::Corrupt(format!(
                "compact to {index} beyond last index {}",
                self.last()
            )));
        }
        let term = self.term_of(index).expect("index within the log");
        let mut table = txn.open_table(RAFT_LOG)?;
        for idx in self.compacted_index + 1..=index {
            table.remove(idx)?;
        }
        txn.open_table(META)?
            .insert(meta_keys::SNAPSHOT_META, u64_pair(index, term).as_slice())?;
        let drop = (index - self.compacted_index) as usize;
        self.entries.drain(..drop);
        self.compacted_index = index;
        self.compacted_term = term;
        Ok(())
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.compacted_index {
            return Some(self.compacted_term);
        }
        if idx < self.compacted_index || idx > self.last() {
            return None;
        }
        Some(self.entries[(idx - self.compacted_index - 1) as usize].term)
    }

    /// Term of an index still in the log (or the compaction point), for building snapshots.
    pub fn entry_term(&self, idx: u64) -> Option<u64> {
        self.term_of(idx)
    }

    /// Offers a state-machine snapshot for raft to send to lagging followers.
    pub fn set_snapshot(&mut self, snap: Snapshot) {
        self.snapshot = Some(snap);
        self.snapshot_wanted.set(false);
    }

    /// True once after raft asked for a snapshot we could not give.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            panic!(
                "raft asked for entries [{low}, {high}) beyond last index {}",
                self.last()
            );
        }
        let lo = (low - self.compacted_index - 1) as usize;
        let hi = (high - self.compacted_index - 1) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(s)
                if s.get_metadata().index >= self.compacted_index
                    && s.get_metadata().index >= request_index =>
            {
                Ok(s.clone())
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn mem_db() -> redb::Database {
        redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap()
    }

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    fn voters(ids: &[u64]) -> ConfState {
        let mut cs = ConfState::default();
        cs.voters = ids.to_vec();
        cs
    }

    #[test]
    fn fresh_file_has_no_log() {
        let db = mem_db();
        assert!(RaftLog::load(&db).unwrap().is_none());
    }

    #[test]
    fn append_truncate_compact_and_reload() {
        let db = mem_db();
        let txn = db.begin_write().unwrap();
        let mut log = RaftLog::bootstrap(&txn, voters(&[1, 2, 3])).unwrap();
        log.append(&txn, &(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        // A new leader overwrites 8..: the old suffix must vanish from memory and disk.
        log.append(&txn, &[entry(8, 2), entry(9, 2)]).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 3;
        hs.commit = 9;
        log.set_hard_state(&txn, &hs).unwrap();
        log.compact(&txn, 5).unwrap();
        txn.commit().unwrap();

        assert_eq!(log.first_index().unwrap(), 6);
        assert_eq!(log.last_index().unwrap(), 9);
        assert_eq!(log.term(5).unwrap(), 1);
        assert_eq!(log.term(9).unwrap(), 2);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        ));

        let again = RaftLog::load(&db).unwrap().unwrap();
        assert_eq!(again.hard_state(), &hs);
        assert_eq!(again.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(again.first_index().unwrap(), 6);
        assert_eq!(again.last_index().unwrap(), 9);
        let ents = again
            .entries(6, 10, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            ents.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(6, 1), (7, 1), (8, 2), (9, 2)]
        );
    }

    #[test]
    fn missing_snapshot_is_requested_once() {
        let db = mem_db();
        let txn = db.begin_write().unwrap();
        let mut log = RaftLog::bootstrap(&txn, voters(&[1])).unwrap();
        txn.commit().unwrap();
        assert!(log.snapshot(0, 2).is_err());
        assert!(log.take_snapshot_wanted());
        assert!(!log.take_snapshot_wanted());
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 0;
        log.set_snapshot(snap);
        assert!(log.snapshot(0, 2).is_ok());
    }

    #[test]
    fn installed_snapshot_resets_the_log() {
        let db = mem_db();
        let txn = db.begin_write().unwrap();
        let mut log = RaftLog::bootstrap(&txn, voters(&[1, 2, 3])).unwrap();
        log.append(&txn, &[entry(1, 1), entry(2, 1)]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 50;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
        log.install_snapshot(&txn, &snap).unwrap();
        txn.commit().unwrap();
        let again = RaftLog::load(&db).unwrap().unwrap();
        assert_eq!(again.first_index().unwrap(), 51);
        assert_eq!(again.last_index().unwrap(), 50);
        assert_eq!(again.term(50).unwrap(), 4);
        assert_eq!(again.hard_state().commit, 50);
    }
}
