//! Watch and Lease under faults: the guide's three members run the fault nemesis
//! (`crate::scenario::nemesis`: crashes, partitions) while
//! - a writer puts and deletes keys under `w/` (single operations, multi-operation txns so a
//!   revision has several events, an occasional delete of the whole prefix);
//! - watchers record every response: on prefixes, single keys, a range, every key; some
//!   from now, some from revision 2 (they catch up), some asking for progress right after
//!   creating (while still catching up) or now and then; some break their stream on purpose
//!   and resume on another member from the last revision seen plus one, as all do when
//!   their stream fails;
//! - lease clients grant leases (TTL 2-4 s), attach keys under `l/`, keep them alive over
//!   LeaseKeepAlive streams (to any member, moving on errors), then stop; some are then
//!   revoked, the others must expire;
//! - a poller notes when a new leader appears (a lease's clock starts again then).
//!
//! Then the cluster heals and runs calm for a while (leases stopped now get the tight
//! bound), the lease clients stop, their last leases expire, the writer stops, leftover
//! leases are revoked, and every watch must confirm (by a progress request) that it is
//! complete through the final revision. The truth is a watch from revision 1 on a healthy
//! member, checked against range reads of the final and two earlier revisions; the
//! `[watch]` checker (`crate::watch_check`) and the `[lease]` checker (`crate::lease_check`)
//! run over it. Nothing is compacted.

