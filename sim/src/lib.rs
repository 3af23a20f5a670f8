//! detcd-sim: the deterministic simulation harness (suites arrive with the simulation issue).
//! It compiles in both modes so the workspace builds under `--cfg madsim`.

pub mod history;
pub mod linearizability;
