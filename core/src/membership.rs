//! The replicated member list and cluster ID, as stored in the data file, and the rules for
//! changing it (etcd's server/etcdserver/api/membership/cluster.go).
//!
//! Members come from the bootstrap decision (IDs and peer URLs) or from `member add`; each
//! member publishes its name and client URLs through raft once it serves, as etcd does, so
//! `member list` shows a member without them until it has started. A removed member's ID is
//! kept: it is never accepted as a peer again and never reused.

use crate::ids::format_id;
use crate::proto::detcdpb::{MemberAttributes, MemberRecord, MemberUpdate, SnapshotData};
use crate::raft_log::LogError;
use crate::tables::{meta_keys, MEMBERS, META, REMOVED_MEMBERS};
use prost::Message;
use redb::ReadableTable;
use std::collections::{BTreeMap, BTreeSet};

/// A change to the member list as a client asks for it (etcd's Cluster service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// A new member: its ID (etcd's `member add` derivation), peer URLs and whether it joins
    /// as a learner. Name and client URLs come when it publishes them.
    Add(MemberRecord),
    Remove(u64),
    /// New peer URLs; learner status never changes here (etcd bug 21736).
    Update(MemberUpdate),
    /// A learner becomes a voter.
    Promote(u64),
}

impl MemberChange {
    /// The member the change is about.
    pub fn member_id(&self) -> u64 {
        match self {
            MemberChange::Add(m) => m.id,
            MemberChange::Remove(id) | MemberChange::Promote(id) => *id,
            MemberChange::Update(u) => u.member_id,
        }
    }
}

/// Why a membership change is refused. The texts and gRPC codes are what etcd's clients see
/// (api/v3rpc/rpctypes/error.go, mapped from etcdserver's errors in api/v3rpc/util.go).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("etcdserver: member ID already exist")]
    IdExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// Unknown, or removed before (etcd's ErrIDNotFound and ErrIDRemoved).
    #[error("etcdserver: member not found")]
    NotFound,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// `--strict-reconfig-check`: the change would leave fewer started voters than a quorum.
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    /// `--strict-reconfig-check`: the leader has not been connected to every voter for the
    /// last 5 s (etcd's HealthInterval).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    /// ID 0 is raft's "nobody" (only a forged peer request could carry it).
    #[error("etcdserver: member ID 0 is not valid")]
    ZeroId,
    /// raft takes one configuration change at a time (etcd's raft would drop the second one
    /// and its client would wait for its timeout; detcd says so at once).
    #[error("etcdserver: another membership change is in progress, retry when it has applied")]
    ChangeInProgress,
}