use crate::cluster::SimCluster;
use crate::lease_check::{self, ExpiryBound, KeepAlive, LeaseLog, Revoke, Timeline};
use crate::scenario::{nemesis, replay_command, wait_serving, Faults, Plan};
use crate::watch_check::{self, Item, KeyRange, Session, Truth, WatchLog};
use crate::workload::{now_ns, watch_members, Invariants};
use detcd_core::proto::etcdserverpb::{
    request_op, watch_request::RequestUnion, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
    RequestOp, StatusRequest, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use detcd_core::proto::mvccpb::{Event, KeyValue};
use detcd_net::proto::etcdserverpb::kv_client::KvClient;
use detcd_net::proto::etcdserverpb::lease_client::LeaseClient;
use detcd_net::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd_net::proto::etcdserverpb::watch_client::WatchClient;
use madsim::rand::{thread_rng, Rng};
use madsim::time::{sleep, timeout, Instant};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

const SEC: u64 = 1_000_000_000;

/// The bound on how long a lease's keys outlive its last keep-alive, beyond its TTL.
/// - extend, 1 s: a new leader counts every lease from its promotion plus an election
///   timeout (etcd's Promote(extend), --election-timeout 1000 ms); every new leader seen
///   before the deadline also starts the count again (`lease_check`).
/// - slack, 1 s: the leader looks for expired leases every tick (100 ms), then proposes,
///   commits and applies the revoke; a watcher sees it; the poller sees a new leader up to
///   100 ms late and the new leader promotes once its first entry commits: all on a healed
///   network, a few tens of ms each.
/// - revoke retry, 7 s (core::lease::REVOKE_RETRY_MS, etcd's expiredLeaseRetryInterval): a
///   revoke proposal lost while faults were on is asked again this much later; counted
///   (from the healing) only for leases whose keep-alives stopped during the faults.
/// - tick, 100 ms (the heartbeat interval): the leader's lease clock moves on ticks, so a
///   renewal counts from the last tick (see `ExpiryBound::tick_ns`): a kept-alive lease
///   may end up to this much before the keep-alive's send time plus its TTL.
/// - unanswered, 14 s: a keep-alive the client gave up on may still renew the lease: the
///   member that got it forwards it to the leader for up to its request timeout (5 s + two
///   election timeouts), each forward waiting up to that long.
pub const EXPIRY_BOUND: ExpiryBound = ExpiryBound {
    extend_ns: SEC,
    tick_ns: 100_000_000,
    slack_ns: SEC,
    revoke_retry_ns: 7 * SEC,
    unanswered_ns: 14 * SEC,
};

const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// After the lease clients stop: their last leases (TTL up to 4 s) expire within
/// TTL + extend + slack; the writer keeps going meanwhile, so a late expiry shows.
const LEASE_DRAIN: Duration = Duration::from_secs(8);

#[derive(Clone, Debug)]
pub struct WatchLeasePlan {
    pub name: &'static str,
    pub faults: Faults,
    pub fault_phase: Duration,
    /// Healed, before the lease clients stop.
    pub calm_phase: Duration,
    pub lease_clients: u32,
}

impl Default for WatchLeasePlan {
    fn default() -> WatchLeasePlan {
        WatchLeasePlan {
            name: "<test>",
            faults: Faults::none(),
            fault_phase: Duration::from_secs(14),
            calm_phase: Duration::from_secs(8),
            lease_clients: 3,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct WatchLeaseReport {
    pub faults_injected: Vec<String>,
    pub final_revision: i64,
    pub watch_events: usize,
    pub watch_progress: usize,
    pub resumed_sessions: usize,
    pub lease: lease_check::LeaseStats,
    pub leader_changes: usize,
    /// Simulated time the run took.
    pub simulated: Duration,
}

/// What the clients learn about time, shared.
#[derive(Clone, Default)]
struct Rec {
    tl: Arc<Mutex<Timeline>>,
}

impl Rec {
    fn answered(&self, invoked: u64, answered: u64, revision: i64) {
        let mut tl = self.tl.lock().unwrap();
        tl.seen.push((answered, revision));
        tl.before.push((invoked, revision));
    }

    fn seen(&self, at: u64, revision: i64) {
        self.tl.lock().unwrap().seen.push((at, revision));
    }
}

async fn channel(url: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()
}

/// Runs `plan`; panics with the evidence (and the replay command) on any violation.
pub async fn run_watch_lease(plan: WatchLeasePlan) -> WatchLeaseReport {
    let replay = || replay_command(plan.name);
    let mut cluster = SimCluster::guide();
    let endpoints = cluster.endpoints();
    let host = cluster
        .handle
        .create_node()
        .name("clients")
        .ip("10.0.1.100".parse().unwrap())
        .build();
    if let Err(e) = host
        .spawn(wait_serving(endpoints.clone(), Duration::from_secs(10)))
        .await
        .unwrap()
    {
        panic!("cluster did not start: {e}\nreplay: {}", replay());
    }
    let start = Instant::now();
    let rec = Rec::default();
    let stop_writer = Arc::new(AtomicBool::new(false));
    let stop_leases = Arc::new(AtomicBool::new(false));
    let stop_poller = Arc::new(AtomicBool::new(false));
    let target: Arc<Mutex<Option<i64>>> = Arc::new(Mutex::new(None));

    let writer = host.spawn(writer(
        endpoints.clone(),
        rec.clone(),
        start,
        stop_writer.clone(),
    ));
    let poller = host.spawn(leader_poller(
        endpoints.clone(),
        rec.clone(),
        start,
        stop_poller.clone(),
    ));
    let watchers: Vec<_> = watcher_specs()
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            host.spawn(watcher(
                i,
                spec,
                endpoints.clone(),
                rec.clone(),
                start,
                target.clone(),
            ))
        })
        .collect();
    let lease_clients: Vec<_> = (0..plan.lease_clients)
        .map(|i| {
            host.spawn(lease_client(
                i as usize,
                endpoints.clone(),
                rec.clone(),
                start,
                stop_leases.clone(),
            ))
        })
        .collect();

    let nemesis_plan = Plan {
        name: plan.name,
        faults: plan.faults,
        fault_phase: plan.fault_phase,
        ..Plan::default()
    };
    // Raft's own invariants (one leader per term, terms never go back, one cluster ID),
    // polled from every member's Status while the faults run.
    let inv = Arc::new(Mutex::new(Invariants::default()));
    let stop_members = Arc::new(AtomicBool::new(false));
    let member_watcher = host.spawn(watch_members(
        Arc::new(Mutex::new(endpoints.clone())),
        inv.clone(),
        stop_members.clone(),
    ));
    let injected = nemesis(&mut cluster, &nemesis_plan, &inv).await;

    // Heal: everyone reachable, running, the network clean.
    cluster.heal_all();
    madsim::net::NetSim::current().update_config(|c| {
        c.packet_loss_rate = 0.0;
        c.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
    });
    for i in 0..cluster.members.len() {
        if !cluster.members[i].alive {
            cluster.restart(i);
        }
    }
    let context = format!("faults: {injected:?}");
    let serving = host
        .spawn(wait_serving(endpoints.clone(), Duration::from_secs(20)))
        .await
        .unwrap();
    stop_members.store(true, Ordering::Relaxed);
    let _ = member_watcher.await;
    // A safety violation explains a stuck cluster better than the stall does.
    crate::scenario::assert_no_violations(&inv, &context, &replay());
    if let Err(e) = serving {
        panic!(
            "liveness: the healed cluster did not serve within 20 s: {e}\n{context}\nreplay: {}",
            replay()
        );
    }
    rec.tl.lock().unwrap().healed = now_ns(start);
    sleep(plan.calm_phase).await;
    stop_leases.store(true, Ordering::Relaxed);
    let mut leases: Vec<LeaseLog> = Vec::new();
    for c in lease_clients {
        leases.extend(c.await.unwrap());
    }
    sleep(LEASE_DRAIN).await;
    stop_writer.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();

    // Leftover leases (a client gave up on them, or they have not expired): revoke them, so
    // nothing changes while the truth is read; a leftover past its deadline is a finding.
    let leftovers = host
        .spawn(revoke_leftovers(endpoints.clone(), start))
        .await
        .unwrap();
    for (id, rv) in leftovers {
        match leases.iter_mut().find(|l| l.id == id) {
            Some(l) => l.revokes.push(rv),
            None => leases.push(LeaseLog {
                // A grant whose answer was lost: never kept alive, no known TTL.
                id,
                ttl: 0,
                keepalives: Vec::new(),
                stopped: None,
                clean: true,
                revokes: vec![rv],
            }),
        }
    }

    // The final revision and state, then every watch confirms it is complete through it.
    let (final_rev, final_kvs) = host
        .spawn(read_all(endpoints[0].clone(), 0))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("final read failed: {e}\n{context}\nreplay: {}", replay()));
    *target.lock().unwrap() = Some(final_rev);
    let mut logs = Vec::new();
    for w in watchers {
        let mut log = w.await.unwrap();
        log.complete_through = final_rev;
        logs.push(log);
    }
    stop_poller.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    rec.tl.lock().unwrap().end = now_ns(start);

    // The truth: every event from revision 1, checked against range reads.
    let truth_events = host
        .spawn(read_history(endpoints[0].clone(), final_rev))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("[watch] truth: {e}\n{context}\nreplay: {}", replay()));
    let truth = Truth::build(&truth_events, final_rev)
        .unwrap_or_else(|e| panic!("{e}\n{context}\nreplay: {}", replay()));
    if let Err(e) = truth.check_state(final_rev, &final_kvs) {
        panic!("{e}\n{context}\nreplay: {}", replay());
    }
    for at in [final_rev / 3, 2 * final_rev / 3] {
        let (_, kvs) = host
            .spawn(read_all(endpoints[1].clone(), at.max(1)))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("read at {at} failed: {e}\nreplay: {}", replay()));
        if let Err(e) = truth.check_state(at.max(1), &kvs) {
            panic!("{e}\n{context}\nreplay: {}", replay());
        }
    }

    // The checkers.
    let mut report = WatchLeaseReport {
        faults_injected: injected.clone(),
        final_revision: final_rev,
        ..Default::default()
    };
    for log in &logs {
        match watch_check::check_watch(&truth, log) {
            Ok(s) => {
                report.watch_events += s.events;
                report.watch_progress += s.progress;
                report.resumed_sessions += s.sessions - 1;
                assert!(
                    s.events > 0,
                    "watch {:?} received no events: the [watch] checker had nothing to check\n\
                     {context}\nreplay: {}",
                    log.name,
                    replay()
                );
            }
            Err(e) => panic!("{e}\n{context}\nreplay: {}", replay()),
        }
    }
    let tl = rec.tl.lock().unwrap().clone();
    report.leader_changes = tl.leader_changes.len();
    report.simulated = start.elapsed();
    match lease_check::check_leases(&truth, &leases, &tl, EXPIRY_BOUND) {
        Ok(s) => report.lease = s,
        Err(e) => panic!("{e}\n{context}\nreplay: {}", replay()),
    }
    // The run must have exercised what it checks.
    let l = report.lease;
    assert!(
        writes > 50 && l.with_keys >= 3 && l.renewed >= 5 && l.expired >= 1 && l.revoked >= 1,
        "the run did too little to check: {writes} writes, leases {l:?}\n{context}\nreplay: {}",
        replay()
    );
    assert!(
        report.resumed_sessions >= 2 && report.watch_progress >= 3,
        "the watchers did too little: {report:?}\nreplay: {}",
        replay()
    );
    report
}

