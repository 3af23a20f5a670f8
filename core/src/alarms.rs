//! The cluster's alarms (etcd's etcdserver/api/v3alarm): which member raised which alarm.
//! Raised and cleared through raft, stored in the data file and carried in snapshots, so
//! every member agrees and an alarm outlives restarts.
//!
//! While a NOSPACE alarm is active the state machine refuses what would grow the store
//! (etcd's applierV3Capped: Put, Txn with writes, LeaseGrant) with
//! `etcdserver: mvcc: database space exceeded`; reads, deletes, compaction and lease
//! revocation go on, so an operator can make room and disarm it.

use crate::proto::detcdpb::SnapshotData;
use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
use crate::raft_log::LogError;
use crate::tables::ALARMS;
use redb::ReadableTable;
use std::collections::BTreeSet;

/// Active alarms as (alarm type, member ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    active: BTreeSet<(i32, u64)>,
}

impl Alarms {
    pub fn load(txn: &redb::ReadTransaction) -> Result<Alarms, LogError> {
        let mut a = Alarms::default();
        match txn.open_table(ALARMS) {
            Ok(t) => {
                for row in t.iter()? {
                    let (member, alarm) = row?.0.value();
                    a.active.insert((alarm, member));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(a)
    }

    /// Raises `alarm` for `member`; false if it was already raised (or is NONE).
    pub fn activate(
        &mut self,
        txn: &redb::WriteTransaction,
        member: u64,
        alarm: AlarmType,
    ) -> Result<bool, redb::Error> {
        if alarm == AlarmType::None || self.active.contains(&(alarm as i32, member)) {
            return Ok(false);
        }
        txn.open_table(ALARMS)?.insert((member, alarm as i32), ())?;
        self.active.insert((alarm as i32, member));
        Ok(true)
    }

    /// Clears `alarm` of `member`; false if it was not raised.
    pub fn deactivate(
        &mut self,
        txn: &redb::WriteTransaction,
        member: u64,
        alarm: AlarmType,
    ) -> Result<bool, redb::Error> {
        if !self.active.remove(&(alarm as i32, member)) {
            return Ok(false);
        }
        txn.open_table(ALARMS)?.remove((member, alarm as i32))?;
        Ok(true)
    }

    /// The alarms of type `alarm`, or all of them for NONE (etcd's alarmStore.Get), ordered
    /// by type then member.
    pub fn list(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|(t, _)| alarm == AlarmType::None || *t == alarm as i32)
            .map(|&(t, member)| AlarmMember {
                member_id: member,
                alarm: t,
            })
            .collect()
    }

    /// Whether any member raised `alarm`.
    pub fn is_active(&self, alarm: AlarmType) -> bool {
        self.active.iter().any(|(t, _)| *t == alarm as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    pub fn export(&self, out: &mut SnapshotData) {
        out.alarms = self.list(AlarmType::None);
    }

    /// Replaces the stored alarms with a snapshot's.
    pub fn import(txn: &redb::WriteTransaction, data: &SnapshotData) -> Result<Alarms, LogError> {
        let mut table = txn.open_table(ALARMS)?;
        table.retain(|_, _| false)?;
        let mut a = Alarms::default();
        for m in &data.alarms {
            table.insert((m.member_id, m.alarm), ())?;
            a.active.insert((m.alarm, m.member_id));
        }
        Ok(a)
    }
}

/// etcd's text for an alarm in Status's `errors` and `etcdctl alarm list`: the protobuf text
/// form of its AlarmMember, `memberID:<decimal id> alarm:<NAME> `.
pub fn alarm_text(m: &AlarmMember) -> String {
    let name = AlarmType::try_from(m.alarm)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| m.alarm.to_string());
    format!("memberID:{} alarm:{name} ", m.member_id)
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

    #[test]
    fn raise_list_clear_and_reload() {
        let db = db();
        let mut a = Alarms::default();
        let txn = db.begin_write().unwrap();
        assert!(a.activate(&txn, 7, AlarmType::Nospace).unwrap());
        assert!(
            !a.activate(&txn, 7, AlarmType::Nospace).unwrap(),
            "raised twice"
        );
        assert!(a.activate(&txn, 9, AlarmType::Corrupt).unwrap());
        assert!(!a.activate(&txn, 9, AlarmType::None).unwrap());
        txn.commit().unwrap();
        assert!(a.is_active(AlarmType::Nospace));
        assert_eq!(a.list(AlarmType::None).len(), 2);
        assert_eq!(a.list(AlarmType::Corrupt)[0].member_id, 9);
        let loaded = Alarms::load(&db.begin_read().unwrap()).unwrap();
        assert_eq!(loaded, a);
        let txn = db.begin_write().unwrap();
        assert!(a.deactivate(&txn, 7, AlarmType::Nospace).unwrap());
        assert!(!a.deactivate(&txn, 7, AlarmType::Nospace).unwrap());
        txn.commit().unwrap();
        assert!(!a.is_active(AlarmType::Nospace));
        assert_eq!(Alarms::load(&db.begin_read().unwrap()).unwrap(), a);
        assert_eq!(
            alarm_text(&a.list(AlarmType::None)[0]),
            "memberID:9 alarm:CORRUPT "
        );
    }

    #[test]
    fn snapshots_carry_alarms() {
        let db = db();
        let mut a = Alarms::default();
        let txn = db.begin_write().unwrap();
        a.activate(&txn, 1, AlarmType::Nospace).unwrap();
        let mut snap = SnapshotData::default();
        a.export(&mut snap);
        a.activate(&txn, 2, AlarmType::Nospace).unwrap();
        let imported = Alarms::import(&txn, &snap).unwrap();
        assert_eq!(imported.list(AlarmType::None).len(), 1);
        txn.commit().unwrap();
        assert_eq!(Alarms::load(&db.begin_read().unwrap()).unwrap(), imported);
    }
}
