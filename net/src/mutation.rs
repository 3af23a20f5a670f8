//! Deliberate bugs for proving the simulator's checkers can fail (`DETCD_SIM_MUTATION=<name>
//! cargo sim`). Compiled in only under `--cfg madsim`; in production `active` is a constant
//! `false` and every mutated branch disappears.
//!
//! - `ack-before-commit`: answer a put as soon as it is proposed, before raft commits it.
//! - `stale-read`: serve linearizable reads from local state without a ReadIndex.
//! - `forget-hardstate`: forget the persisted term and vote on restart.
//! - `skip-apply`: infra1 skips applying one committed entry (its replica diverges).
//! - `accept-wiped-member`: a new member skips the check that the running cluster never saw
//!   it start, so a member that lost its data dir starts afresh (it could vote twice in a term).
//! - `stale-member-table`: infra1's member table misses other members' promotions (raft
//!   applies them), so its member list differs from the others'.
//! - `ignore-removal`: a removed member keeps running instead of stopping.
//! - `drop-watch-event`: the watch hub skips a synced watcher's events at revisions that are
//!   multiples of 7 (as if lost), moving its next revision past them.
//! - `early-lease-expiry`: the leader revokes a lease once a quarter of its TTL has passed.
//! - `progress-before-sync`: a progress request is answered at once, before the stream's
//!   watchers have caught up (etcd 3.4.23's bug, issue 15220).
//! - `skip-peer-cluster-id-check`: a member dialing a peer ignores that the peer's handshake
//!   answer names another cluster (`transport.rs`), so a member whose SRV lookup saw other
//!   records than its peers' keeps running beside their cluster instead of exiting.
//! - `discovery-ignore-size`: etcd discovery never finds the cluster full and takes every
//!   registered member (core's `V2Discovery::with_size_ignored`), so a `size+1`-th member
//!   goes on instead of stopping with "cluster is full".

#[cfg(madsim)]
pub fn active(name: &str) -> bool {
    std::env::var("DETCD_SIM_MUTATION").is_ok_and(|v| v == name)
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