// ---- the writer ----

const WRITER_KEYS: [&str; 6] = ["w/a", "w/b", "w/c", "w/d", "w/e", "w/f"];

fn put_op(key: &str, value: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.into_bytes(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// Puts, deletes and multi-key txns under `w/` until `stop`; returns the writes answered.
async fn writer(endpoints: Vec<String>, rec: Rec, start: Instant, stop: Arc<AtomicBool>) -> u64 {
    let mut endpoint = 0usize;
    let mut kv: Option<KvClient<Channel>> = None;
    let mut seq = 0u64;
    let mut writes = 0u64;
    while !stop.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(thread_rng().gen_range(20..80))).await;
        let Some(c) = kv.as_mut() else {
            kv = channel(&endpoints[endpoint % endpoints.len()])
                .await
                .map(KvClient::new);
            if kv.is_none() {
                endpoint += 1;
            }
            continue;
        };
        seq += 1;
        let key = WRITER_KEYS[thread_rng().gen_range(0..WRITER_KEYS.len())];
        let value = format!("v{seq}");
        let choice = thread_rng().gen_range(0..100);
        let invoked = now_ns(start);
        let revision = if choice < 40 {
            let req = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.into_bytes(),
                ..Default::default()
            };
            timeout(OP_TIMEOUT, c.put(req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().header.unwrap_or_default().revision)
        } else if choice < 52 {
            let req = DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            timeout(OP_TIMEOUT, c.delete_range(req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().header.unwrap_or_default().revision)
        } else if choice < 55 {
            let req = DeleteRangeRequest {
                key: b"w/".to_vec(),
                range_end: b"w0".to_vec(),
                ..Default::default()
            };
            timeout(OP_TIMEOUT, c.delete_range(req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().header.unwrap_or_default().revision)
        } else if choice < 88 {
            // Several distinct keys in one txn: one revision, several events.
            let n = thread_rng().gen_range(2..=4);
            let mut keys: Vec<&str> = Vec::new();
            while keys.len() < n {
                let k = WRITER_KEYS[thread_rng().gen_range(0..WRITER_KEYS.len())];
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let success = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    if thread_rng().gen_bool(0.25) {
                        delete_op(k)
                    } else {
                        put_op(k, format!("v{seq}.{i}"))
                    }
                })
                .collect();
            let req = TxnRequest {
                success,
                ..Default::default()
            };
            timeout(OP_TIMEOUT, c.txn(req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().header.unwrap_or_default().revision)
        } else {
            // A linearizable read: its revision bounds what existed when it was sent.
            let req = RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            };
            timeout(OP_TIMEOUT, c.range(req))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().header.unwrap_or_default().revision)
        };
        match revision {
            Some(r) => {
                rec.answered(invoked, now_ns(start), r);
                writes += 1;
            }
            None => {
                kv = None;
                endpoint += 1;
            }
        }
    }
    writes
}

