//! detcd-sim: the deterministic simulation harness. Real `detcd-net` members run on madsim's
//! simulated hosts, network, clock and disk; every run is a function of its seed.
//! The harness compiles in both modes; the suites in `sim/tests/` only under `--cfg madsim`.

pub mod disk;
pub mod history;
pub mod linearizability;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod workload;
