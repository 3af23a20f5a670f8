#![cfg(madsim)]
//! Fault scenarios: each runs the guide's cluster under concurrent clients, injects its
//! faults, heals, and checks the history for linearizability and the invariants.
//! Replay a failure with the seed it prints: `MADSIM_TEST_SEED=<seed> cargo sim -- <test>`.

use detcd_sim::reconfig::{run_reconfiguration, OpKind, ReconfigPlan};
use detcd_sim::scenario::{run, Faults, Plan};
use detcd_sim::watch_lease::{run_watch_lease, WatchLeasePlan};
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

// ==== Runtime reconfiguration (sim/src/reconfig.rs) ============================================

#[madsim::test]
async fn reconfiguration_under_load() {
    // Every kind of membership change, then four more at random; no faults besides the
    // replaced member's lost disk.
    let r = run_reconfiguration(ReconfigPlan {
        name: "reconfiguration_under_load",
        required: vec![
            OpKind::AddLearner,
            OpKind::AddVoter,
            OpKind::Remove,
            OpKind::Replace,
        ],
        extra: 4,
        ..ReconfigPlan::default()
    })
    .await;
    eprintln!("{r:#?}");
    assert!(
        r.learners_promoted >= 1
            && r.voters_added >= 1
            && r.removed >= 1
            && r.wiped_refused == 1
            && r.replaced == 1,
        "the planned operations did not all happen: {r:?}"
    );
    assert!(r.ops > 100, "the workload did too little: {} ops", r.ops);
}

#[madsim::test]
async fn reconfiguration_with_crashes() {
    // Members crash (power loss) and stay down, or are cut off the network (the leader
    // among them), while the next membership changes run.
    let r = run_reconfiguration(ReconfigPlan {
        name: "reconfiguration_with_crashes",
        required: vec![
            OpKind::AddLearner,
            OpKind::AddVoter,
            OpKind::Remove,
            OpKind::Replace,
            OpKind::Crash,
            OpKind::Crash,
            OpKind::Isolate,
            OpKind::Isolate,
        ],
        extra: 4,
        extra_kinds: vec![
            OpKind::AddLearner,
            OpKind::AddVoter,
            OpKind::Remove,
            OpKind::Crash,
            OpKind::Isolate,
        ],
        // Compaction and snapshots all along: a restarted member may catch up from a
        // snapshot whose configuration it has not seen yet.
        snapshot_count: Some(200),
        ..ReconfigPlan::default()
    })
    .await;
    eprintln!("{r:#?}");
    assert!(
        r.learners_promoted >= 1
            && r.voters_added >= 1
            && r.removed >= 1
            && r.wiped_refused == 1
            && r.replaced == 1
            && r.crashes >= 2
            && r.isolations >= 2,
        "the planned operations did not all happen: {r:?}"
    );
}

#[madsim::test]
async fn wiped_member_is_refused() {
    // One guide member loses its data dir: restarted as it was, it must refuse to start; it
    // comes back removed, added again and joined on a fresh host and disk.
    let r = run_reconfiguration(ReconfigPlan {
        name: "wiped_member_is_refused",
        required: vec![OpKind::Replace],
        ..ReconfigPlan::default()
    })
    .await;
    eprintln!("{r:#?}");
    assert_eq!(
        (r.wiped_refused, r.replaced),
        (1, 1),
        "the wiped member was not refused and replaced: {r:?}"
    );
}

#[madsim::test]
async fn removing_the_leader() {
    // Every remove takes the leader (infra0 is cut off for a moment when it leads, so another
    // member does). The leader hands leadership over before its own removal; raft-rs panicked
    // on a leader that had removed itself (MADSIM_TEST_SEED=1 before c6fa4b7).
    let r = run_reconfiguration(ReconfigPlan {
        name: "removing_the_leader",
        required: vec![
            OpKind::AddVoter,
            OpKind::AddLearner,
            OpKind::Remove,
            OpKind::Remove,
        ],
        leader_first: true,
        ..ReconfigPlan::default()
    })
    .await;
    eprintln!("{r:#?}");
    assert!(
        r.removed >= 2 && r.leaders_removed == r.removed,
        "the leaders were not removed: {r:?}"
    );
}

// ==== Watch and Lease (sim/src/watch_lease.rs) =================================================

#[madsim::test]
async fn watch_and_lease_under_faults() {
    // Watchers (catching up, resuming on other members, asking for progress) and lease
    // clients while members crash and are cut off (the leader among them); the [watch] and
    // [lease] checkers over the store's history.
    let r = run_watch_lease(WatchLeasePlan {
        name: "watch_and_lease_under_faults",
        faults: Faults {
            crash: true,
            isolate: true,
            isolate_leader: true,
            ..Faults::none()
        },
        ..WatchLeasePlan::default()
    })
    .await;
    eprintln!("{r:#?}");
}

#[madsim::test]
async fn watch_and_lease_under_election_churn() {
    // The same under elections in quick succession (leaders cut off, members bounced), a
    // lossy and slow network and one-way cuts: many leader changes while leases are kept
    // alive, streams that stall.
    let r = run_watch_lease(WatchLeasePlan {
        name: "watch_and_lease_under_election_churn",
        faults: Faults {
            churn: true,
            one_way: true,
            packet_loss: true,
            latency: true,
            ..Faults::none()
        },
        ..WatchLeasePlan::default()
    })
    .await;
    eprintln!("{r:#?}");
}
