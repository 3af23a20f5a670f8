//! detcd-core: the pure logic of an etcd-compatible member.
//!
//! Nothing here opens a socket, reads a clock, spawns a thread or touches a file by itself:
//! time comes in as ticks, storage through an injected redb backend and log file (`wal::LogFile`), randomness from the
//! caller. The async node in `detcd-net` drives these pieces; the simulator drives the same node.

pub mod proto;

/// The etcd cluster API version detcd implements (etcd's capabilities for "3.4").
pub const CLUSTER_API_VERSION: &str = "3.4";

pub mod alarms;
pub mod bootstrap;
pub mod config;
pub mod discovery;
pub mod ids;
pub mod lease;
pub mod membership;
pub mod mvcc;
pub mod peer;
pub mod raft_log;
pub mod raft_logger;
pub mod raftpb;
pub mod server;
pub mod srv;
pub mod state;
pub mod tables;
pub mod tls;
pub mod v2store;
pub mod wal;
pub mod watch;