// ---- the leader poller ----

/// Notes the time each new term with a leader is first seen, polling every member.
async fn leader_poller(endpoints: Vec<String>, rec: Rec, start: Instant, stop: Arc<AtomicBool>) {
    let mut clients: Vec<Option<MaintenanceClient<Channel>>> = vec![None; endpoints.len()];
    let mut term = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for (i, url) in endpoints.iter().enumerate() {
            if clients[i].is_none() {
                clients[i] = timeout(Duration::from_millis(300), channel(url))
                    .await
                    .ok()
                    .flatten()
                    .map(MaintenanceClient::new);
            }
            let Some(c) = clients[i].as_mut() else {
                continue;
            };
            match timeout(Duration::from_millis(300), c.status(StatusRequest {})).await {
                Ok(Ok(r)) => {
                    let s = r.into_inner();
                    if s.leader != 0 && s.raft_term > term {
                        term = s.raft_term;
                        rec.tl.lock().unwrap().leader_changes.push(now_ns(start));
                    }
                }
                _ => clients[i] = None,
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
}

// ---- watchers ----

#[derive(Clone, Debug)]
struct WatcherSpec {
    name: &'static str,
    range: KeyRange,
    prev_kv: bool,
    /// The first session's start revision (0: from now; 2: every event).
    start: i64,
    /// Starts this long after the others (so that it has history to catch up on).
    delay: Duration,
    /// Breaks its stream on purpose this often (ms range) and resumes on another member.
    reconnect_ms: Option<(u64, u64)>,
    /// Asks for progress right after creating (while catching up).
    progress_on_create: bool,
    /// Asks for progress this often.
    progress_every: Option<Duration>,
}

fn watcher_specs() -> Vec<WatcherSpec> {
    let base = WatcherSpec {
        name: "",
        range: KeyRange::prefix("w/"),
        prev_kv: false,
        start: 0,
        delay: Duration::ZERO,
        reconnect_ms: None,
        progress_on_create: false,
        progress_every: None,
    };
    vec![
        WatcherSpec {
            name: "w/ from now, prev_kv",
            prev_kv: true,
            progress_every: Some(Duration::from_secs(2)),
            ..base.clone()
        },
        WatcherSpec {
            name: "w/ from 2, resuming",
            start: 2,
            delay: Duration::from_secs(3),
            reconnect_ms: Some((2000, 5000)),
            progress_on_create: true,
            ..base.clone()
        },
        WatcherSpec {
            name: "w/a, prev_kv, resuming",
            range: KeyRange::single("w/a"),
            prev_kv: true,
            reconnect_ms: Some((3000, 6000)),
            progress_on_create: true,
            ..base.clone()
        },
        WatcherSpec {
            name: "[w/b, w/d), resuming",
            range: KeyRange {
                key: b"w/b".to_vec(),
                range_end: b"w/d".to_vec(),
            },
            reconnect_ms: Some((2000, 4000)),
            progress_on_create: true,
            progress_every: Some(Duration::from_secs(1)),
            ..base.clone()
        },
        WatcherSpec {
            name: "l/ from now, prev_kv",
            range: KeyRange::prefix("l/"),
            prev_kv: true,
            ..base.clone()
        },
        WatcherSpec {
            name: "l/ from 2, resuming",
            range: KeyRange::prefix("l/"),
            start: 2,
            delay: Duration::from_secs(9),
            reconnect_ms: Some((3000, 6000)),
            progress_on_create: true,
            ..base.clone()
        },
        WatcherSpec {
            name: "everything from 2, prev_kv, resuming",
            range: KeyRange::all(),
            prev_kv: true,
            start: 2,
            delay: Duration::from_secs(6),
            reconnect_ms: Some((3000, 6000)),
            progress_on_create: true,
            ..base
        },
    ]
}

type WatchTx = tokio::sync::mpsc::Sender<WatchRequest>;

fn create_request(spec: &WatcherSpec, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: spec.range.key.clone(),
            range_end: spec.range.range_end.clone(),
            start_revision,
            prev_kv: spec.prev_kv,
            ..Default::default()
        })),
    }
}