impl MemberError {
    /// The gRPC status code etcd answers with. "not enough started members" goes out as
    /// Unknown: etcd's rpctypes maps it to an error without a gRPC status (etcd 3.4 to 3.6).
    pub fn grpc_code(&self) -> i32 {
        const UNKNOWN: i32 = 2;
        const INVALID_ARGUMENT: i32 = 3;
        const NOT_FOUND: i32 = 5;
        const FAILED_PRECONDITION: i32 = 9;
        const UNAVAILABLE: i32 = 14;
        match self {
            MemberError::NotFound => NOT_FOUND,
            MemberError::BadUrls | MemberError::ZeroId => INVALID_ARGUMENT,
            MemberError::Unhealthy => UNAVAILABLE,
            MemberError::NotEnoughStarted => UNKNOWN,
            MemberError::IdExists
            | MemberError::PeerUrlExists
            | MemberError::NotLearner
            | MemberError::LearnerNotReady
            | MemberError::TooManyLearners
            | MemberError::ChangeInProgress => FAILED_PRECONDITION,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    cluster_id: u64,
    members: BTreeMap<u64, MemberRecord>,
    removed: BTreeSet<u64>,
    /// The cluster's alarms, kept with the rest of its metadata (one view, one lock).
    alarms: crate::alarms::Alarms,
}

/// Peer URLs as etcd's types.NewURLs takes them (the API normalizes them so; a peer's
/// forwarded change is checked again here).
fn valid_urls(urls: &[String]) -> bool {
    !urls.is_empty() && urls.iter().all(|u| crate::config::Url::parse(u).is_ok())
}

/// `started` members are a quorum of `voters` (etcd writes `nstarted >= nmembers/2+1`).
fn is_quorum(started: usize, voters: usize) -> bool {
    started > voters / 2
}

fn corrupt(e: prost::DecodeError) -> LogError {
    LogError::Corrupt(format!("member record: {e}"))
}

/// etcd compares peer URL sets sorted (membership.ValidateConfigurationChange, and
/// ValidateClusterAndAssignIDs when joining).
fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

impl Membership {
    pub fn load(txn: &redb::ReadTransaction) -> Result<Membership, LogError> {
        let mut m = Membership::default();
        match txn.open_table(META) {
            Ok(meta) => {
                if let Some(v) = meta.get(meta_keys::CLUSTER_ID)? {
                    let b: [u8; 8] = v
                        .value()
                        .try_into()
                        .map_err(|_| LogError::Corrupt("cluster id".into()))?;
                    m.cluster_id = u64::from_be_bytes(b);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(m),
            Err(e) => return Err(e.into()),
        }
        match txn.open_table(MEMBERS) {
            Ok(t) => {
                for row in t.iter()? {
                    let (k, v) = row?;
                    m.members
                        .insert(k.value(), MemberRecord::decode(v.value()).map_err(corrupt)?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match txn.open_table(REMOVED_MEMBERS) {
            Ok(t) => {
                for row in t.iter()? {
                    m.removed.insert(row?.0.value());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        m.alarms = crate::alarms::Alarms::load(txn)?;
        Ok(m)
    }

    /// The cluster's active alarms.
    pub fn alarms(&self) -> &crate::alarms::Alarms {
        &self.alarms
    }

    pub fn alarms_mut(&mut self) -> &mut crate::alarms::Alarms {
        &mut self.alarms
    }

    /// Writes a cluster's identity and members: the first start of a member of a new
    /// cluster, or of one joining a running cluster (the members it was told about).
    pub fn bootstrap(
        txn: &redb::WriteTransaction,
        cluster_id: u64,
        members: impl IntoIterator<Item = MemberRecord>,
        removed: impl IntoIterator<Item = u64>,
    ) -> Result<Membership, LogError> {
        txn.open_table(META)?
            .insert(meta_keys::CLUSTER_ID, cluster_id.to_be_bytes().as_slice())?;
        let mut m = Membership {
            cluster_id,
            ..Default::default()
        };
        let mut table = txn.open_table(MEMBERS)?;
        for rec in members {
            table.insert(rec.id, rec.encode_to_vec().as_slice())?;
            m.members.insert(rec.id, rec);
        }
        let mut table = txn.open_table(REMOVED_MEMBERS)?;
        for id in removed {
            table.insert(id, ())?;
            m.removed.insert(id);
        }
        Ok(m)
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    /// The member was removed from the cluster (etcd's IsIDRemoved).
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    pub fn removed(&self) -> impl Iterator<Item = u64> + '_ {
        self.removed.iter().copied()
    }

    pub fn get(&self, id: u64) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    /// Members in ID order.
    pub fn members(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// (ID, peer URLs) of every member: the peer transport's set.
    pub fn peers(&self) -> Vec<(u64, Vec<String>)> {
        self.members
            .values()
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect()
    }

    /// Voting members (not learners), in ID order.
    pub fn voters(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values().filter(|m| !m.is_learner)
    }

    /// Applies a member's published attributes. Unknown members are ignored (removed meanwhile).
    pub fn set_attributes(
        &mut self,
        txn: &redb::WriteTransaction,
        attrs: &MemberAttributes,
    ) -> Result<(), LogError> {
        let Some(rec) = self.members.get_mut(&attrs.member_id) else {
            return Ok(());
        };
        rec.name = attrs.name.clone();
        rec.client_urls = attrs.client_urls.clone();
        txn.open_table(MEMBERS)?
            .insert(rec.id, rec.encode_to_vec().as_slice())?;
        Ok(())
    }

    /// Whether `change` may apply to this member list (etcd's ValidateConfigurationChange),
    /// checked when it is asked for and again, deterministically on every member, when it
    /// applies. `max_learners` is etcd 3.6's `--max-learners`.
    pub fn validate(&self, change: &MemberChange, max_learners: usize) -> Result<(), MemberError> {
        let id = change.member_id();
        if id == 0 {
            return Err(MemberError::ZeroId);
        }
        if self.is_removed(id) {
            return Err(MemberError::NotFound);
        }
        match change {
            MemberChange::Add(m) => {
                if self.contains(id) {
                    return Err(MemberError::IdExists);
                }
                if !valid_urls(&m.peer_urls) {
                    return Err(MemberError::BadUrls);
                }
                let urls = sorted(&m.peer_urls);
                if self
                    .members
                    .values()
                    .any(|o| o.peer_urls.iter().any(|u| urls.contains(u)))
                {
                    return Err(MemberError::PeerUrlExists);
                }
                let learners = self.members.values().filter(|m| m.is_learner).count();
                if m.is_learner && learners + 1 > max_learners {
                    return Err(MemberError::TooManyLearners);
                }
            }
            MemberChange::Remove(_) => {
                let Some(m) = self.get(id) else {
                    return Err(MemberError::NotFound);
                };
                // raft cannot run without a voter (raft-rs refuses the change outright).
                if !m.is_learner && self.voters().count() == 1 {
                    return Err(MemberError::NotEnoughStarted);
                }
            }
            MemberChange::Promote(_) => match self.get(id) {
                None => return Err(MemberError::NotFound),
                Some(m) if !m.is_learner => return Err(MemberError::NotLearner),
                Some(_) => {}
            },
            MemberChange::Update(u) => {
                if !self.contains(id) {
                    return Err(MemberError::NotFound);
                }
                if !valid_urls(&u.peer_urls) {
                    return Err(MemberError::BadUrls);
                }
                if self
                    .members
                    .values()
                    .any(|o| o.id != id && o.peer_urls.iter().any(|url| u.peer_urls.contains(url)))
                {
                    return Err(MemberError::PeerUrlExists);
                }
            }
        }
        Ok(())
    }

    /// Applies a change that [`Membership::validate`] accepted, in the caller's transaction.
    pub fn apply(
        &mut self,
        txn: &redb::WriteTransaction,
        change: &MemberChange,
    ) -> Result<(), LogError> {
        let mut table = txn.open_table(MEMBERS)?;
        match change {
            MemberChange::Add(m) => {
                let rec = MemberRecord {
                    id: m.id,
                    peer_urls: sorted(&m.peer_urls),
                    is_learner: m.is_learner,
                    ..Default::default()
                };
                table.insert(rec.id, rec.encode_to_vec().as_slice())?;
                self.members.insert(rec.id, rec);
            }
            MemberChange::Remove(id) => {
                table.remove(*id)?;
                txn.open_table(REMOVED_MEMBERS)?.insert(*id, ())?;
                self.members.remove(id);
                self.removed.insert(*id);
            }
            MemberChange::Promote(id) => {
                if let Some(rec) = self.members.get_mut(id) {
                    rec.is_learner = false;
                    table.insert(rec.id, rec.encode_to_vec().as_slice())?;
                }
            }
            MemberChange::Update(u) => {
                if let Some(rec) = self.members.get_mut(&u.member_id) {
                    rec.peer_urls = sorted(&u.peer_urls);
                    table.insert(rec.id, rec.encode_to_vec().as_slice())?;
                }
            }
        }
        Ok(())
    }

    /// A member is started once it has published its name (etcd's Member.IsStarted).
    fn is_started(m: &MemberRecord) -> bool {
        !m.name.is_empty()
    }

    /// `--strict-reconfig-check` before adding a voter: with it, the started voters are still
    /// a quorum (etcd's IsReadyToAddVotingMember, with its exception for growing a one-member
    /// cluster that is restoring data).
    pub fn ready_to_add_voter(&self) -> bool {
        let voters = self.voters().count() + 1;
        let started = self.voters().filter(|m| Self::is_started(m)).count();
        if started == 1 && voters == 2 {
            return true;
        }
        is_quorum(started, voters)
    }

    /// `--strict-reconfig-check` before removing `id`: the started voters left are a quorum
    /// of the voters left (etcd's IsReadyToRemoveVotingMember).
    pub fn ready_to_remove_voter(&self, id: u64) -> bool {
        let left = self.voters().filter(|m| m.id != id);
        let (mut voters, mut started) = (0, 0);
        for m in left {
            voters += 1;
            if Self::is_started(m) {
                started += 1;
            }
        }
        is_quorum(started, voters)
    }

    /// `--strict-reconfig-check` before promoting a learner: the started voters, the learner
    /// counted as one of them (etcd counts it started, whatever it published), are a quorum of
    /// the voters after it (etcd's IsReadyToPromoteMember).
    pub fn ready_to_promote(&self) -> bool {
        let voters = self.voters().count() + 1;
        let started = self.voters().filter(|m| Self::is_started(m)).count() + 1;
        is_quorum(started, voters)
    }

    pub fn export(&self, out: &mut SnapshotData) {
        out.cluster_id = self.cluster_id;
        out.members = self.members.values().cloned().collect();
        out.removed = self.removed.iter().copied().collect();
        self.alarms.export(out);
    }

    /// Replaces the stored membership with a snapshot's.
    pub fn import(
        txn: &redb::WriteTransaction,
        data: &SnapshotData,
    ) -> Result<Membership, LogError> {
        txn.open_table(MEMBERS)?.retain(|_, _| false)?;
        txn.open_table(REMOVED_MEMBERS)?.retain(|_, _| false)?;
        let mut m = Membership::bootstrap(
            txn,
            data.cluster_id,
            data.members.iter().cloned(),
            data.removed.iter().copied(),
        )?;
        m.alarms = crate::alarms::Alarms::import(txn, data)?;
        Ok(m)
    }
}

impl std::fmt::Display for MemberChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberChange::Add(m) if m.is_learner => {
                write!(f, "add learner {} {:?}", format_id(m.id), m.peer_urls)
            }
            MemberChange::Add(m) => write!(f, "add member {} {:?}", format_id(m.id), m.peer_urls),
            MemberChange::Remove(id) => write!(f, "remove member {}", format_id(*id)),
            MemberChange::Promote(id) => write!(f, "promote learner {}", format_id(*id)),
            MemberChange::Update(u) => write!(
                f,
                "update member {} peer URLs to {:?}",
                format_id(u.member_id),
                u.peer_urls
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    #[test]
    fn bootstrap_publish_reload_and_snapshot_round_trip() {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let rec = |id: u64, url: &str| MemberRecord {
            id,
            peer_urls: vec![url.into()],
            ..Default::default()
        };
        let txn = db.begin_write().unwrap();
        let mut m = Membership::bootstrap(
            &txn,
            7,
            [rec(1, "http://a:2380"), rec(2, "http://b:2380")],
            [],
        )
        .unwrap();
        m.set_attributes(
            &txn,
            &MemberAttributes {
                member_id: 2,
                name: "infra1".into(),
                client_urls: vec!["http://b:2379".into()],
            },
        )
        .unwrap();
        txn.commit().unwrap();
        let loaded = Membership::load(&db.begin_read().unwrap()).unwrap();
        assert_eq!(loaded, m);
        assert_eq!(loaded.get(2).unwrap().name, "infra1");

        let mut snap = SnapshotData::default();
        m.export(&mut snap);
        let db2 = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db2.begin_write().unwrap();
        let imported = Membership::import(&txn, &snap).unwrap();
        txn.commit().unwrap();
        assert_eq!(imported, m);
    }

    fn member(id: u64, url: &str, learner: bool, started: bool) -> MemberRecord {
        MemberRecord {
            id,
            peer_urls: vec![url.into()],
            is_learner: learner,
            name: if started {
                format!("m{id}")
            } else {
                String::new()
            },
            client_urls: vec![],
        }
    }

    fn members(list: &[MemberRecord], removed: &[u64]) -> Membership {
        Membership {
            cluster_id: 7,
            members: list.iter().map(|m| (m.id, m.clone())).collect(),
            removed: removed.iter().copied().collect(),
            alarms: Default::default(),
        }
    }

    /// etcd's ValidateConfigurationChange, rule by rule.
    #[test]
    fn changes_are_validated_as_etcd_does() {
        let m = members(
            &[
                member(1, "http://a:2380", false, true),
                member(2, "http://b:2380", false, true),
                member(3, "http://c:2380", true, false),
            ],
            &[9],
        );
        let add = |id, url: &str, learner| MemberChange::Add(member(id, url, learner, false));
        assert_eq!(m.validate(&add(4, "http://d:2380", false), 1), Ok(()));
        assert_eq!(
            m.validate(&add(1, "http://d:2380", false), 1),
            Err(MemberError::IdExists)
        );
        assert_eq!(
            m.validate(&add(9, "http://d:2380", false), 1),
            Err(MemberError::NotFound)
        );
        assert_eq!(
            m.validate(&add(4, "http://b:2380", false), 1),
            Err(MemberError::PeerUrlExists)
        );
        assert_eq!(
            m.validate(&add(4, "http://d:2380", true), 1),
            Err(MemberError::TooManyLearners)
        );
        assert_eq!(m.validate(&add(4, "http://d:2380", true), 2), Ok(()));
        assert_eq!(
            m.validate(&MemberChange::Remove(5), 1),
            Err(MemberError::NotFound)
        );
        assert_eq!(
            m.validate(&MemberChange::Remove(9), 1),
            Err(MemberError::NotFound)
        );
        assert_eq!(m.validate(&MemberChange::Remove(3), 1), Ok(()));
        assert_eq!(m.validate(&MemberChange::Promote(3), 1), Ok(()));
        assert_eq!(
            m.validate(&MemberChange::Promote(1), 1),
            Err(MemberError::NotLearner)
        );
        let update = |id, url: &str| {
            MemberChange::Update(MemberUpdate {
                member_id: id,
                peer_urls: vec![url.into()],
            })
        };
        assert_eq!(m.validate(&update(1, "http://a2:2380"), 1), Ok(()));
        assert_eq!(m.validate(&update(1, "http://a:2380"), 1), Ok(()));
        assert_eq!(
            m.validate(&update(1, "http://b:2380"), 1),
            Err(MemberError::PeerUrlExists)
        );
        assert_eq!(
            m.validate(&update(5, "http://e:2380"), 1),
            Err(MemberError::NotFound)
        );
        // What only a forged peer request could carry.
        assert_eq!(
            m.validate(&add(0, "http://d:2380", false), 1),
            Err(MemberError::ZeroId)
        );
        assert_eq!(
            m.validate(&add(4, "not a url", false), 1),
            Err(MemberError::BadUrls)
        );
        assert_eq!(
            m.validate(&update(1, "http://a:2380/path"), 1),
            Err(MemberError::BadUrls)
        );
        // The last voter is never removed (raft needs one).
        let alone = members(&[member(1, "http://a:2380", false, true)], &[]);
        assert_eq!(
            alone.validate(&MemberChange::Remove(1), 1),
            Err(MemberError::NotEnoughStarted)
        );
    }

    /// etcd's IsReadyToAddVotingMember, IsReadyToRemoveVotingMember, IsReadyToPromoteMember.
    #[test]
    fn strict_reconfiguration_counts_started_voters() {
        let one = members(&[member(1, "a", false, true)], &[]);
        assert!(one.ready_to_add_voter(), "growing a one-member cluster");
        let two_one_started = members(
            &[member(1, "a", false, true), member(2, "b", false, false)],
            &[],
        );
        assert!(!two_one_started.ready_to_add_voter());
        assert!(!two_one_started.ready_to_remove_voter(1));
        assert!(two_one_started.ready_to_remove_voter(2));
        let three = members(
            &[
                member(1, "a", false, true),
                member(2, "b", false, true),
                member(3, "c", false, false),
                member(4, "d", true, false),
            ],
            &[],
        );
        assert!(
            !three.ready_to_add_voter(),
            "2 started of 4 voters after it: no quorum"
        );
        assert!(
            three.ready_to_promote(),
            "the learner counts as started: 3 of 4"
        );
        assert!(three.ready_to_remove_voter(3));
        assert!(!three.ready_to_remove_voter(1));
    }

    #[test]
    fn applied_changes_update_the_table_and_survive_a_reload() {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        let mut m =
            Membership::bootstrap(&txn, 7, [member(1, "http://a:2380", false, true)], []).unwrap();
        for change in [
            MemberChange::Add(member(2, "http://b:2380", true, false)),
            MemberChange::Promote(2),
            MemberChange::Update(MemberUpdate {
                member_id: 2,
                peer_urls: vec!["http://z:2380".into(), "http://y:2380".into()],
            }),
            MemberChange::Add(member(3, "http://c:2380", false, false)),
            MemberChange::Remove(3),
        ] {
            m.validate(&change, 1).unwrap();
            m.apply(&txn, &change).unwrap();
        }
        txn.commit().unwrap();
        let loaded = Membership::load(&db.begin_read().unwrap()).unwrap();
        assert_eq!(loaded, m);
        let two = loaded.get(2).unwrap();
        assert!(!two.is_learner);
        assert_eq!(two.peer_urls, vec!["http://y:2380", "http://z:2380"]);
        assert!(loaded.is_removed(3) && !loaded.contains(3));
        let mut snap = SnapshotData::default();
        loaded.export(&mut snap);
        assert_eq!(snap.removed, vec![3]);
    }
}
