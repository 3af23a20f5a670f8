#![cfg(madsim)]
//! Fault scenarios: each runs the guide's cluster under concurrent clients, injects its
//! faults, heals, and checks the history for linearizability and the invariants.
//! Replay a failure with the seed it prints: `MADSIM_TEST_SEED=<seed> cargo sim -- <test>`.

use detcd_sim::scenario::{run, Faults, Plan};
use std::time::Duration;

fn plan(name: &'static str, faults: Faults) -> Plan {
    Plan {
        name,
        faults,
        ..Plan::default()
    }
}

#[madsim::test]
async fn no_faults_history_is_linearizable() {
    let r = run(plan("no_faults_history_is_linearizable", Faults::none())).await;
    assert!(r.ops > 100, "the workload did too little: {} ops", r.ops);
}

#[madsim::test]
async fn leader_kill_under_load() {
    run(plan(
        "leader_kill_under_load",
        Faults {
            crash: true,
            isolate_leader: false,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn minority_partitions() {
    run(plan(
        "minority_partitions",
        Faults {
            isolate: true,
            one_way: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn leader_isolation() {
    run(plan(
        "leader_isolation",
        Faults {
            isolate_leader: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn crash_all_loses_no_acknowledged_write() {
    run(plan(
        "crash_all_loses_no_acknowledged_write",
        Faults {
            crash_all: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn torn_writes_on_crash() {
    // Crashes that leave half of the last unsynced write on disk: redb must recover to its
    // last durable commit, and nothing acknowledged may be lost.
    run(Plan {
        name: "torn_writes_on_crash",
        faults: Faults {
            crash: true,
            crash_all: true,
            ..Faults::none()
        },
        torn_writes: true,
        ..Plan::default()
    })
    .await;
}

#[madsim::test]
async fn lossy_slow_network() {
    run(plan(
        "lossy_slow_network",
        Faults {
            packet_loss: true,
            latency: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn snapshot_install_to_lagging_follower() {
    detcd_net::node::SNAPSHOTS_INSTALLED.store(0, std::sync::atomic::Ordering::Relaxed);
    // A tiny --snapshot-count makes the log compact constantly, so a member that was down
    // or cut off catches up through a snapshot.
    run(Plan {
        name: "snapshot_install_to_lagging_follower",
        faults: Faults {
            crash: true,
            isolate: true,
            ..Faults::none()
        },
        snapshot_count: Some(20),
        ..Plan::default()
    })
    .await;
    let installed = detcd_net::node::SNAPSHOTS_INSTALLED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        installed > 0,
        "no member installed a snapshot: the scenario missed its point"
    );
}

#[madsim::test]
async fn rolling_restarts() {
    run(plan(
        "rolling_restarts",
        Faults {
            rolling: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn election_churn() {
    run(plan(
        "election_churn",
        Faults {
            churn: true,
            ..Faults::none()
        },
    ))
    .await;
}

#[madsim::test]
async fn swarm() {
    run(Plan {
        name: "swarm",
        faults: Faults::swarm(),
        fault_phase: Duration::from_secs(20),
        ..Plan::default()
    })
    .await;
}