fn progress_request() -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    }
}

/// One watch over as many streams as it takes, until it has confirmed the final revision
/// (`target`) or gives up 40 s after it was set.
async fn watcher(
    index: usize,
    spec: WatcherSpec,
    endpoints: Vec<String>,
    rec: Rec,
    start: Instant,
    target: Arc<Mutex<Option<i64>>>,
) -> WatchLog {
    sleep(spec.delay).await;
    let mut log = WatchLog {
        name: spec.name.to_string(),
        range: spec.range.clone(),
        prev_kv: spec.prev_kv,
        sessions: Vec::new(),
        complete_through: 0,
    };
    let mut endpoint = index;
    // The next revision this watch needs (0: unknown yet).
    let mut next = 0i64;
    let mut give_up: Option<Instant> = None;
    loop {
        let goal = *target.lock().unwrap();
        if let Some(g) = goal {
            if next > g {
                return log;
            }
            let deadline = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(40));
            if Instant::now() > deadline {
                return log;
            }
        }
        let url = endpoints[endpoint % endpoints.len()].clone();
        endpoint += 1;
        let start_revision = if next > 0 { next } else { spec.start };
        let mut session = Session {
            member: url.clone(),
            start_revision,
            items: Vec::new(),
            ended: String::new(),
        };
        let Some(ch) = channel(&url).await else {
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(16);
        let _ = tx.send(create_request(&spec, start_revision)).await;
        if spec.progress_on_create {
            session
                .items
                .push(Item::ProgressAsked { at: now_ns(start) });
            let _ = tx.send(progress_request()).await;
        }
        let requests = tonic::codegen::futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        let mut client = WatchClient::new(ch);
        let mut stream = match timeout(Duration::from_secs(2), client.watch(requests)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                session.ended = format!("refused: {e}");
                log.sessions.push(session);
                sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                session.ended = "timed out opening".into();
                log.sessions.push(session);
                continue;
            }
        };
        session.ended = run_session(
            &spec,
            &tx,
            &mut stream,
            &mut session,
            &mut next,
            &rec,
            start,
            &target,
        )
        .await;
        log.sessions.push(session);
    }
}

