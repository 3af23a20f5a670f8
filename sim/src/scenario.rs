//! One simulation run: a cluster, concurrent clients, a fault phase, a healing phase that must
//! bring service back within a bound, then the history check and the invariants.

use crate::checkers;
use crate::cluster::{Client, SimCluster, GUIDE_MEMBERS};
use crate::history::History;
use crate::linearizability::{check, Budget, CheckResult};
use crate::workload::{run_client, watch_members, Invariants, Revisions};
use detcd_core::proto::etcdserverpb::{PutRequest, RangeRequest};
use madsim::rand::{thread_rng, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Faults a run may inject. `swarm` picks a random subset per seed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub crash: bool,
    pub crash_all: bool,
    pub isolate: bool,
    pub isolate_leader: bool,
    pub one_way: bool,
    pub packet_loss: bool,
    pub latency: bool,
    /// Restart members one after another, each coming back before the next goes.
    pub rolling: bool,
    /// Elections under fire: leaders cut off and members bounced within an election timeout,
    /// so restarts land between a vote and the end of the election it was cast in.
    pub churn: bool,
}

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Swarm testing: each seed enables its own mix, so rare combinations get their turn.
    pub fn swarm() -> Faults {
        let mut r = thread_rng();
        Faults {
            crash: r.gen_bool(0.5),
            crash_all: r.gen_bool(0.2),
            isolate: r.gen_bool(0.5),
            isolate_leader: r.gen_bool(0.5),
            one_way: r.gen_bool(0.3),
            packet_loss: r.gen_bool(0.3),
            latency: r.gen_bool(0.3),
            rolling: r.gen_bool(0.3),
            churn: r.gen_bool(0.3),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    /// The test's name, for the replay command printed on failure.
    pub name: &'static str,
    pub faults: Faults,
    /// Simulated time with faults on.
    pub fault_phase: Duration,
    pub clients: u32,
    pub keys: usize,
    pub snapshot_count: Option<u64>,
    /// The cluster must serve again within this much simulated time after healing.
    pub recovery_bound: Duration,
    /// A crash keeps half of each disk's last unsynced write (a torn write).
    pub torn_writes: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            name: "<test>",
            faults: Faults::none(),
            fault_phase: Duration::from_secs(15),
            clients: 6,
            keys: 4,
            snapshot_count: None,
            recovery_bound: Duration::from_secs(20),
            torn_writes: false,
        }
    }
}

pub struct Report {
    pub ops: usize,
    pub samples: u64,
    pub faults_injected: Vec<String>,
}

/// The one command that replays this run exactly (seed and test name), for failure reports.
pub fn replay_command(test: &str) -> String {
    let seed = madsim::runtime::Handle::current().seed();
    let mutation = std::env::var("DETCD_SIM_MUTATION")
        .map(|m| format!("DETCD_SIM_MUTATION={m} "))
        .unwrap_or_default();
    format!("{mutation}MADSIM_TEST_SEED={seed} cargo sim --test faults -- --exact {test}")
}

/// The clients of one run, their history, and the invariant watcher: shared by the fault
/// scenarios (`run`) and the reconfiguration harness (`crate::reconfig`).
pub struct Workload {
    name: &'static str,
    keys: usize,
    pub history: History,
    pub revisions: Revisions,
    pub inv: Arc<Mutex<Invariants>>,
    pub start: madsim::time::Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<madsim::task::JoinHandle<()>>,
    watcher: Option<madsim::task::JoinHandle<()>>,
}

impl Workload {
    /// Waits for the cluster at `endpoints` to serve, then starts `clients` clients on them
    /// (from `host`) and the invariant watcher over the endpoints in `watched` (which the
    /// caller may change as members come and go).
    pub async fn start(
        host: &madsim::runtime::NodeHandle,
        name: &'static str,
        endpoints: Vec<String>,
        watched: Arc<Mutex<Vec<String>>>,
        clients: u32,
        keys: usize,
    ) -> Workload {
        let start = madsim::time::Instant::now();
        // The cluster must come up before faults begin.
        let up = host.spawn(wait_serving(endpoints.clone(), Duration::from_secs(10)));
        if let Err(e) = up.await.unwrap() {
            panic!(
                "cluster did not start: {e}\nreplay: {}",
                replay_command(name)
            );
        }
        let w = Workload {
            name,
            keys,
            history: History::new(),
            revisions: Revisions::default(),
            inv: Arc::new(Mutex::new(Invariants::default())),
            start,
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            watcher: None,
        };
        let mut w = w;
        for id in 0..clients {
            w.tasks.push(host.spawn(run_client(
                id,
                endpoints.clone(),
                keys,
                w.history.clone(),
                w.revisions.clone(),
                start,
                w.stop.clone(),
            )));
        }
        w.watcher = Some(host.spawn(watch_members(watched, w.inv.clone(), w.stop.clone())));
        w
    }

