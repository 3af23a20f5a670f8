//! The raft log as raft-rs sees it (`raft::Storage`): kept in memory, and encoded as records
//! of the append-only log file (`wal`) for the executor to write, one write and one sync per
//! Ready ([`RaftLog::take_pending`]).
//!
//! What lives where: entries and hard state in the log file; the conf state, the applied index
//! and the snapshot a follower installed in redb with the state machine they describe. A log
//! file is replaced (atomically) only when it is compacted or replaced by a snapshot, and
//! only after the state machine is durable past the point it drops ([`RaftLog::file_image`]).
//! If a write or sync fails the member must stop (an fsync error is fatal), so memory never
//! outlives a lost write. Only start-up reads and repairs the file itself (`load`, `bootstrap`).

use crate::raftpb;
use crate::tables::{meta_keys, META};
use crate::wal::{self, LogFile, Record};
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

impl From<raftpb::DecodeError> for LogError {
    fn from(e: raftpb::DecodeError) -> Self {
        LogError::Corrupt(e.to_string())
    }
}

impl From<std::io::Error> for LogError {
    fn from(e: std::io::Error) -> Self {
        LogError::Storage(format!("raft log file: {e}"))
    }
}

impl From<wal::WalError> for LogError {
    fn from(e: wal::WalError) -> Self {
        LogError::Corrupt(e.to_string())
    }
}

/// What `--force-new-cluster` did to the log ([`RaftLog::force_new_cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The members the appended entries remove.
    pub removed: Vec<u64>,
    /// The new commit index (the last appended entry).
    pub commit: u64,
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
    /// Records encoded since the last `take_pending`.
    pending: Vec<u8>,
}

fn encode_conf_state(cs: &ConfState) -> Vec<u8> {
    let mut out = Vec::new();
    raftpb::encode_conf_state(cs, &mut out);
    out
}