/// Receives on one stream until it breaks, the watcher breaks it on purpose, or the watch
/// has confirmed the final revision. Returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn run_session(
    spec: &WatcherSpec,
    tx: &WatchTx,
    stream: &mut tonic::Streaming<detcd_core::proto::etcdserverpb::WatchResponse>,
    session: &mut Session,
    next: &mut i64,
    rec: &Rec,
    start: Instant,
    target: &Arc<Mutex<Option<i64>>>,
) -> String {
    let opened = Instant::now();
    let break_at = spec
        .reconnect_ms
        .map(|(lo, hi)| opened + Duration::from_millis(thread_rng().gen_range(lo..hi)));
    let mut asked: Option<Instant> = spec.progress_on_create.then_some(opened);
    let mut last_ask = opened;
    // Once the final revision is set: how long this stream has had to confirm it. A member
    // that cannot (behind, cut off, diverged) is left for another after 3 s.
    let mut draining: Option<Instant> = None;
    loop {
        match timeout(Duration::from_millis(250), stream.message()).await {
            Ok(Ok(Some(r))) => {
                let at = now_ns(start);
                let revision = r.header.as_ref().map_or(0, |h| h.revision);
                if r.created {
                    session.items.push(Item::Created { revision });
                    if r.canceled {
                        return format!("refused: {}", r.cancel_reason);
                    }
                    if *next == 0 {
                        *next = revision + 1;
                    }
                } else if r.canceled {
                    session.items.push(Item::Canceled {
                        compact_revision: r.compact_revision,
                        reason: r.cancel_reason.clone(),
                    });
                    return "canceled".into();
                } else if !r.events.is_empty() {
                    let last = r
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .map(|kv| kv.mod_revision)
                        .max()
                        .unwrap_or(0);
                    rec.seen(at, last);
                    *next = (*next).max(last + 1);
                    session.items.push(Item::Events {
                        at,
                        revision,
                        events: r.events,
                    });
                } else if r.watch_id == -1 {
                    session.items.push(Item::Progress { at, revision });
                    asked = None;
                    *next = (*next).max(revision + 1);
                }
            }
            Ok(Ok(None)) => return "the server ended the stream".into(),
            Ok(Err(e)) => return format!("stream error: {e}"),
            Err(_) => {}
        }
        let now = Instant::now();
        let goal = *target.lock().unwrap();
        if let Some(g) = goal {
            if *next > g {
                return "complete".into();
            }
            if now > *draining.get_or_insert(now) + Duration::from_secs(3) {
                return format!("not complete through {g} within 3 s");
            }
        }
        // A progress request unanswered for long: the member is stuck; try another.
        if asked.is_some_and(|t| now > t + Duration::from_secs(5)) {
            return "no progress answer in 5 s".into();
        }
        if goal.is_none() && break_at.is_some_and(|b| now > b) {
            return "broken on purpose".into();
        }
        let every = if goal.is_some() {
            Some(Duration::from_millis(500))
        } else {
            spec.progress_every
        };
        if asked.is_none() && every.is_some_and(|e| now > last_ask + e) {
            session
                .items
                .push(Item::ProgressAsked { at: now_ns(start) });
            if tx.send(progress_request()).await.is_err() {
                return "request stream closed".into();
            }
            asked = Some(now);
            last_ask = now;
        }
    }
}

// ---- lease clients ----

