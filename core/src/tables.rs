//! The redb tables of a member's data file, in one place so every module agrees on them.
use redb::TableDefinition;

/// Raft log: index -> eraftpb::Entry (protobuf encoded).
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named values: hard state, conf state, snapshot metadata, applied index, IDs.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Replicated membership: member id -> detcdpb::MemberRecord.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// IDs of members removed from the cluster (never accepted as peers again, never reused).
pub const REMOVED_MEMBERS: TableDefinition<u64, ()> = TableDefinition::new("removed_members");
/// Leases granted and not revoked: lease id -> detcdpb::LeaseRecord, owned by `lease`.
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// Active alarms: (member id, etcdserverpb.AlarmType) -> (), owned by `alarms`.
pub const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");
/// The v2 keys store's nodes: cleaned path -> v2store::Node as JSON, owned by `state::v2_rows`.
pub const V2_NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("v2_nodes");
/// The v2 keys store's event history (the last 1000): event index -> v2store::Event as JSON.
pub const V2_EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("v2_events");
/// MVCC key-value history, owned by `mvcc`.
pub const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// The rows of a snapshot being installed (`Mvcc::stage_rows`), written in bounded commits and
/// renamed to `kv` by the install's last commit. Left over only by a crash or a damaged file
/// mid-install; the next install drops it first.
pub const KV_INSTALL: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_install");

pub mod meta_keys {
    pub const HARD_STATE: &str = "hard_state";
    pub const CONF_STATE: &str = "conf_state";
    /// Index and term of the last snapshot (the log's first index is one past it).
    pub const SNAPSHOT_META: &str = "snapshot_meta";
    /// Index of the last raft entry whose effects are in this file. Written in the same
    /// transaction as those effects, so a restart replays exactly what is missing.
    pub const APPLIED_INDEX: &str = "applied_index";
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const MEMBER_ID: &str = "member_id";
    /// MVCC: the revision of the last compaction (i64, 8 bytes big-endian); absent if none.
    pub const MVCC_COMPACT_REVISION: &str = "mvcc_compact_revision";
    /// The v2 keys store's index (u64, 8 bytes big-endian); absent if it was never written.
    pub const V2_INDEX: &str = "v2_index";
}
