//! Leases: etcd's lessor (lease/lessor.go) as a sub-store of the state machine.
//!
//! Two halves, kept apart on purpose:
//! - the replicated half, changed only by applying committed entries on every member: which
//!   leases exist, their granted TTL, the remaining TTL a leader last checkpointed, and which
//!   keys are attached to each (from the KV writes). Stored in the LEASES table.
//! - the leader's clock: only the leader (the "primary" lessor) knows when a lease expires.
//!   Time comes in as milliseconds of the leader's tick clock ([`Lessor::advance`]); nothing
//!   here reads a clock. An expired lease is not removed here: the leader proposes its revoke
//!   through raft ([`Lessor::expired`]), and every member deletes its keys when it applies.
//!
//! A new leader counts every lease afresh from its remaining (checkpointed) or granted TTL,
//! plus an election timeout ([`Lessor::promote`], etcd's Promote(extend)): a lease never
//! expires early because leadership moved, at the price of living a little longer.

use crate::proto::detcdpb::{LeaseRecord, SnapshotData};
use crate::raft_log::LogError;
use crate::tables::LEASES;
use prost::Message as _;
use redb::{ReadableTable, TableError};
use std::collections::{BTreeMap, BTreeSet};

/// etcd's MaxLeaseTTL (lease/lessor.go): 9,000,000,000 s; larger grants are refused with
/// "etcdserver: too large lease TTL".
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// After proposing a revoke, the leader proposes it again this long later if the lease is
/// still there: the first proposal may be lost. etcd uses its request timeout, 5 s plus two
/// election timeouts (7 s by default; etcdserver/server.go expiredLeaseRetryInterval).
pub const REVOKE_RETRY_MS: u64 = 7_000;

/// etcd's minimum lease TTL (etcdserver/server.go): one and a half election timeouts, rounded
/// up to whole seconds: `ceil(((3 * election_ticks) / 2) * heartbeat_ms / 1000)`.
pub fn min_lease_ttl(election_ticks: u64, heartbeat_ms: u64) -> i64 {
    let ms = (3 * election_ticks / 2) * heartbeat_ms;
    ms.div_ceil(1000) as i64
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds (raised to the minimum at grant).
    pub ttl: i64,
    /// Remaining TTL in seconds as last checkpointed (0: none).
    pub remaining_ttl: i64,
    /// Keys attached to the lease now.
    pub keys: BTreeSet<Vec<u8>>,
    /// Leader only: when the lease expires, in milliseconds of the leader's clock.
    expiry_ms: Option<u64>,
    /// Leader only: when a revoke was last proposed for it.
    revoke_asked_ms: Option<u64>,
    /// Leader only: when its remaining TTL is next checkpointed.
    checkpoint_ms: Option<u64>,
}

impl Lease {
    fn record(&self) -> LeaseRecord {
        LeaseRecord {
            id: self.id,
            ttl: self.ttl,
            remaining_ttl: self.remaining_ttl,
        }
    }

    /// The TTL a new leader counts from: the checkpointed remainder, else the granted TTL.
    fn counted_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

/// Why a lease request was refused (etcd's texts; the gRPC layer adds codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("etcdserver: requested lease not found")]
    NotFound,
    #[error("etcdserver: lease already exists")]
    Exists,
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge,
    /// Only the leader keeps the leases' clock: the caller asks the leader.
    #[error("etcdserver: not leader")]
    NotPrimary,
}

/// The answer to a keep-alive on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The granted TTL, seconds (what etcd's LeaseKeepAliveResponse carries).
    pub ttl: i64,
    /// The lease had a checkpointed remainder, which must now be cleared through raft (a
    /// checkpoint of 0), or a later leader would count from the stale remainder.
    pub clear_checkpoint: bool,
}