/// Grants leases, attaches keys, keeps them alive for a while, stops, sometimes revokes;
/// until `stop`. Returns what it did with each lease.
async fn lease_client(
    index: usize,
    endpoints: Vec<String>,
    rec: Rec,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<LeaseLog> {
    let mut logs = Vec::new();
    let mut endpoint = index;
    while !stop.load(Ordering::Relaxed) {
        sleep(Duration::from_millis(thread_rng().gen_range(100..1000))).await;
        let url = endpoints[endpoint % endpoints.len()].clone();
        let Some(ch) = channel(&url).await else {
            endpoint += 1;
            continue;
        };
        let mut lease = LeaseClient::new(ch.clone());
        let mut kv = KvClient::new(ch);
        let ttl = thread_rng().gen_range(2..=4);
        let invoked = now_ns(start);
        let granted = match timeout(
            OP_TIMEOUT,
            lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }),
        )
        .await
        {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                endpoint += 1;
                continue;
            }
        };
        rec.answered(
            invoked,
            now_ns(start),
            granted.header.as_ref().map_or(0, |h| h.revision),
        );
        let id = granted.id;
        let mut log = LeaseLog {
            id,
            ttl: granted.ttl,
            keepalives: Vec::new(),
            stopped: None,
            clean: true,
            revokes: Vec::new(),
        };
        // Attach 1-3 keys: in one txn, or one put each.
        let n = thread_rng().gen_range(1..=3);
        let puts: Vec<PutRequest> = (0..n)
            .map(|k| PutRequest {
                key: format!("l/{id:x}/{k}").into_bytes(),
                value: format!("lease {id:x}").into_bytes(),
                lease: id,
                ..Default::default()
            })
            .collect();
        if thread_rng().gen_bool(0.5) {
            let req = TxnRequest {
                success: puts
                    .into_iter()
                    .map(|p| RequestOp {
                        request: Some(request_op::Request::RequestPut(p)),
                    })
                    .collect(),
                ..Default::default()
            };
            let invoked = now_ns(start);
            if let Ok(Ok(r)) = timeout(OP_TIMEOUT, kv.txn(req)).await {
                let h = r.into_inner().header.unwrap_or_default().revision;
                rec.answered(invoked, now_ns(start), h);
            }
        } else {
            for p in puts {
                let invoked = now_ns(start);
                if let Ok(Ok(r)) = timeout(OP_TIMEOUT, kv.put(p)).await {
                    let h = r.into_inner().header.unwrap_or_default().revision;
                    rec.answered(invoked, now_ns(start), h);
                }
            }
        }
        // Keep it alive for a while (sometimes not at all).
        let hold = Duration::from_millis(thread_rng().gen_range(0..8000));
        let until = Instant::now() + hold;
        keep_alive(&endpoints, &mut endpoint, &mut log, until, &stop, start).await;
        // A third (and every client's first) are revoked once their keep-alives stop,
        // before they would expire.
        let revoke = thread_rng().gen_bool(0.35) || logs.is_empty();
        if revoke && !stop.load(Ordering::Relaxed) {
            sleep(Duration::from_millis(
                thread_rng().gen_range(0..(log.ttl as u64 * 500).max(1)),
            ))
            .await;
            for _ in 0..3 {
                let url = endpoints[endpoint % endpoints.len()].clone();
                let Some(ch) = channel(&url).await else {
                    endpoint += 1;
                    continue;
                };
                let invoked = now_ns(start);
                let res = timeout(
                    OP_TIMEOUT,
                    LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id }),
                )
                .await;
                match res {
                    Ok(Ok(r)) => {
                        let h = r.into_inner().header.unwrap_or_default().revision;
                        rec.answered(invoked, now_ns(start), h);
                        log.revokes.push(Revoke {
                            invoked,
                            revision: Some(h),
                        });
                        break;
                    }
                    Ok(Err(e)) if e.code() == tonic::Code::NotFound => {
                        log.revokes.push(Revoke {
                            invoked,
                            revision: None,
                        });
                        break;
                    }
                    _ => {
                        log.revokes.push(Revoke {
                            invoked,
                            revision: None,
                        });
                        endpoint += 1;
                    }
                }
            }
        }
        logs.push(log);
    }
    logs
}