fn u64_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn meta_u64_pair(
    meta: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<(u64, u64)>, LogError> {
    match meta.get(key)? {
        Some(v) => {
            let b = v.value();
            if b.len() != 16 {
                return Err(LogError::Corrupt(format!(
                    "{key} is {} bytes, not 16",
                    b.len()
                )));
            }
            Ok(Some((
                u64::from_be_bytes(b[..8].try_into().unwrap()),
                u64::from_be_bytes(b[8..].try_into().unwrap()),
            )))
        }
        None => Ok(None),
    }
}

impl RaftLog {
    /// True when the data file holds a member's state (it bootstrapped before).
    pub fn exists(db: &redb::Database) -> Result<bool, LogError> {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(t) => Ok(t.get(meta_keys::CONF_STATE)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the raft state of a member that `exists`: the conf state and applied index from
    /// the data file, entries and hard state from the log file (cutting off a torn tail).
    pub fn load(db: &redb::Database, file: &mut dyn LogFile) -> Result<RaftLog, LogError> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some(cs) = meta.get(meta_keys::CONF_STATE)? else {
            return Err(LogError::Corrupt("no conf state in data file".into()));
        };
        let conf_state = raftpb::decode_conf_state(cs.value())?;
        let installed = meta_u64_pair(&meta, meta_keys::SNAPSHOT_META)?;
        let applied = match meta.get(meta_keys::APPLIED_INDEX)? {
            Some(v) => v
                .value()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| LogError::Corrupt("applied index is not 8 bytes".into()))?,
            None => 0,
        };

        let bytes = file.read_all()?;
        let scan = wal::scan(&bytes)?;
        if scan.records.is_empty() {
            return Err(LogError::Corrupt(
                "the raft log file is missing or empty, but the data file has a member".into(),
            ));
        }
        if scan.valid_len < bytes.len() as u64 {
            let tail = &bytes[scan.valid_len as usize..];
            if let Some(last) = tail.iter().rposition(|&b| b != 0) {
                // Only an unsynced (never acknowledged) tail can be torn. (The zeros after
                // it are space allocated ahead, not counted.)
                tracing::warn!(
                    dropped_bytes = last as u64 + 1,
                    "raft log file ends in a torn record; cutting it off"
                );
            }
            // Zeros only: space the file allocated ahead (or an unsynced write that never
            // reached the disk), nothing to tell the operator.
            file.truncate(scan.valid_len)?;
        }
        let (mut base_index, mut base_term) = (0, 0);
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        for rec in scan.records {
            match rec {
                Record::Base { index, term } => {
                    (base_index, base_term) = (index, term);
                    entries.clear();
                }
                Record::Entry(e) => {
                    let next = base_index + 1 + entries.len() as u64;
                    if e.index <= base_index || e.index > next {
                        return Err(LogError::Corrupt(format!(
                            "raft log file: entry {} after base {base_index} and {} entries",
                            e.index,
                            entries.len()
                        )));
                    }
                    // A later entry at an index already seen replaces it and its suffix.
                    entries.truncate((e.index - base_index - 1) as usize);
                    entries.push(e);
                }
                Record::HardState(hs) => hard_state = hs,
            }
        }
        // A crash between installing a snapshot (data file) and rewriting the log file leaves
        // the log behind the state machine: the log starts at the snapshot, keeping later
        // entries only if they continue it.
        if let Some((index, term)) = installed.filter(|(i, _)| *i > base_index) {
            let at = index.checked_sub(base_index + 1).map(|i| i as usize);
            let continues = at.and_then(|i| entries.get(i)).map(|e| e.term) == Some(term);
            if continues {
                entries.drain(..=at.unwrap());
            } else {
                entries.clear();
            }
            (base_index, base_term) = (index, term);
        }
        // A data dir from before members could be added starts its log at index 0, its
        // initial configuration in no entry: a member added later would be sent entries from
        // index 1, which cannot tell it the voters (it would count itself alone). Entry 1 is
        // applied, so the log starts after it, as a new cluster's does: the new member is
        // sent a snapshot, which carries the configuration.
        if base_index == 0 && applied >= 1 && !entries.is_empty() {
            base_term = entries[0].term;
            base_index = 1;
            entries.remove(0);
        }
        let last = base_index + entries.len() as u64;
        if applied > last {
            return Err(LogError::Corrupt(format!(
                "the state machine applied index {applied} is past the raft log's last index {last}"
            )));
        }
        // The commit index is written only with entries or votes; what was applied was
        // committed, and so is the base.
        hard_state.commit = hard_state.commit.max(applied).max(base_index);
        hard_state.term = hard_state.term.max(base_term);
        Ok(RaftLog {
            hard_state,
            conf_state,
            compacted_index: base_index,
            compacted_term: base_term,
            entries,
            snapshot: None,
            snapshot_wanted: Cell::new(false),
            pending: Vec::new(),
        })
    }

    /// A brand-new member: the log is empty, the file is written (durably) now, and the conf
    /// state goes into the caller's transaction.
    ///
    /// A member of a new cluster starts from `base` (1, 1): its initial configuration is the
    /// state at index 1, as if a snapshot, so a member added later is sent a snapshot (which
    /// carries the configuration) rather than entries from index 1, which could not tell it
    /// the initial voters. A member joining a running cluster starts from (0, 0) with an
    /// empty configuration and learns everything from the leader.
    pub fn bootstrap(
        txn: &redb::WriteTransaction,
        conf_state: ConfState,
        base: (u64, u64),
        file: &mut dyn LogFile,
    ) -> Result<RaftLog, LogError> {
        let (index, term) = base;
        let mut hard_state = HardState::default();
        hard_state.term = term;
        hard_state.commit = index;
        file.replace(&wal::new_file(&[
            Record::Base { index, term },
            Record::HardState(hard_state.clone()),
        ]))?;
        let mut meta = txn.open_table(META)?;
        meta.insert(
            meta_keys::CONF_STATE,
            encode_conf_state(&conf_state).as_slice(),
        )?;
        Ok(RaftLog {
            hard_state,
            conf_state,
            compacted_index: index,
            compacted_term: term,
            entries: Vec::new(),
            snapshot: None,
            snapshot_wanted: Cell::new(false),
            pending: Vec::new(),
        })
    }

    /// `--force-new-cluster` (etcd's restartAsStandaloneNode, etcdserver/raft.go): makes
    /// this member, restarted from its data, the only member of its cluster. Entries are
    /// appended that remove every other member (voters and learners: etcd 3.4 drops only
    /// the learners its log added, a quirk not copied) and promote this one if it is a
    /// learner, and everything in the log is committed. They apply as any membership change
    /// does, so the removed IDs are recorded and never accepted again. The caller replaces
    /// the log file with [`RaftLog::file_image`] before raft starts.
    ///
    /// Unlike etcd, no entry is discarded: etcd drops the entries past the commit index its
    /// WAL recorded, but detcd records the commit index lazily (a restart takes it from the
    /// applied index), so an entry past it may be a write a client saw acknowledged. An
    /// entry that never committed is a write whose client saw it fail or time out, whose
    /// outcome was unknown: applying it breaks no promise.
    pub fn force_new_cluster(&mut self, local_id: u64) -> Result<ForcedCluster, LogError> {
        // The members after every entry: the applied configuration, then the conf changes
        // in the log past it.
        let mut voters: std::collections::BTreeSet<u64> =
            self.conf_state.voters.iter().copied().collect();
        let mut learners: std::collections::BTreeSet<u64> =
            self.conf_state.learners.iter().copied().collect();
        for e in &self.entries {
            if e.get_entry_type() != raft::prelude::EntryType::EntryConfChange {
                continue;
            }
            let cc = raftpb::decode_conf_change(&e.data)?;
            use raft::prelude::ConfChangeType as T;
            match cc.get_change_type() {
                T::AddNode => {
                    learners.remove(&cc.node_id);
                    voters.insert(cc.node_id);
                }
                T::AddLearnerNode => {
                    learners.insert(cc.node_id);
                }
                T::RemoveNode => {
                    voters.remove(&cc.node_id);
                    learners.remove(&cc.node_id);
                }
            }
        }
        let term = self.hard_state.term.max(self.compacted_term);
        let mut changes = Vec::new();
        if !voters.contains(&local_id) {
            changes.push((raft::prelude::ConfChangeType::AddNode, local_id, true));
        }
        let removed: Vec<u64> = voters
            .iter()
            .chain(learners.iter())
            .copied()
            .filter(|id| *id != local_id)
            .collect();
        for id in &removed {
            changes.push((raft::prelude::ConfChangeType::RemoveNode, *id, false));
        }
        let mut index = self.last();
        for (ty, node_id, promote) in changes {
            index += 1;
            let mut cc = raft::prelude::ConfChange::default();
            cc.set_change_type(ty);
            cc.node_id = node_id;
            let ctx = crate::proto::detcdpb::ConfChangeContext {
                request_id: 0,
                member: None,
                promote,
            };
            cc.context = prost::Message::encode_to_vec(&ctx).into();
            let mut data = Vec::new();
            raftpb::encode_conf_change(&cc, &mut data);
            let mut e = Entry::default();
            e.set_entry_type(raft::prelude::EntryType::EntryConfChange);
            e.index = index;
            e.term = term;
            e.data = data.into();
            self.entries.push(e);
        }
        self.hard_state.commit = index;
        self.hard_state.term = term;
        Ok(ForcedCluster {
            removed,
            commit: index,
        })
    }

    /// For the simulator's `forget-hardstate` mutation only: forgets the persisted term and
    /// vote, as a store that lost its hard state would (the commit index is kept).
    pub fn forget_term_and_vote(&mut self) {
        self.hard_state.term = 0;
        self.hard_state.vote = 0;
    }

    /// For the simulators' `forget-vote` mutation only: forgets the persisted vote and keeps
    /// the term, so the member may vote twice in one term.
    pub fn forget_vote(&mut self) {
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

    /// Appends entries from a Ready, replacing any conflicting suffix (in the file, a later
    /// record at an index replaces the earlier ones). Durable after `sync`.
    pub fn append(&mut self, ents: &[Entry]) -> Result<(), LogError> {
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
        self.entries
            .truncate((first.index - self.compacted_index - 1) as usize);
        for e in ents {
            wal::encode_entry(e, &mut self.pending);
            self.entries.push(e.clone());
        }
        Ok(())
    }

    /// Records a new hard state. Durable after `sync`.
    pub fn set_hard_state(&mut self, hs: &HardState) {
        wal::encode_hard_state(hs, &mut self.pending);
        self.hard_state = hs.clone();
    }

    /// The records appended since the last call, to be appended to the log file and synced.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Raft's configuration after a conf change (the state machine stores it durably).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Installs a snapshot received from the leader: the log restarts after it. The state
    /// machine stores the snapshot's point durably with its contents
    /// ([`write_snapshot_meta`]); after that the caller replaces the log file with
    /// [`RaftLog::file_image`].
    pub fn install_snapshot(&mut self, snap: &Snapshot) {
        let md = snap.get_metadata();
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(md.index);
        hs.term = hs.term.max(md.term);
        self.hard_state = hs;
        self.conf_state = md.get_conf_state().clone();
        self.compacted_index = md.index;
        self.compacted_term = md.term;
        self.entries.clear();
        self.snapshot = Some(snap.clone());
    }

    /// Drops entries through `index`; the caller then replaces the log file with
    /// [`RaftLog::file_image`]. The state machine must be durable through `index` first.
    pub fn compact(&mut self, index: u64) -> Result<(), LogError> {
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
        let drop = (index - self.compacted_index) as usize;
        self.entries.drain(..drop);
        self.compacted_index = index;
        self.compacted_term = term;
        Ok(())
    }

    /// The whole log file for the log as it is in memory (to replace the file atomically and
    /// durably). Records pending for an append are in it, so those are dropped.
    pub fn file_image(&mut self) -> Vec<u8> {
        let mut bytes = wal::new_file(&[
            Record::Base {
                index: self.compacted_index,
                term: self.compacted_term,
            },
            Record::HardState(self.hard_state.clone()),
        ]);
        for e in &self.entries {
            wal::encode_entry(e, &mut bytes);
        }
        self.pending.clear();
        bytes
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

    /// Stops offering the snapshot at `index` (its file is lost or damaged): raft's next
    /// request for one asks for a new build.
    pub fn forget_snapshot(&mut self, index: u64) {
        if self.snapshot.as_ref().map(|s| s.get_metadata().index) == Some(index) {
            self.snapshot = None;
        }
    }

    /// True once after raft asked for a snapshot we could not give.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }
}

/// Stores a snapshot's point (index, term) and conf state in the state machine's transaction.
pub fn write_snapshot_meta(txn: &redb::WriteTransaction, snap: &Snapshot) -> Result<(), LogError> {
    let md = snap.get_metadata();
    let mut meta = txn.open_table(META)?;
    meta.insert(
        meta_keys::SNAPSHOT_META,
        u64_pair(md.index, md.term).as_slice(),
    )?;
    meta.insert(
        meta_keys::CONF_STATE,
        encode_conf_state(md.get_conf_state()).as_slice(),
    )?;
    Ok(())
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

    /// The snapshot built last, if it is not behind the log and names `to` in its
    /// configuration; otherwise raft is told to ask again and a new one is built at the
    /// applied index. A snapshot older than `to`'s `member add` would be refused by it (raft
    /// restores only a snapshot whose ConfState includes the recipient), so a member added
    /// after the last build gets a fresh one, as etcd sends every follower its current state.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            Some(s)
                if s.get_metadata().index >= self.compacted_index
                    && s.get_metadata().index >= request_index
                    && names_member(s.get_metadata().get_conf_state(), to) =>
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

/// `id` is a voter or learner of `cs` (either half of a joint configuration).
fn names_member(cs: &ConfState, id: u64) -> bool {
    [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ]
    .iter()
    .any(|set| set.contains(&id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{LogFile, MemFile};
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

    /// What the executor does with a Ready's records: append them and sync.
    fn sync(log: &mut RaftLog, file: &MemFile) {
        let mut f = file.clone();
        f.append(&log.take_pending()).unwrap();
        f.sync().unwrap();
    }

    fn bootstrapped(ids: &[u64]) -> (redb::Database, MemFile, RaftLog) {
        let db = mem_db();
        let file = MemFile::default();
        let txn = db.begin_write().unwrap();
        let log = RaftLog::bootstrap(&txn, voters(ids), (0, 0), &mut file.clone()).unwrap();
        txn.commit().unwrap();
        (db, file, log)
    }

    fn set_applied(db: &redb::Database, applied: u64) {
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(meta_keys::APPLIED_INDEX, applied.to_be_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    fn indexes_and_terms(log: &RaftLog) -> Vec<(u64, u64)> {
        let (lo, hi) = (log.first_index().unwrap(), log.last_index().unwrap() + 1);
        log.entries(lo, hi, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn fresh_file_has_no_log() {
        assert!(!RaftLog::exists(&mem_db()).unwrap());
        let (db, _, _) = bootstrapped(&[1]);
        assert!(RaftLog::exists(&db).unwrap());
    }

    #[test]
    fn append_truncate_compact_and_reload() {
        let (db, file, mut log) = bootstrapped(&[1, 2, 3]);
        log.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        sync(&mut log, &file);
        // A new leader overwrites 8..: the old suffix must vanish from memory and file.
        log.append(&[entry(8, 2), entry(9, 2)]).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 3;
        hs.commit = 9;
        log.set_hard_state(&hs);
        sync(&mut log, &file);

        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.hard_state(), &hs);
        assert_eq!(again.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(
            indexes_and_terms(&again),
            vec![
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 1),
                (5, 1),
                (6, 1),
                (7, 1),
                (8, 2),
                (9, 2)
            ]
        );

        log.compact(5).unwrap();
        file.clone().replace(&log.file_image()).unwrap();
        assert_eq!(log.first_index().unwrap(), 6);
        assert_eq!(log.last_index().unwrap(), 9);
        assert_eq!(log.term(5).unwrap(), 1);
        assert_eq!(log.term(9).unwrap(), 2);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.hard_state(), &hs);
        assert_eq!(again.first_index().unwrap(), 6);
        assert_eq!(
            indexes_and_terms(&again),
            vec![(6, 1), (7, 1), (8, 2), (9, 2)]
        );
    }

    #[test]
    fn unsynced_records_are_not_in_the_file() {
        let (db, file, mut log) = bootstrapped(&[1]);
        log.append(&[entry(1, 1)]).unwrap();
        sync(&mut log, &file);
        log.append(&[entry(2, 1)]).unwrap();
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.last_index().unwrap(), 1);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_goes_on_after_it() {
        let (db, file, mut log) = bootstrapped(&[1]);
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        sync(&mut log, &file);
        let len = file.bytes.lock().unwrap().len();
        file.bytes.lock().unwrap().truncate(len - 3);
        let mut again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.last_index().unwrap(), 1);
        again.append(&[entry(2, 2)]).unwrap();
        sync(&mut again, &file);
        let third = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(indexes_and_terms(&third), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn commit_index_is_at_least_the_applied_index() {
        let (db, file, mut log) = bootstrapped(&[1]);
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        sync(&mut log, &file);
        set_applied(&db, 2);
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.hard_state().commit, 2);
    }

    #[test]
    fn applied_past_the_log_is_corruption() {
        let (db, file, mut log) = bootstrapped(&[1]);
        log.append(&[entry(1, 1)]).unwrap();
        sync(&mut log, &file);
        set_applied(&db, 5);
        assert!(matches!(
            RaftLog::load(&db, &mut file.clone()),
            Err(LogError::Corrupt(_))
        ));
    }

    #[test]
    fn missing_snapshot_is_requested_once() {
        let (_db, _file, mut log) = bootstrapped(&[1]);
        assert!(log.snapshot(0, 2).is_err());
        assert!(log.take_snapshot_wanted());
        assert!(!log.take_snapshot_wanted());
        log.set_snapshot(snapshot_at(0, 0));
        assert!(log.snapshot(0, 2).is_ok());
    }

    /// Regression (review of runtime reconfiguration): a data dir from before members could
    /// be added starts at index 0; its log now starts after the applied entry 1, so a member
    /// added later is sent a snapshot, never entries that cannot tell it the voters.
    #[test]
    fn a_log_from_index_zero_starts_after_its_first_applied_entry() {
        let (db, file, mut log) = bootstrapped(&[1, 2, 3]);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2)])
            .unwrap();
        sync(&mut log, &file);
        set_applied(&db, 2);
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.compacted_index(), 1);
        assert_eq!(again.first_index().unwrap(), 2);
        assert_eq!(again.last_index().unwrap(), 3);
        assert_eq!(again.term(1).unwrap(), 1);
        // Nothing applied yet: nothing is dropped.
        set_applied(&db, 0);
        assert_eq!(
            RaftLog::load(&db, &mut file.clone())
                .unwrap()
                .compacted_index(),
            0
        );
    }

    fn conf_change_entry(index: u64, ty: raft::prelude::ConfChangeType, node: u64) -> Entry {
        let mut cc = raft::prelude::ConfChange::default();
        cc.set_change_type(ty);
        cc.node_id = node;
        let mut e = entry(index, 1);
        e.set_entry_type(raft::prelude::EntryType::EntryConfChange);
        let mut data = Vec::new();
        raftpb::encode_conf_change(&cc, &mut data);
        e.data = data.into();
        e
    }

    #[test]
    fn force_new_cluster_keeps_every_entry_and_removes_everyone_else() {
        use raft::prelude::ConfChangeType as T;
        let (db, file, mut log) = bootstrapped(&[1, 2, 3]);
        log.append(&[
            entry(1, 1),
            conf_change_entry(2, T::AddLearnerNode, 4),
            entry(3, 1),
            entry(4, 2),
        ])
        .unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 3;
        log.set_hard_state(&hs);
        let forced = log.force_new_cluster(1).unwrap();
        assert_eq!(
            forced,
            ForcedCluster {
                removed: vec![2, 3, 4],
                commit: 7,
            }
        );
        let ents = log
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .unwrap();
        let removes: Vec<(u64, u64, u64)> = ents
            .iter()
            .map(|e| {
                let cc = raftpb::decode_conf_change(&e.data).unwrap();
                assert_eq!(cc.get_change_type(), T::RemoveNode);
                (e.index, e.term, cc.node_id)
            })
            .collect();
        assert_eq!(removes, vec![(5, 2, 2), (6, 2, 3), (7, 2, 4)]);
        assert_eq!(log.hard_state().commit, 7);
        // Durable once the file is replaced: a reload sees the same log.
        let mut f = file.clone();
        f.replace(&log.file_image()).unwrap();
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.hard_state().commit, 7);
        assert_eq!(again.last(), 7);
    }

    /// Regression: a member added after the last build was offered that snapshot, whose
    /// configuration does not name it; raft refuses such a snapshot, and the leader sent it
    /// again every heartbeat. It gets a new build instead.
    #[test]
    fn a_member_added_after_the_build_gets_a_new_snapshot() {
        let (_db, _file, mut log) = bootstrapped(&[1]);
        log.set_snapshot(snapshot_at(0, 0)); // voters 1, 2, 3
        assert!(log.snapshot(0, 3).is_ok());
        assert!(log.snapshot(0, 4).is_err());
        assert!(log.take_snapshot_wanted());
    }

    /// A snapshot whose file is unusable is offered no more: raft's next request asks for a
    /// new build; forgetting another index changes nothing.
    #[test]
    fn a_forgotten_snapshot_is_built_anew() {
        let (_db, _file, mut log) = bootstrapped(&[1]);
        log.set_snapshot(snapshot_at(0, 0));
        log.forget_snapshot(7);
        assert!(log.snapshot(0, 2).is_ok());
        log.forget_snapshot(0);
        assert!(log.snapshot(0, 2).is_err());
        assert!(log.take_snapshot_wanted());
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
        snap
    }

    #[test]
    fn installed_snapshot_resets_the_log() {
        let (db, file, mut log) = bootstrapped(&[1, 2, 3]);
        log.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        sync(&mut log, &file);
        let txn = db.begin_write().unwrap();
        write_snapshot_meta(&txn, &snapshot_at(50, 4)).unwrap();
        log.install_snapshot(&snapshot_at(50, 4));
        txn.commit().unwrap();
        file.clone().replace(&log.file_image()).unwrap();
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.first_index().unwrap(), 51);
        assert_eq!(again.last_index().unwrap(), 50);
        assert_eq!(again.term(50).unwrap(), 4);
        assert_eq!(again.hard_state().commit, 50);
    }

    #[test]
    fn a_crash_between_snapshot_install_and_log_rewrite_starts_the_log_at_the_snapshot() {
        // Entries 1..=3 in the log file; the snapshot (at 2, term 1) reached only the data file.
        let (db, file, mut log) = bootstrapped(&[1, 2, 3]);
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .unwrap();
        sync(&mut log, &file);
        let txn = db.begin_write().unwrap();
        write_snapshot_meta(&txn, &snapshot_at(2, 1)).unwrap();
        log.install_snapshot(&snapshot_at(2, 1));
        txn.commit().unwrap();
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.first_index().unwrap(), 3);
        assert_eq!(indexes_and_terms(&again), vec![(3, 1)]);

        // A snapshot the log does not continue drops the whole log.
        let txn = db.begin_write().unwrap();
        write_snapshot_meta(&txn, &snapshot_at(3, 7)).unwrap();
        log.install_snapshot(&snapshot_at(3, 7));
        txn.commit().unwrap();
        let again = RaftLog::load(&db, &mut file.clone()).unwrap();
        assert_eq!(again.first_index().unwrap(), 4);
        assert_eq!(again.last_index().unwrap(), 3);
        assert_eq!(again.term(3).unwrap(), 7);
        assert_eq!(again.hard_state().term, 7);
    }
}