    /// After healing: waits up to `bound` for every member at `live` to serve, stops the
    /// clients and the watcher, then reads every key through every live member into the
    /// history (an acknowledged write lost in a crash shows up there as a read the checker
    /// cannot explain) and returns the members' local states once they are at one
    /// revision. Panics if the cluster does not serve in time (`context`: what the run did).
    pub async fn finish(
        &mut self,
        host: &madsim::runtime::NodeHandle,
        live: &[String],
        bound: Duration,
        context: &str,
    ) -> Vec<(u64, i64, u64)> {
        let healthy = host
            .spawn(wait_serving(live.to_vec(), bound))
            .await
            .unwrap();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.await;
        }
        if let Err(e) = healthy {
            // A safety violation seen during the run explains a stuck cluster better than the
            // stall does (two leaders in one term can leave logs no election repairs).
            assert_no_violations(&self.inv, context, &replay_command(self.name));
            panic!(
                "liveness: the healed cluster did not serve within {bound:?}: {e}\n{context}\nreplay: {}",
                replay_command(self.name)
            );
        }
        host.spawn(final_reads(
            live.to_vec(),
            self.keys,
            self.history.clone(),
            self.start,
        ))
        .await
        .unwrap();
        host.spawn(member_states(live.to_vec(), Duration::from_secs(10)))
            .await
            .unwrap()
    }

    /// The checks over the finished run: `[invariants]`, `[convergence]` of `states` (from
    /// `members` members), `[linearizability]` and `[revision order]`. Panics with the
    /// evidence, `context` and the replay command; returns (operations, watcher samples).
    pub fn check(&self, states: &[(u64, i64, u64)], members: usize, context: &str) -> (usize, u64) {
        let replay = replay_command(self.name);
        assert_no_violations(&self.inv, context, &replay);
        let inv = self.inv.lock().unwrap();
        if let Err(e) = checkers::replicas_converge(states, members) {
            panic!("{e}\n{context}\nreplay: {replay}");
        }
        let snap = self.history.snapshot();
        match check(&snap, Budget::default()) {
            CheckResult::Ok => {}
            // A search out of budget proves nothing: the run fails, and its seed replays it.
            CheckResult::Unknown { keys } => panic!(
                "[linearizability] check ran out of budget on keys {keys:?}: the history proves \
                 nothing\n{context}\nreplay: {replay}"
            ),
            CheckResult::Illegal(v) => panic!(
                "[linearizability] history is not linearizable:\n{v}\nhistory of key {:?}:\n{}\n{context}\nreplay: {replay}",
                v.key,
                snap.dump_key(&v.key)
            ),
        }
        if let Err(e) = checkers::revisions_never_go_back(&snap, &self.revisions.lock().unwrap()) {
            panic!("{e}\n{context}\nreplay: {replay}");
        }
        (snap.entries().len(), inv.samples)
    }
}

/// Panics with `[invariants]` and the evidence if the nemesis saw any safety violation.
pub(crate) fn assert_no_violations(inv: &Mutex<Invariants>, context: &str, replay: &str) {
    let inv = inv.lock().unwrap();
    assert!(
        inv.violations.is_empty(),
        "[invariants] violations: {:#?}\n{context}\nreplay: {replay}",
        inv.violations
    );
}

/// Runs `plan` on the guide's cluster and panics (with the evidence) on any violation.
pub async fn run(plan: Plan) -> Report {
    let mut cluster = SimCluster::start_with(&GUIDE_MEMBERS, "etcd-cluster-1", |cfg| {
        if let Some(n) = plan.snapshot_count {
            cfg.snapshot_count = n;
        }
    });
    if plan.torn_writes {
        for m in &cluster.members {
            m.disk.set_tear_on_crash(true);
        }
    }
    let endpoints = cluster.endpoints();
    let client_host = cluster
        .handle
        .create_node()
        .name("clients")
        .ip("10.0.1.100".parse().unwrap())
        .build();
    let mut work = Workload::start(
        &client_host,
        plan.name,
        endpoints.clone(),
        Arc::new(Mutex::new(endpoints.clone())),
        plan.clients,
        plan.keys,
    )
    .await;
    let inv = work.inv.clone();

    let injected = nemesis(&mut cluster, &plan, &inv).await;

    // Heal: everyone reachable, everyone running, the network clean.
    cluster.heal_all();
    madsim::net::NetSim::current().update_config(|c| {
        c.packet_loss_rate = 0.0;
        c.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
    });
    for i in 0..cluster.members.len() {
        if !cluster.members[i].alive {
            inv.lock().unwrap().restarted(cluster.member_id(i));
            cluster.restart(i);
        }
    }
    let context = format!("faults: {injected:?}");
    let states = work
        .finish(&client_host, &endpoints, plan.recovery_bound, &context)
        .await;
    for i in 0..cluster.members.len() {
        if let Some(exit) = cluster.exit_of(i) {
            panic!(
                "member {} exited during the run: {exit}\nreplay: {}",
                cluster.members[i].name,
                replay_command(plan.name)
            );
        }
    }
    let (ops, samples) = work.check(&states, cluster.members.len(), &context);
    Report {
        ops,
        samples,
        faults_injected: injected,
    }
}