/// Sends a keep-alive every third of the TTL until `until` (or `stop`), over streams to any
/// member, moving to the next on errors. Stops early if the lease is gone (TTL 0).
async fn keep_alive(
    endpoints: &[String],
    endpoint: &mut usize,
    log: &mut LeaseLog,
    until: Instant,
    stop: &AtomicBool,
    start: Instant,
) {
    let every = Duration::from_millis(log.ttl as u64 * 1000 / 3);
    let mut stream: Option<(
        tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
        tonic::Streaming<detcd_core::proto::etcdserverpb::LeaseKeepAliveResponse>,
    )> = None;
    let mut clean = true;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        if stream.is_none() {
            let url = endpoints[*endpoint % endpoints.len()].clone();
            let Some(ch) = channel(&url).await else {
                *endpoint += 1;
                sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(4);
            let requests = tonic::codegen::futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            match timeout(
                Duration::from_secs(2),
                LeaseClient::new(ch).lease_keep_alive(requests),
            )
            .await
            {
                Ok(Ok(r)) => stream = Some((tx, r.into_inner())),
                _ => {
                    *endpoint += 1;
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let (tx, rx) = stream.as_mut().expect("just opened");
        let sent = now_ns(start);
        if tx.send(LeaseKeepAliveRequest { id: log.id }).await.is_err() {
            stream = None;
            *endpoint += 1;
            continue;
        }
        match timeout(Duration::from_secs(2), rx.message()).await {
            Ok(Ok(Some(r))) => {
                log.keepalives.push(KeepAlive {
                    sent,
                    answered: Some(now_ns(start)),
                    ttl: Some(r.ttl),
                });
                clean = true;
                if r.ttl <= 0 {
                    break; // gone
                }
                sleep(every).await;
            }
            _ => {
                log.keepalives.push(KeepAlive {
                    sent,
                    answered: None,
                    ttl: None,
                });
                clean = false;
                stream = None;
                *endpoint += 1;
            }
        }
    }
    log.stopped = Some(now_ns(start));
    log.clean = clean;
}

/// Revokes every lease still listed (asked of each member, then revoked through any).
async fn revoke_leftovers(endpoints: Vec<String>, start: Instant) -> Vec<(i64, Revoke)> {
    let mut ids = std::collections::BTreeSet::new();
    for url in &endpoints {
        let Some(ch) = channel(url).await else {
            continue;
        };
        if let Ok(Ok(r)) = timeout(
            OP_TIMEOUT,
            LeaseClient::new(ch).lease_leases(LeaseLeasesRequest {}),
        )
        .await
        {
            ids.extend(r.into_inner().leases.iter().map(|l| l.id));
        }
    }
    let mut out = Vec::new();
    for id in ids {
        for url in endpoints.iter().cycle().take(6) {
            let Some(ch) = channel(url).await else {
                continue;
            };
            let invoked = now_ns(start);
            match timeout(
                OP_TIMEOUT,
                LeaseClient::new(ch).lease_revoke(LeaseRevokeRequest { id }),
            )
            .await
            {
                Ok(Ok(r)) => {
                    let revision = r.into_inner().header.map(|h| h.revision);
                    out.push((id, Revoke { invoked, revision }));
                    break;
                }
                Ok(Err(e)) if e.code() == tonic::Code::NotFound => break,
                _ => {}
            }
        }
    }
    out
}

// ---- the truth ----

/// A linearizable range of every key (at `revision`, 0: the latest): the header revision
/// and the key-values.
async fn read_all(url: String, revision: i64) -> Result<(i64, Vec<KeyValue>), String> {
    for _ in 0..20 {
        if let Some(ch) = channel(&url).await {
            let req = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..Default::default()
            };
            match timeout(OP_TIMEOUT, KvClient::new(ch).range(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    return Ok((r.header.unwrap_or_default().revision, r.kvs));
                }
                Ok(Err(e)) if e.code() == tonic::Code::OutOfRange => return Err(e.to_string()),
                _ => {}
            }
        }
        sleep(Duration::from_millis(250)).await;
    }
    Err(format!("no answer from {url}"))
}

/// Every event from revision 1 through `last`, by a watch on every key.
async fn read_history(url: String, last: i64) -> Result<Vec<Event>, String> {
    let ch = channel(&url).await.ok_or("cannot connect")?;
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
    let spec = WatcherSpec {
        name: "truth",
        range: KeyRange::all(),
        prev_kv: false,
        start: 1,
        delay: Duration::ZERO,
        reconnect_ms: None,
        progress_on_create: false,
        progress_every: None,
    };
    tx.send(create_request(&spec, 1))
        .await
        .map_err(|e| e.to_string())?;
    let requests = tonic::codegen::futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    });
    let mut stream = timeout(Duration::from_secs(5), WatchClient::new(ch).watch(requests))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut events = Vec::new();
    let mut at = 1;
    while at < last {
        match timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(r))) => {
                if r.canceled {
                    return Err(format!("the truth watch was canceled: {r:?}"));
                }
                for e in r.events {
                    at = e.kv.as_ref().map_or(at, |kv| kv.mod_revision);
                    events.push(e);
                }
            }
            other => {
                return Err(format!(
                    "the truth watch stopped at revision {at} of {last}: {other:?}"
                ))
            }
        }
    }
    drop(tx);
    Ok(events)
}