/// All leases of a member, and the leader's clock over them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lessor {
    leases: BTreeMap<i64, Lease>,
    /// Which lease each leased key is attached to.
    key_lease: BTreeMap<Vec<u8>, i64>,
    /// This member is the leader and keeps the clock.
    primary: bool,
    /// The leader's clock, milliseconds (advanced by ticks).
    now_ms: u64,
    /// How far the real time may be past `now_ms` (one tick): a grant or keep-alive counts
    /// its TTL from the end of the current tick, so a lease never expires early.
    resolution_ms: u64,
    /// Leases a keep-alive renewed while they had a checkpointed remainder: a checkpoint of 0
    /// is due for each.
    clear_checkpoints: BTreeSet<i64>,
    /// What this member did since it started, for /metrics.
    counts: LeaseCounts,
}

/// Lease operations this member carried out since it started, as etcd's lease/metrics.go
/// counts them: grants and revokes applied (on every member), keep-alives renewed (on the
/// leader). Not state: two lessors compare equal whatever their counts, and a restart starts
/// from zero, as etcd's counters do.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseCounts {
    pub granted: u64,
    pub revoked: u64,
    pub renewed: u64,
}

impl PartialEq for LeaseCounts {
    fn eq(&self, _: &LeaseCounts) -> bool {
        true
    }
}

impl Eq for LeaseCounts {}

fn corrupt(e: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!("lease table: {e}"))
}

impl Lessor {
    /// Loads the leases of a data file; `leased_keys` are the keys whose current version
    /// carries a lease (from the MVCC store).
    pub fn load(
        txn: &redb::ReadTransaction,
        leased_keys: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) -> Result<Lessor, LogError> {
        let mut l = Lessor::default();
        match txn.open_table(LEASES) {
            Ok(t) => {
                for row in t.iter()? {
                    let (_, v) = row?;
                    l.insert(LeaseRecord::decode(v.value()).map_err(corrupt)?);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        for (key, id) in leased_keys {
            l.attach(key, id);
        }
        Ok(l)
    }

    fn insert(&mut self, r: LeaseRecord) {
        self.leases.insert(
            r.id,
            Lease {
                id: r.id,
                ttl: r.ttl,
                remaining_ttl: r.remaining_ttl,
                keys: BTreeSet::new(),
                expiry_ms: None,
                revoke_asked_ms: None,
                checkpoint_ms: None,
            },
        );
    }

    /// Attaches `key` to lease `id` (a key whose lease is gone stays unattached: etcd
    /// attaches at restore only to leases that exist).
    fn attach(&mut self, key: Vec<u8>, id: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.clone());
            self.key_lease.insert(key, id);
        }
    }

    fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.key_lease.remove(key) {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.remove(key);
            }
        }
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease ID, ascending.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    // ---- the replicated half (apply) ----