/// Waits until every member answers a linearizable read and one write succeeds.
pub async fn wait_serving(endpoints: Vec<String>, bound: Duration) -> Result<(), String> {
    let deadline = madsim::time::Instant::now() + bound;
    let mut last = String::new();
    'members: for url in &endpoints {
        loop {
            if madsim::time::Instant::now() > deadline {
                return Err(format!("{url}: {last}"));
            }
            if let Some(mut c) = Client::connect(url).await {
                let req = RangeRequest {
                    key: b"health".to_vec(),
                    ..Default::default()
                };
                match madsim::time::timeout(Duration::from_secs(2), c.kv.range(req)).await {
                    Ok(Ok(_)) => continue 'members,
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "timed out".into(),
                }
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        if madsim::time::Instant::now() > deadline {
            return Err(format!("no write succeeded: {last}"));
        }
        if let Some(mut c) = Client::connect(&endpoints[0]).await {
            let req = PutRequest {
                key: b"liveness".to_vec(),
                value: b"ok".to_vec(),
                ..Default::default()
            };
            match madsim::time::timeout(Duration::from_secs(2), c.kv.put(req)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (member ID, revision, content hash) of every member that answers a serializable range of
/// all keys, polled until they all report one revision (or `bound` passes: the checker then
/// shows the difference).
pub async fn member_states(endpoints: Vec<String>, bound: Duration) -> Vec<(u64, i64, u64)> {
    let deadline = madsim::time::Instant::now() + bound;
    loop {
        let mut states = Vec::new();
        for url in &endpoints {
            let Some(mut c) = Client::connect(url).await else {
                continue;
            };
            let req = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                serializable: true,
                ..Default::default()
            };
            if let Ok(Ok(r)) = madsim::time::timeout(Duration::from_secs(2), c.kv.range(req)).await
            {
                let r = r.into_inner();
                let h = r.header.unwrap_or_default();
                states.push((h.member_id, h.revision, checkers::hash_kvs(&r.kvs)));
            }
        }
        let one_revision = states.windows(2).all(|w| w[0].1 == w[1].1);
        if (states.len() == endpoints.len() && one_revision)
            || madsim::time::Instant::now() > deadline
        {
            return states;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every key through every member into the history (client 1000).
pub async fn final_reads(
    endpoints: Vec<String>,
    keys: usize,
    history: History,
    start: madsim::time::Instant,
) {
    use crate::history::{Op, Outcome, Output};
    for url in &endpoints {
        let Some(mut c) = Client::connect(url).await else {
            continue;
        };
        for k in 0..keys {
            let key = format!("k{k}");
            let op = history.invoke(1000, key.clone(), Op::Get, crate::workload::now_ns(start));
            let req = RangeRequest {
                key: key.into_bytes(),
                ..Default::default()
            };
            let outcome = match madsim::time::timeout(Duration::from_secs(3), c.kv.range(req)).await
            {
                Ok(Ok(r)) => Outcome::Ok(Output::Get(
                    r.into_inner()
                        .kvs
                        .first()
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                )),
                _ => Outcome::Failed,
            };
            history.complete(op, outcome, crate::workload::now_ns(start));
        }
    }
}

/// Injects faults for the fault phase; returns what it did, for the failure report.
pub(crate) async fn nemesis(
    cluster: &mut SimCluster,
    plan: &Plan,
    inv: &Arc<Mutex<Invariants>>,
) -> Vec<String> {
    let f = plan.faults;
    let mut log = Vec::new();
    let kinds: Vec<&str> = [
        ("crash", f.crash),
        ("crash_all", f.crash_all),
        ("isolate", f.isolate),
        ("isolate_leader", f.isolate_leader),
        ("one_way", f.one_way),
        ("packet_loss", f.packet_loss),
        ("latency", f.latency),
        ("rolling", f.rolling),
        ("churn", f.churn),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| k)
    .collect();
    let end = madsim::time::Instant::now() + plan.fault_phase;
    let n = cluster.members.len();
    // Every planned kind of fault must happen at least once: the first rounds go through
    // them in order, each on a healed cluster; the scenario fails if one never happened.
    let mut happened: std::collections::BTreeSet<&str> = Default::default();
    let mut round = 0usize;
    while madsim::time::Instant::now() < end || round < kinds.len() {
        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(500..2500))).await;
        if kinds.is_empty() {
            continue;
        }
        round += 1;
        let first_pass = round <= kinds.len();
        // Undo the previous fault first, most of the time, so faults come and go.
        if first_pass || thread_rng().gen_bool(0.6) {
            cluster.heal_all();
            for i in 0..n {
                if !cluster.members[i].alive {
                    inv.lock().unwrap().restarted(cluster.member_id(i));
                    cluster.restart(i);
                    log.push(format!("restart {}", cluster.members[i].name));
                }
            }
        }
        let kind = if first_pass {
            kinds[round - 1]
        } else {
            kinds[thread_rng().gen_range(0..kinds.len())]
        };
        let i = thread_rng().gen_range(0..n);
        let before = log.len();
        match kind {
            "crash" => {
                if cluster.members.iter().filter(|m| m.alive).count() == n {
                    cluster.crash(i);
                    log.push(format!("crash {}", cluster.members[i].name));
                }
            }
            "crash_all" => {
                for j in 0..n {
                    if cluster.members[j].alive {
                        cluster.crash(j);
                    }
                }
                log.push("crash all".into());
            }
            "isolate" => {
                cluster.isolate(i);
                log.push(format!("isolate {}", cluster.members[i].name));
            }
            "isolate_leader" => {
                // Aimed at the leader: wait (bounded) for one the members agree on.
                for _ in 0..40 {
                    if let Some(l) = cluster.leader_index().await {
                        cluster.isolate(l);
                        log.push(format!("isolate leader {}", cluster.members[l].name));
                        break;
                    }
                    madsim::time::sleep(Duration::from_millis(250)).await;
                }
            }
            "one_way" => {
                let j = (i + 1 + thread_rng().gen_range(0..n - 1)) % n;
                cluster.cut_link(i, j);
                log.push(format!(
                    "cut {} -> {}",
                    cluster.members[i].name, cluster.members[j].name
                ));
            }
            "packet_loss" => {
                let rate = thread_rng().gen_range(0.01..0.2);
                madsim::net::NetSim::current().update_config(|c| c.packet_loss_rate = rate);
                log.push(format!("packet loss {rate:.2}"));
            }
            "latency" => {
                let hi = thread_rng().gen_range(10..200);
                madsim::net::NetSim::current().update_config(|c| {
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(hi)
                });
                log.push(format!("latency up to {hi} ms"));
            }
            "rolling" => {
                for j in 0..n {
                    if !cluster.members[j].alive {
                        continue;
                    }
                    cluster.crash(j);
                    madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(100..1500)))
                        .await;
                    inv.lock().unwrap().restarted(cluster.member_id(j));
                    cluster.restart(j);
                    madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(500..2000)))
                        .await;
                }
                log.push("rolling restart".into());
            }
            "churn" => {
                for _ in 0..thread_rng().gen_range(4..12) {
                    let j = thread_rng().gen_range(0..n);
                    if thread_rng().gen_bool(0.5) {
                        if let Some(l) = cluster.leader_index().await {
                            cluster.isolate(l);
                            madsim::time::sleep(Duration::from_millis(
                                thread_rng().gen_range(800..1600),
                            ))
                            .await;
                            cluster.heal_all();
                        }
                    } else if cluster.members[j].alive {
                        cluster.crash(j);
                        madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(20..400)))
                            .await;
                        inv.lock().unwrap().restarted(cluster.member_id(j));
                        cluster.restart(j);
                    }
                    madsim::time::sleep(Duration::from_millis(thread_rng().gen_range(50..600)))
                        .await;
                }
                log.push("election churn".into());
            }
            _ => unreachable!(),
        }
        if log.len() > before {
            happened.insert(kind);
        }
    }
    let missing: Vec<&&str> = kinds.iter().filter(|k| !happened.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "planned faults never happened: {missing:?} (did: {log:?})\nreplay: {}",
        replay_command(plan.name)
    );
    log
}
