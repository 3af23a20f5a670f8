//! The replicated member list and cluster ID, as stored in the data file.
//!
//! Members come from the bootstrap decision (IDs and peer URLs); each member publishes its
//! name and client URLs through raft once it serves, as etcd does, so `member list` shows
//! a member without them until it has started.

use crate::proto::detcdpb::{MemberAttributes, MemberRecord, SnapshotData};
use crate::raft_log::LogError;
use crate::tables::{meta_keys, MEMBERS, META};
use prost::Message;
use redb::ReadableTable;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Membership {
    cluster_id: u64,
    members: BTreeMap<u64, MemberRecord>,
}

fn corrupt(e: prost::DecodeError) -> LogError {
    LogError::Corrupt(format!("member record: {e}"))
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
        Ok(m)
    }

    /// Writes a new cluster's identity and members (first start of a new member).
    pub fn bootstrap(
        txn: &redb::WriteTransaction,
        cluster_id: u64,
        members: impl IntoIterator<Item = MemberRecord>,
    ) -> Result<Membership, LogError> {
        txn.open_table(META)?
            .insert(meta_keys::CLUSTER_ID, cluster_id.to_be_bytes().as_slice())?;
        let mut m = Membership {
            cluster_id,
            members: BTreeMap::new(),
        };
        let mut table = txn.open_table(MEMBERS)?;
        for rec in members {
            table.insert(rec.id, rec.encode_to_vec().as_slice())?;
            m.members.insert(rec.id, rec);
        }
        Ok(m)
    }

    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
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

    pub fn export(&self, out: &mut SnapshotData) {
        out.cluster_id = self.cluster_id;
        out.members = self.members.values().cloned().collect();
    }

    /// Replaces the stored membership with a snapshot's.
    pub fn import(
        txn: &redb::WriteTransaction,
        data: &SnapshotData,
    ) -> Result<Membership, LogError> {
        txn.open_table(MEMBERS)?.retain(|_, _| false)?;
        Membership::bootstrap(txn, data.cluster_id, data.members.iter().cloned())
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
        let mut m =
            Membership::bootstrap(&txn, 7, [rec(1, "http://a:2380"), rec(2, "http://b:2380")])
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
}