    /// Applies a grant (etcd's lessor.Grant): `ttl` is raised to `min_ttl`. Errors:
    /// TtlTooLarge (above [`MAX_LEASE_TTL`], checked at apply as etcd does), Exists.
    /// Returns the lease's TTL.
    pub fn grant(
        &mut self,
        txn: &redb::WriteTransaction,
        id: i64,
        ttl: i64,
        min_ttl: i64,
    ) -> Result<Result<i64, LeaseError>, LogError> {
        if ttl > MAX_LEASE_TTL {
            return Ok(Err(LeaseError::TtlTooLarge));
        }
        if self.leases.contains_key(&id) {
            return Ok(Err(LeaseError::Exists));
        }
        let ttl = ttl.max(min_ttl);
        let rec = LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        };
        txn.open_table(LEASES)?
            .insert(id, rec.encode_to_vec().as_slice())?;
        self.insert(rec);
        self.counts.granted += 1;
        if self.primary {
            let now = self.now_ms + self.resolution_ms;
            let l = self.leases.get_mut(&id).expect("just inserted");
            l.expiry_ms = Some(now + ttl as u64 * 1000);
        }
        Ok(Ok(ttl))
    }

    /// The keys a revoke of `id` deletes, in key order (the caller deletes them in one
    /// revision, then calls [`Lessor::remove`]). Error: NotFound.
    pub fn keys_of(&self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .ok_or(LeaseError::NotFound)
    }

    /// Removes a revoked lease (its keys already deleted).
    pub fn remove(&mut self, txn: &redb::WriteTransaction, id: i64) -> Result<(), LogError> {
        txn.open_table(LEASES)?.remove(id)?;
        if let Some(l) = self.leases.remove(&id) {
            for k in l.keys {
                self.key_lease.remove(&k);
            }
            self.counts.revoked += 1;
        }
        self.clear_checkpoints.remove(&id);
        Ok(())
    }

    /// Applies a checkpoint: the leader's remaining TTL for each lease that still exists.
    pub fn checkpoint(
        &mut self,
        txn: &redb::WriteTransaction,
        remaining: &[(i64, i64)],
    ) -> Result<(), LogError> {
        let mut table = txn.open_table(LEASES)?;
        for &(id, ttl) in remaining {
            if let Some(l) = self.leases.get_mut(&id) {
                l.remaining_ttl = ttl;
                table.insert(id, l.record().encode_to_vec().as_slice())?;
            }
        }
        Ok(())
    }

    /// A key was written (`lease` is its new lease, 0 for none) or deleted (`None`).
    pub fn key_changed(&mut self, key: &[u8], lease: Option<i64>) {
        let current = self.key_lease.get(key).copied();
        if current.is_some() && current == lease {
            return;
        }
        self.detach(key);
        if let Some(id) = lease.filter(|id| *id != 0) {
            self.attach(key.to_vec(), id);
        }
    }

    // ---- snapshots ----

    pub fn export(&self, out: &mut SnapshotData) {
        out.leases = self.leases.values().map(Lease::record).collect();
    }

    /// Replaces the stored leases with a snapshot's; `leased_keys` as for [`Lessor::load`].
    /// The leader's clock is not in a snapshot: a leader never installs one.
    pub fn import(
        txn: &redb::WriteTransaction,
        data: &SnapshotData,
        leased_keys: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) -> Result<Lessor, LogError> {
        let mut table = txn.open_table(LEASES)?;
        table.retain(|_, _| false)?;
        let mut l = Lessor::default();
        for r in &data.leases {
            table.insert(r.id, r.encode_to_vec().as_slice())?;
            l.insert(*r);
        }
        for (key, id) in leased_keys {
            l.attach(key, id);
        }
        Ok(l)
    }

    /// Takes over the leader's clock from an installed snapshot's lessor (which has none),
    /// and the counts of what this member did ([`Lessor::counts`]).
    pub fn keep_clock_of(&mut self, old: &Lessor) {
        self.now_ms = old.now_ms;
        self.counts = old.counts;
    }

    /// Grants, revokes and renewals since this member started ([`LeaseCounts`]).
    pub fn counts(&self) -> LeaseCounts {
        self.counts
    }

    // ---- the leader's clock ----

    /// The leader's clock moved to `now_ms`; it moves in steps of `resolution_ms`.
    pub fn advance_by_ticks(&mut self, now_ms: u64, resolution_ms: u64) {
        self.resolution_ms = resolution_ms;
        self.advance(now_ms);
    }

    /// The leader's clock moved to `now_ms`.
    pub fn advance(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// This member became the leader (etcd's Promote): every lease expires `extend_ms` after
    /// its remaining (checkpointed) or granted TTL from now.
    pub fn promote(&mut self, extend_ms: u64, checkpoint_interval_ms: Option<u64>) {
        self.primary = true;
        let now = self.now_ms;
        for l in self.leases.values_mut() {
            l.expiry_ms = Some(now + extend_ms + l.counted_ttl() as u64 * 1000);
            l.revoke_asked_ms = None;
            l.checkpoint_ms = checkpoint_due(now, l.counted_ttl(), checkpoint_interval_ms);
        }
    }

    /// This member is no longer the leader: no lease expires here (etcd's Demote).
    pub fn demote(&mut self) {
        self.primary = false;
        for l in self.leases.values_mut() {
            l.expiry_ms = None;
            l.revoke_asked_ms = None;
            l.checkpoint_ms = None;
        }
        self.clear_checkpoints.clear();
    }

    /// A keep-alive (etcd's Renew): the lease lives its granted TTL from now. Errors:
    /// NotPrimary on a follower; NotFound for an unknown or already expired lease.
    pub fn renew(&mut self, id: i64) -> Result<Renewed, LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let now = self.now_ms;
        let l = self.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if l.expiry_ms.is_some_and(|e| e <= now) {
            return Err(LeaseError::NotFound);
        }
        l.expiry_ms = Some(now + self.resolution_ms + l.ttl as u64 * 1000);
        self.counts.renewed += 1;
        let clear_checkpoint = l.remaining_ttl > 0;
        if clear_checkpoint {
            self.clear_checkpoints.insert(id);
        }
        Ok(Renewed {
            ttl: l.ttl,
            clear_checkpoint,
        })
    }

    /// Seconds left before lease `id` expires, as etcd's TimeToLive reports them (whole
    /// seconds, rounded down; never below 0), and its granted TTL. Error: NotPrimary on a
    /// follower, NotFound. The clock moves in ticks: counted from the end of the current
    /// tick, less a millisecond, since some time always passed (etcd's wall clock shows 29 s
    /// left of 30 right after a grant).
    pub fn time_to_live(&self, id: i64) -> Result<(i64, i64), LeaseError> {
        if !self.primary {
            return Err(LeaseError::NotPrimary);
        }
        let l = self.leases.get(&id).ok_or(LeaseError::NotFound)?;
        let now = self.now_ms + self.resolution_ms;
        let left_ms = l.expiry_ms.map_or(0, |e| e.saturating_sub(now));
        Ok((((left_ms.saturating_sub(1)) / 1000) as i64, l.ttl))
    }

    /// Leases past their expiry whose revoke is due (never asked, or asked more than
    /// [`REVOKE_RETRY_MS`] ago), at most `limit` (etcd limits revokes to 1000 a second),
    /// marked as asked now.
    pub fn expired(&mut self, limit: usize) -> Vec<i64> {
        self.expired_early(limit, 0)
    }

    /// [`Lessor::expired`] where a lease counts as expired once `early_percent` of its TTL
    /// is left: only the `early-lease-expiry` mutation passes anything but 0.
    pub fn expired_early(&mut self, limit: usize, early_percent: u64) -> Vec<i64> {
        if !self.primary {
            return Vec::new();
        }
        let now = self.now_ms;
        let mut out = Vec::new();
        for l in self.leases.values_mut() {
            if out.len() >= limit {
                break;
            }
            let early = l.ttl as u64 * 10 * early_percent;
            let expired = l.expiry_ms.is_some_and(|e| e.saturating_sub(early) <= now);
            let due = l.revoke_asked_ms.is_none_or(|t| now >= t + REVOKE_RETRY_MS);
            if expired && due {
                l.revoke_asked_ms = Some(now);
                out.push(l.id);
            }
        }
        out
    }

    /// Checkpoints due now (etcd's lease checkpointing, `--experimental-enable-lease-checkpoint`):
    /// the remaining TTL in whole seconds (rounded up) of each lease whose checkpoint time
    /// came, plus a 0 for each lease a keep-alive renewed over a checkpointed remainder.
    /// At most `limit` (etcd's maxLeaseCheckpointBatchSize, 1000).
    pub fn checkpoints_due(
        &mut self,
        checkpoint_interval_ms: Option<u64>,
        limit: usize,
    ) -> Vec<(i64, i64)> {
        if !self.primary {
            return Vec::new();
        }
        let now = self.now_ms;
        let mut out: Vec<(i64, i64)> = Vec::new();
        while out.len() < limit {
            let Some(id) = self.clear_checkpoints.pop_first() else {
                break;
            };
            if self.leases.contains_key(&id) {
                out.push((id, 0));
            }
        }
        let Some(interval) = checkpoint_interval_ms else {
            return out;
        };
        for l in self.leases.values_mut() {
            if out.len() >= limit {
                break;
            }
            let (Some(at), Some(expiry)) = (l.checkpoint_ms, l.expiry_ms) else {
                continue;
            };
            if at > now || expiry <= now {
                continue;
            }
            let left = (expiry - now).div_ceil(1000) as i64;
            l.checkpoint_ms = checkpoint_due(now, left, Some(interval));
            // A lease renewed since has its whole TTL left: nothing to record.
            if left < l.ttl {
                out.push((l.id, left));
            }
        }
        out
    }
}

