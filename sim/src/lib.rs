//! detcd-sim: the deterministic simulation harness. Real `detcd-net` members run on madsim's
//! simulated hosts, network, clock and disk; every run is a function of its seed.
//! The harness compiles in both modes; the madsim suites in `sim/tests/` only under
//! `--cfg madsim`. The core-only simulator (`core_sim`) needs no runtime at all: its suite
//! (`sim/tests/core_cluster.rs`) runs in plain `cargo test`.

pub mod checkers;
pub mod core_sim;
pub mod disk;
pub mod history;
pub mod lease_check;
pub mod linearizability;
pub mod watch_check;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod discovery;
#[cfg(madsim)]
pub mod reconfig;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod srv;
#[cfg(madsim)]
pub mod watch_lease;
#[cfg(madsim)]
pub mod workload;