/// When a lease with `ttl_s` left is next checkpointed: only leases that outlive an interval
/// are (etcd's scheduleCheckpointIfNeeded).
fn checkpoint_due(now_ms: u64, ttl_s: i64, interval_ms: Option<u64>) -> Option<u64> {
    let interval = interval_ms?;
    (ttl_s as u64 * 1000 > interval).then_some(now_ms + interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn db() -> redb::Database {
        redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap()
    }

    fn granted(db: &redb::Database, ids_ttls: &[(i64, i64)], min_ttl: i64) -> Lessor {
        let mut l = Lessor::default();
        let txn = db.begin_write().unwrap();
        for &(id, ttl) in ids_ttls {
            l.grant(&txn, id, ttl, min_ttl).unwrap().unwrap();
        }
        txn.commit().unwrap();
        l
    }

    #[test]
    fn etcd_minimum_ttl_with_the_default_timing_is_two_seconds() {
        assert_eq!(min_lease_ttl(10, 100), 2);
        assert_eq!(min_lease_ttl(20, 100), 3);
        assert_eq!(min_lease_ttl(10, 1000), 15);
    }

    #[test]
    fn grant_raises_the_ttl_and_refuses_an_existing_id() {
        let db = db();
        let mut l = granted(&db, &[(7, 1)], 2);
        assert_eq!(l.get(7).unwrap().ttl, 2);
        let txn = db.begin_write().unwrap();
        assert_eq!(l.grant(&txn, 7, 10, 2).unwrap(), Err(LeaseError::Exists));
    }

    #[test]
    fn grants_revokes_and_renewals_are_counted_but_are_not_state() {
        let db = db();
        let mut l = granted(&db, &[(1, 10), (2, 10)], 2);
        let mut other = granted(&db, &[(1, 10), (2, 10)], 2);
        l.promote(0, None);
        l.renew(1).unwrap();
        l.renew(1).unwrap();
        assert_eq!(l.renew(3), Err(LeaseError::NotFound));
        let txn = db.begin_write().unwrap();
        l.remove(&txn, 2).unwrap();
        l.remove(&txn, 2).unwrap(); // gone already: not counted again
        other.remove(&txn, 2).unwrap();
        let c = l.counts();
        assert_eq!((c.granted, c.revoked, c.renewed), (2, 1, 2));
        // Only the leader renews: replicas stay equal whatever they counted.
        other.promote(0, None);
        assert_eq!(l, other);
        // A snapshot install keeps the counts of the lessor it replaces.
        let mut installed = Lessor::default();
        installed.keep_clock_of(&l);
        assert_eq!(installed.counts().renewed, 2);
    }

    #[test]
    fn a_ttl_above_etcds_maximum_is_refused() {
        let db = db();
        let mut l = Lessor::default();
        let txn = db.begin_write().unwrap();
        assert_eq!(
            l.grant(&txn, 1, MAX_LEASE_TTL + 1, 2).unwrap(),
            Err(LeaseError::TtlTooLarge)
        );
        assert_eq!(
            l.grant(&txn, 1, MAX_LEASE_TTL, 2).unwrap(),
            Ok(MAX_LEASE_TTL)
        );
    }

    #[test]
    fn keys_follow_their_latest_write() {
        let db = db();
        let mut l = granted(&db, &[(1, 10), (2, 10)], 2);
        l.key_changed(b"a", Some(1));
        l.key_changed(b"b", Some(1));
        assert_eq!(l.keys_of(1).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        l.key_changed(b"a", Some(2));
        l.key_changed(b"b", Some(0));
        assert!(l.keys_of(1).unwrap().is_empty());
        assert_eq!(l.keys_of(2).unwrap(), vec![b"a".to_vec()]);
        l.key_changed(b"a", None);
        assert!(l.keys_of(2).unwrap().is_empty());
        assert_eq!(l.keys_of(3), Err(LeaseError::NotFound));
    }

    #[test]
    fn only_the_leader_expires_renews_and_answers_time_to_live() {
        let db = db();
        let mut l = granted(&db, &[(1, 5)], 2);
        assert_eq!(l.renew(1), Err(LeaseError::NotPrimary));
        assert_eq!(l.time_to_live(1), Err(LeaseError::NotPrimary));
        l.advance(100_000);
        assert!(l.expired(10).is_empty(), "a follower expires nothing");
        l.promote(1_000, None);
        assert_eq!(
            l.time_to_live(1),
            Ok((5, 5)),
            "TTL plus the election timeout, less a moment"
        );
        l.advance(105_999);
        assert!(l.expired(10).is_empty());
        l.advance(106_000);
        assert_eq!(l.expired(10), vec![1]);
        assert!(l.expired(10).is_empty(), "asked once per retry interval");
        l.advance(106_000 + REVOKE_RETRY_MS);
        assert_eq!(l.expired(10), vec![1]);
        assert_eq!(l.renew(1), Err(LeaseError::NotFound), "expired is gone");
        l.demote();
        assert_eq!(l.renew(1), Err(LeaseError::NotPrimary));
    }

    /// The clock moves in ticks: a keep-alive between two ticks counts from the next one, so
    /// the lease lives at least its TTL after the keep-alive really arrived.
    #[test]
    fn a_keep_alive_counts_from_the_end_of_its_tick() {
        let db = db();
        let mut l = granted(&db, &[(1, 2)], 2);
        l.advance_by_ticks(0, 100);
        l.promote(0, None);
        l.advance_by_ticks(1_000, 100);
        l.renew(1).unwrap(); // arrived anywhere in (1000, 1100) ms
        l.advance_by_ticks(3_000, 100);
        assert!(
            l.expired(10).is_empty(),
            "expired before 2 s after the keep-alive"
        );
        l.advance_by_ticks(3_100, 100);
        assert_eq!(l.expired(10), vec![1]);
    }

    #[test]
    fn a_keep_alive_restarts_the_granted_ttl() {
        let db = db();
        let mut l = granted(&db, &[(1, 5)], 2);
        l.promote(0, None);
        l.advance(4_000);
        assert_eq!(
            l.renew(1),
            Ok(Renewed {
                ttl: 5,
                clear_checkpoint: false
            })
        );
        l.advance(8_999);
        assert!(l.expired(10).is_empty());
        assert_eq!(l.time_to_live(1), Ok((0, 5)));
        l.advance(9_000);
        assert_eq!(l.expired(10), vec![1]);
    }

    /// With checkpointing, a new leader counts from the remaining TTL, so a long lease does
    /// not start over on every leader change; a keep-alive clears the checkpoint.
    #[test]
    fn checkpoints_carry_the_remaining_ttl_to_the_next_leader() {
        let db = db();
        let mut leader = granted(&db, &[(1, 600)], 2);
        leader.promote(0, Some(300_000));
        leader.advance(300_000);
        let due = leader.checkpoints_due(Some(300_000), 1000);
        assert_eq!(due, vec![(1, 300)]);
        let mut follower = Lessor::default();
        let txn = db.begin_write().unwrap();
        follower.insert(LeaseRecord {
            id: 1,
            ttl: 600,
            remaining_ttl: 0,
        });
        follower.checkpoint(&txn, &due).unwrap();
        follower.advance(300_000);
        follower.promote(1_000, Some(300_000));
        assert_eq!(follower.time_to_live(1), Ok((300, 600)));
        let r = follower.renew(1).unwrap();
        assert!(r.clear_checkpoint);
        assert_eq!(follower.checkpoints_due(Some(300_000), 1000), vec![(1, 0)]);
    }

    #[test]
    fn leases_survive_a_reload_with_their_keys() {
        let db = db();
        let l = granted(&db, &[(1, 10), (2, 20)], 2);
        drop(l);
        let txn = db.begin_read().unwrap();
        let l = Lessor::load(&txn, vec![(b"k".to_vec(), 2), (b"x".to_vec(), 9)]).unwrap();
        assert_eq!(l.ids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(l.get(2).unwrap().ttl, 20);
        assert_eq!(l.keys_of(2).unwrap(), vec![b"k".to_vec()]);
    }
}
