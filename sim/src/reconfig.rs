//! Runtime reconfiguration under load: the guide's three members serve the usual clients
//! while an operator host changes the membership through the gRPC Cluster service, in a
//! seeded random order: add a learner on a new host, start it with
//! `--initial-cluster-state existing`, let it catch up and promote it; add a voter likewise;
//! remove a voter (never infra0, only while more than three remain); replace a member that
//! lost its data dir (crash it, wipe its disk, restart it with its original `new` flags: it
//! must refuse to start, then remove it and add it back on a fresh host and disk); crash a
//! member and leave it down while the next operations run. infra0 is never removed, wiped or
//! crashed, so the clients (on the guide's three endpoints) always have a live member.
//!
//! Then, healed: every live member serves, the history is linearizable, revisions keep their
//! real-time order, the invariants held, the replicas converge, and the new checkers:
//! - `[configuration]`: every live member's member list names exactly the members the harness
//!   expects (IDs, names, peer URLs, learner flags); every membership answer along the way
//!   lists the expected members too.
//! - `[removed member]`: a removed member's process exits with etcd's "the member has been
//!   permanently removed from the cluster" within a bound, and never runs again.
//! - `[wiped member refused]`: a member restarted on an empty data dir with its original flags
//!   exits with "has already been bootstrapped". Its disk carries a tripwire meanwhile: a fresh
//!   raft log written there panics inside the member with this checker's name, before its raft
//!   could act on (or crash on) a log it no longer has.
//!
//! Membership calls are retried on the answers a cluster gives while it is busy (no leader,
//! leader changed, unhealthy cluster, a learner not yet in sync, another change in progress,
//! timeouts), within a bound. After an answer that leaves the outcome unknown (a timeout, a
//! lost connection), "already exists" / "not found" / "not a learner" mean it did happen.

use crate::checkers::{self, ListedMember};
use crate::cluster::{start_member, Client, SimCluster, GUIDE_MEMBERS};
use crate::disk::SimDisk;
use crate::scenario::{replay_command, Workload};
use crate::workload::Invariants;
use detcd_core::config::{parse_initial_cluster, parse_urls, ClusterState, Config};
use detcd_core::proto::etcdserverpb as pb;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::NodeHandle;
use madsim::time::Instant;
use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a removed member's process says when it stops (etcd's rafthttp text).
pub const REMOVED_NOTE: &str = detcd_net::transport::REMOVED_MEMBER;
/// What a member that lost its data dir says when it refuses to start (etcd's text).
pub const REFUSED_NOTE: &str = "has already been bootstrapped";

/// A removed member must have stopped within this much simulated time of its removal's answer.
const REMOVED_EXIT_BOUND: Duration = Duration::from_secs(10);
/// A wiped member must have refused to start within this (it asks its peers first).
const REFUSAL_BOUND: Duration = Duration::from_secs(15);
/// A new member must serve, publish its name and (a learner) catch up within this.
const JOIN_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// Add a learner, start it, wait for it to catch up, promote it.
    AddLearner,
    /// Add a voter and start it.
    AddVoter,
    /// Remove a voter other than infra0 (only while more than three remain).
    Remove,
    /// Wipe a guide member's disk: refused on restart, removed, added back on a fresh host.
    Replace,
    /// Crash a member other than infra0; it comes back 0.5-4 s later, while the next
    /// operations run.
    Crash,
    /// Cut a running member other than infra0 off the network (both ways) for 0.5-4 s,
    /// while the next operations run: the leader itself, half of the time it can be.
    Isolate,
}

#[derive(Clone, Debug)]
pub struct ReconfigPlan {
    /// The test's name, for the replay command printed on failure.
    pub name: &'static str,
    /// Operations that must each happen (in a seeded random order) ...
    pub required: Vec<OpKind>,
    /// ... then this many more, drawn from `extra_kinds`.
    pub extra: usize,
    pub extra_kinds: Vec<OpKind>,
    pub clients: u32,
    pub keys: usize,
    pub snapshot_count: Option<u64>,
    /// Adds stop here (a remove comes first).
    pub max_voters: usize,
    /// A membership call must succeed within this much simulated time.
    pub call_bound: Duration,
    /// The healed cluster must serve within this.
    pub recovery_bound: Duration,
    /// Every remove takes the leader (moving the leadership off infra0 first when it leads:
    /// infra0 is cut off for a few election timeouts). Otherwise a remove takes the leader a
    /// third of the time it is a candidate.
    pub leader_first: bool,
}

impl Default for ReconfigPlan {
    fn default() -> ReconfigPlan {
        ReconfigPlan {
            name: "<test>",
            required: vec![],
            extra: 0,
            extra_kinds: vec![OpKind::AddLearner, OpKind::AddVoter, OpKind::Remove],
            clients: 6,
            keys: 4,
            snapshot_count: None,
            max_voters: 5,
            call_bound: Duration::from_secs(60),
            recovery_bound: Duration::from_secs(20),
            leader_first: false,
        }
    }
}

/// What a run did, for the scenario's own assertions.
#[derive(Debug, Default)]
pub struct ReconfigReport {
    /// Client operations in the history.
    pub ops: usize,
    pub samples: u64,
    /// Learners added, started, caught up and promoted.
    pub learners_promoted: usize,
    /// Voters added and started.
    pub voters_added: usize,
    /// Voters removed (their process stopped), and how many of them were leading.
    pub removed: usize,
    pub leaders_removed: usize,
    /// Wiped members refused on restart.
    pub wiped_refused: usize,
    /// Wiped members removed and added back as new members.
    pub replaced: usize,
    pub crashes: usize,
    /// Members cut off the network for a while, and how many of them were leading.
    pub isolations: usize,
    pub leaders_isolated: usize,
    /// Membership calls retried after a busy answer or an unknown outcome.
    pub retries: usize,
    /// Voters at the end.
    pub voters: usize,
    /// Simulated time from the cluster's start to the end of the checks.
    pub simulated: Duration,
    pub log: Vec<String>,
}

/// The harness's view of one member (parallel to `SimCluster::members`).
#[derive(Clone, Debug)]
struct Tracked {
    id: u64,
    name: String,
    peer_url: String,
    /// One of the guide's three (started with `--initial-cluster-state new`).
    guide: bool,
    /// The cluster's member list names it.
    listed: bool,
    learner: bool,
    /// Crashed; restarted at this time.
    down_until: Option<Instant>,
    /// Stopped for good: why (the exit note must contain `note`, named by `checker`), and
    /// how many processes had started on its host then (none may start after).
    gone: Option<Gone>,
}

#[derive(Clone, Debug)]
struct Gone {
    note: &'static str,
    checker: &'static str,
    starts: u64,
}

impl Tracked {
    fn running(&self) -> bool {
        self.gone.is_none() && self.down_until.is_none()
    }

    fn running_voter(&self) -> bool {
        self.running() && self.listed && !self.learner
    }

    fn expected(&self) -> ListedMember {
        ListedMember {
            id: self.id,
            name: self.name.clone(),
            peer_urls: vec![self.peer_url.clone()],
            learner: self.learner,
        }
    }
}

#[derive(Clone, Debug)]
enum Change {
    Add { peer_url: String, learner: bool },
    Remove(u64),
    Promote(u64),
}

/// How a failed membership call is taken.
enum Answer {
    /// Refused before anything was proposed (busy): retry.
    Busy,
    /// Maybe applied (a timeout, a lost connection, a leader change): retry, and an "already
    /// done" answer after it means it was.
    Unknown,
    Fatal,
}

fn classify(status: &tonic::Status) -> Answer {
    let msg = status.message();
    let busy = [
        "unhealthy cluster",
        "in sync with leader",
        "another membership change is in progress",
        "no leader",
    ];
    if busy.iter().any(|b| msg.contains(b)) {
        return Answer::Busy;
    }
    let unknown = ["leader changed", "request timed out", "server stopped"];
    if unknown.iter().any(|u| msg.contains(u))
        || matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ) && !msg.starts_with("etcdserver:")
    {
        return Answer::Unknown;
    }
    Answer::Fatal
}

struct Harness {
    plan: ReconfigPlan,
    cluster: SimCluster,
    tracked: Vec<Tracked>,
    operator: NodeHandle,
    inv: Arc<Mutex<Invariants>>,
    /// The endpoints the invariant watcher polls: the running members'.
    watched: Arc<Mutex<Vec<String>>>,
    next_host: u32,
    /// Replaces still to come: a remove leaves them a guide member to wipe.
    replaces_left: usize,
    report: ReconfigReport,
    start: Instant,
    /// A member is cut off the network until then (one at a time).
    isolated_until: Option<Instant>,
}

/// Runs `plan`: the guide's cluster under clients, the membership operations, healing, and
/// every check. Panics with the evidence (and the replay command) on any violation.
pub async fn run_reconfiguration(plan: ReconfigPlan) -> ReconfigReport {
    let cluster = SimCluster::start_with(&GUIDE_MEMBERS, "etcd-cluster-1", |cfg| {
        if let Some(n) = plan.snapshot_count {
            cfg.snapshot_count = n;
        }
    });
    let tracked = (0..GUIDE_MEMBERS.len())
        .map(|i| Tracked {
            id: cluster.member_id(i),
            name: GUIDE_MEMBERS[i].0.to_string(),
            peer_url: format!("http://{}:2380", GUIDE_MEMBERS[i].1),
            guide: true,
            listed: true,
            learner: false,
            down_until: None,
            gone: None,
        })
        .collect();
    let endpoints = cluster.endpoints();
    let client_host = cluster
        .handle
        .create_node()
        .name("clients")
        .ip("10.0.1.100".parse().unwrap())
        .build();
    let operator = cluster
        .handle
        .create_node()
        .name("operator")
        .ip("10.0.1.201".parse().unwrap())
        .build();
    let watched = Arc::new(Mutex::new(endpoints.clone()));
    // The clients use the guide's three endpoints: infra0 is always among them and always up.
    let mut work = Workload::start(
        &client_host,
        plan.name,
        endpoints.clone(),
        watched.clone(),
        plan.clients,
        plan.keys,
    )
    .await;
    let (inv, start) = (work.inv.clone(), work.start);

    let replaces_left = plan
        .required
        .iter()
        .filter(|k| **k == OpKind::Replace)
        .count();
    let mut h = Harness {
        plan: plan.clone(),
        cluster,
        tracked,
        operator,
        inv: inv.clone(),
        watched,
        next_host: 0,
        replaces_left,
        report: ReconfigReport::default(),
        start,
        isolated_until: None,
    };
    h.operations().await;

    // Heal: the network whole, every crashed member back; then the cluster must serve again.
    h.heal();
    for i in 0..h.tracked.len() {
        if h.tracked[i].down_until.is_some() {
            h.restart(i);
        }
    }
    h.refresh_watch();
    let live = h.running_endpoints();
    let context = format!("ops: {:?}", h.report.log);
    let states = work
        .finish(&client_host, &live, plan.recovery_bound, &context)
        .await;
    h.check_members_running();
    h.check_gone();
    h.check_configuration().await;
    let (ops, samples) = work.check(&states, live.len(), &context);
    let mut report = std::mem::take(&mut h.report);
    report.ops = ops;
    report.samples = samples;
    report.voters = h.tracked.iter().filter(|t| t.listed && !t.learner).count();
    report.simulated = start.elapsed();
    report
}

impl Harness {
    fn fail(&self, checker: &str, what: String) -> ! {
        panic!(
            "[{checker}] {what}\nops: {:?}\nreplay: {}",
            self.report.log,
            replay_command(self.plan.name)
        )
    }

    /// Records an operation; printed too (libtest shows it when the test fails, also when
    /// a member panics before the harness could report).
    fn log(&mut self, what: String) {
        eprintln!("reconfiguration at {:?}: {what}", self.start.elapsed());
        self.report.log.push(what);
    }

    async fn on_operator<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> T {
        self.operator.spawn(f).await.unwrap()
    }

    fn client_url(&self, i: usize) -> String {
        self.cluster.members[i].client_url()
    }

    fn running_endpoints(&self) -> Vec<String> {
        (0..self.tracked.len())
            .filter(|i| self.tracked[*i].running())
            .map(|i| self.client_url(i))
            .collect()
    }

    fn refresh_watch(&self) {
        *self.watched.lock().unwrap() = self.running_endpoints();
    }

    fn voters(&self) -> usize {
        self.tracked
            .iter()
            .filter(|t| t.listed && !t.learner)
            .count()
    }

    fn expected(&self) -> Vec<ListedMember> {
        self.tracked
            .iter()
            .filter(|t| t.listed)
            .map(Tracked::expected)
            .collect()
    }

    fn restart(&mut self, i: usize) {
        self.inv.lock().unwrap().restarted(self.tracked[i].id);
        self.cluster.restart(i);
        self.tracked[i].down_until = None;
        let name = self.tracked[i].name.clone();
        self.log(format!("restart {name}"));
        self.refresh_watch();
    }

    /// Restarts crashed members and heals an isolation whose time has come; fails if a
    /// running member stopped.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.isolated_until.is_some_and(|t| t <= now) {
            self.heal();
        }
        for i in 0..self.tracked.len() {
            if self.tracked[i].down_until.is_some_and(|t| t <= now) {
                self.restart(i);
            }
        }
        self.check_members_running();
    }

    fn check_members_running(&self) {
        for (i, t) in self.tracked.iter().enumerate() {
            if t.running() {
                if let Some(exit) = self.cluster.exit_of(i) {
                    self.fail(
                        "member stopped",
                        format!("{} ({:x}) exited during the run: {exit}", t.name, t.id),
                    );
                }
            }
        }
    }

    /// Sleeps `d` of simulated time, restarting crashed members as they come due.
    async fn pause(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let step = (end - Instant::now()).min(Duration::from_millis(100));
            madsim::time::sleep(step).await;
            self.tick();
        }
    }

    /// A running voter's endpoint for a membership call, chosen at random (a follower
    /// forwards the change to the leader).
    fn pick_endpoint(&self) -> String {
        let voters: Vec<usize> = (0..self.tracked.len())
            .filter(|i| self.tracked[*i].running_voter())
            .collect();
        let i = voters[thread_rng().gen_range(0..voters.len())];
        self.client_url(i)
    }

    /// The leader's ID as infra0 sees it (0: none).
    async fn leader(&self) -> u64 {
        let url = self.client_url(0);
        self.on_operator(async move { status(url).await.map(|s| s.leader) })
            .await
            .unwrap_or(0)
    }

    /// Checks the members a membership answer lists against the expected ones (names aside:
    /// a member publishes its name only once it has started).
    fn check_answer(&self, what: &str, members: &[pb::Member], added: Option<&Tracked>) {
        let strip = |mut m: ListedMember| {
            m.name.clear();
            m
        };
        let mut expected = self.expected();
        expected.extend(added.map(Tracked::expected));
        let expected: Vec<ListedMember> = expected.into_iter().map(strip).collect();
        let got: Vec<ListedMember> = members
            .iter()
            .map(|m| strip(ListedMember::from_pb(m)))
            .collect();
        if let Err(e) = checkers::configurations_agree(&expected, &[(what.to_string(), Some(got))])
        {
            self.fail(
                "configuration",
                e.trim_start_matches("[configuration] ").to_string(),
            );
        }
    }

    /// Makes a membership change through the Cluster service, retrying while the cluster is
    /// busy. Returns the added member (for an add) and the member list the answer carried.
    async fn change(&mut self, change: Change) -> (Option<pb::Member>, Vec<pb::Member>) {
        let deadline = Instant::now() + self.plan.call_bound;
        let mut maybe_done = false;
        let mut last = String::new();
        loop {
            if Instant::now() > deadline {
                self.fail(
                    "reconfiguration",
                    format!(
                        "{change:?} did not succeed within {:?}: {last}",
                        self.plan.call_bound
                    ),
                );
            }
            let url = self.pick_endpoint();
            let c = change.clone();
            let target = url.clone();
            let res = self
                .on_operator(async move {
                    let Some(mut client) = Client::connect(&target).await else {
                        return Err(tonic::Status::unavailable(format!(
                            "cannot connect to {target}"
                        )));
                    };
                    let call = async {
                        match c {
                            Change::Add { peer_url, learner } => client
                                .cluster
                                .member_add(pb::MemberAddRequest {
                                    peer_ur_ls: vec![peer_url],
                                    is_learner: learner,
                                })
                                .await
                                .map(|r| {
                                    let r = r.into_inner();
                                    (r.member, r.members)
                                }),
                            Change::Remove(id) => client
                                .cluster
                                .member_remove(pb::MemberRemoveRequest { id })
                                .await
                                .map(|r| (None, r.into_inner().members)),
                            Change::Promote(id) => client
                                .cluster
                                .member_promote(pb::MemberPromoteRequest { id })
                                .await
                                .map(|r| (None, r.into_inner().members)),
                        }
                    };
                    match madsim::time::timeout(Duration::from_secs(10), call).await {
                        Ok(r) => r,
                        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in 10 s")),
                    }
                })
                .await;
            let status = match res {
                Ok(r) => return r,
                Err(status) => status,
            };
            let msg = status.message().to_string();
            // An earlier attempt with an unknown outcome did it.
            if maybe_done {
                let done = match &change {
                    // The same URLs in the same second make the same ID.
                    Change::Add { .. } => {
                        msg.contains("Peer URLs already exists")
                            || msg.contains("member ID already exist")
                    }
                    Change::Remove(_) => msg.contains("member not found"),
                    Change::Promote(_) => msg == "etcdserver: can only promote a learner member",
                };
                if done {
                    self.log(format!("{change:?}: an earlier attempt did it ({msg})"));
                    let list = self.settled_member_list().await;
                    let added = match &change {
                        Change::Add { peer_url, .. } => {
                            let m = list
                                .iter()
                                .find(|m| m.peer_ur_ls.contains(peer_url))
                                .cloned();
                            if m.is_none() {
                                self.fail(
                                    "reconfiguration",
                                    format!("{change:?} answered {msg:?}, but no member has that peer URL: {list:?}"),
                                );
                            }
                            m
                        }
                        _ => None,
                    };
                    return (added, list);
                }
            }
            match classify(&status) {
                Answer::Busy => {}
                Answer::Unknown => maybe_done = true,
                Answer::Fatal => self.fail(
                    "reconfiguration",
                    format!("{change:?} through {url} failed: {:?} {msg}", status.code()),
                ),
            }
            self.report.retries += 1;
            last = format!("{url}: {msg}");
            let backoff = Duration::from_millis(thread_rng().gen_range(200..600));
            self.pause(backoff).await;
        }
    }

    /// A linearizable member list from a running voter (retried within the call bound).
    async fn settled_member_list(&mut self) -> Vec<pb::Member> {
        let deadline = Instant::now() + self.plan.call_bound;
        while Instant::now() < deadline {
            let url = self.pick_endpoint();
            if let Some(list) = self.on_operator(member_list(url, true)).await {
                return list;
            }
            self.pause(Duration::from_millis(300)).await;
        }
        self.fail(
            "reconfiguration",
            "no linearizable member list within the call bound".into(),
        )
    }

    /// Waits (restarting crashed members meanwhile) until the future `probe` makes answers
    /// true (each probe runs on the operator host).
    async fn wait_for<F, Fut>(&mut self, bound: Duration, what: &str, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let deadline = Instant::now() + bound;
        loop {
            if self.on_operator(probe()).await {
                return;
            }
            if Instant::now() > deadline {
                self.fail(
                    "reconfiguration",
                    format!("{what} did not happen within {bound:?}"),
                );
            }
            self.pause(Duration::from_millis(100)).await;
        }
    }

    /// Runs the planned operations: the required ones in a seeded random order, then the
    /// extra ones; an operation that cannot run yet gets the one it needs first.
    async fn operations(&mut self) {
        let mut queue: Vec<OpKind> = self.plan.required.clone();
        // Fisher-Yates with the simulator's generator.
        for i in (1..queue.len()).rev() {
            let j = thread_rng().gen_range(0..=i);
            queue.swap(i, j);
        }
        for _ in 0..self.plan.extra {
            let kinds = &self.plan.extra_kinds;
            queue.push(kinds[thread_rng().gen_range(0..kinds.len())]);
        }
        let mut queue: VecDeque<OpKind> = queue.into();
        while let Some(kind) = queue.pop_front() {
            self.pause(Duration::from_millis(thread_rng().gen_range(500..2000)))
                .await;
            match kind {
                OpKind::AddLearner | OpKind::AddVoter if self.voters() >= self.plan.max_voters => {
                    queue.push_front(kind);
                    queue.push_front(OpKind::Remove);
                }
                OpKind::Remove if self.voters() <= 3 => {
                    queue.push_front(kind);
                    queue.push_front(if thread_rng().gen_bool(0.5) {
                        OpKind::AddVoter
                    } else {
                        OpKind::AddLearner
                    });
                }
                OpKind::AddLearner => {
                    self.add_member(true, None).await;
                }
                OpKind::AddVoter => {
                    self.add_member(false, None).await;
                }
                OpKind::Remove => self.remove().await,
                OpKind::Replace => self.replace().await,
                OpKind::Crash => self.crash().await,
                OpKind::Isolate => self.isolate().await,
            }
        }
    }

    /// Adds a member on a new host (10.0.1.20 and up) and starts it as etcd's guide says:
    /// `--initial-cluster-state existing` and `--initial-cluster` from the add's answer. A
    /// learner is promoted once it has caught up.
    async fn add_member(&mut self, learner: bool, name: Option<String>) -> usize {
        let n = self.next_host;
        self.next_host += 1;
        let ip: IpAddr = format!("10.0.1.{}", 20 + n).parse().unwrap();
        let name = name.unwrap_or_else(|| format!("infra{}", 3 + n));
        let peer_url = format!("http://{ip}:2380");
        let (added, members) = self
            .change(Change::Add {
                peer_url: peer_url.clone(),
                learner,
            })
            .await;
        let Some(added) = added else {
            self.fail(
                "reconfiguration",
                format!("member add for {peer_url} answered no member"),
            );
        };
        let id = added.id;
        let new = Tracked {
            id,
            name: name.clone(),
            peer_url: peer_url.clone(),
            guide: false,
            listed: true,
            learner,
            down_until: None,
            gone: None,
        };
        self.check_answer("the member add answer", &members, Some(&new));
        self.log(format!(
            "added {} {name} ({id:x}) at {peer_url}",
            if learner { "learner" } else { "voter" }
        ));

        // The new member asks the first of its peers in URL order, infra0: it must know the
        // new member already (its answer is compared with --initial-cluster).
        let infra0 = self.client_url(0);
        self.wait_for(JOIN_BOUND, "infra0 listing the added member", || {
            let url = infra0.clone();
            async move {
                member_list(url, false)
                    .await
                    .is_some_and(|l| l.iter().any(|m| m.id == id))
            }
        })
        .await;

        let initial: Vec<String> = members
            .iter()
            .flat_map(|m| {
                // Only the local name matters (the running cluster's members are matched by
                // peer URLs); an unstarted member has none yet.
                let n = if m.id == id {
                    name.clone()
                } else if m.name.is_empty() {
                    format!("unstarted-{:x}", m.id)
                } else {
                    m.name.clone()
                };
                m.peer_ur_ls
                    .iter()
                    .map(move |u| format!("{n}={u}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut cfg = Config::default();
        cfg.name = name.clone();
        cfg.data_dir = format!("{name}.etcd");
        cfg.initial_advertise_peer_urls = parse_urls(&peer_url).unwrap();
        cfg.listen_peer_urls = cfg.initial_advertise_peer_urls.clone();
        cfg.listen_client_urls = parse_urls(&format!("http://{ip}:2379")).unwrap();
        cfg.advertise_client_urls = cfg.listen_client_urls.clone();
        cfg.initial_cluster = parse_initial_cluster(&initial.join(",")).unwrap();
        cfg.initial_cluster_state = ClusterState::Existing;
        cfg.initial_cluster_token = "etcd-cluster-1".into();
        if let Some(s) = self.plan.snapshot_count {
            cfg.snapshot_count = s;
        }
        let member = start_member(&self.cluster.handle, cfg, ip, SimDisk::new());
        // `tracked` and the cluster's members stay index for index.
        self.cluster.members.push(member);
        self.tracked.push(new);
        let i = self.cluster.members.len() - 1;
        self.refresh_watch();

        // Started: it published its name (the cluster's list shows it).
        self.wait_for(JOIN_BOUND, &format!("{name} publishing its name"), || {
            let url = infra0.clone();
            async move {
                member_list(url, false)
                    .await
                    .is_some_and(|l| l.iter().any(|m| m.id == id && !m.name.is_empty()))
            }
        })
        .await;

        if learner {
            // Caught up: applied what infra0 had committed when the wait began.
            let target = self
                .on_operator(status(infra0.clone()))
                .await
                .map(|s| s.raft_index)
                .unwrap_or(0);
            let url = self.client_url(i);
            self.wait_for(JOIN_BOUND, &format!("learner {name} catching up"), || {
                let url = url.clone();
                async move {
                    status(url)
                        .await
                        .is_some_and(|s| s.raft_applied_index >= target)
                }
            })
            .await;
            let (_, members) = self.change(Change::Promote(id)).await;
            self.tracked[i].learner = false;
            self.check_answer("the promote answer", &members, None);
            self.report.learners_promoted += 1;
            self.log(format!("promoted {name} ({id:x})"));
        } else {
            self.report.voters_added += 1;
        }
        i
    }

    /// Removes a running voter other than infra0; its process must stop with etcd's message.
    /// The leader, when it is a candidate, is picked a third of the time, or always with
    /// `plan.leader_first` (which first moves the leadership off infra0 if needed).
    async fn remove(&mut self) {
        for attempt in 0..3 {
            let leader = self.known_leader().await;
            if self.plan.leader_first && leader == self.tracked[0].id && attempt < 2 {
                self.move_leadership_off_infra0().await;
                continue;
            }
            let guides_left = (1..self.tracked.len())
                .filter(|i| self.tracked[*i].guide && self.tracked[*i].running_voter())
                .count();
            let candidates: Vec<usize> = (1..self.tracked.len())
                .filter(|i| self.tracked[*i].running_voter())
                // Keep a guide member for the replaces still to come.
                .filter(|i| !(self.tracked[*i].guide && guides_left <= self.replaces_left))
                .collect();
            if candidates.is_empty() {
                // Whoever is down comes back first, and is a candidate then.
                for j in 0..self.tracked.len() {
                    if self.tracked[j].down_until.is_some() {
                        self.restart(j);
                    }
                }
                continue;
            }
            let leading = candidates
                .iter()
                .copied()
                .find(|i| self.tracked[*i].id == leader);
            let i = match leading {
                Some(l) if self.plan.leader_first || thread_rng().gen_bool(0.34) => l,
                _ => candidates[thread_rng().gen_range(0..candidates.len())],
            };
            return self.remove_member(i, leader).await;
        }
        self.log("remove: no candidate".into());
    }

    /// The leader as infra0 sees it, waiting (bounded) for one.
    async fn known_leader(&mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leader = self.leader().await;
            if leader != 0 || Instant::now() > deadline {
                return leader;
            }
            self.pause(Duration::from_millis(200)).await;
        }
    }

    /// Cuts infra0 off for a few election timeouts, so another member takes over (infra0
    /// itself is never removed).
    async fn move_leadership_off_infra0(&mut self) {
        let node = self.cluster.node_id(0);
        madsim::net::NetSim::current().clog_node(node);
        self.log("isolated infra0 (the leader) to move the leadership".into());
        self.pause(Duration::from_millis(thread_rng().gen_range(2500..4000)))
            .await;
        madsim::net::NetSim::current().unclog_node(node);
        self.log("healed infra0".into());
        self.pause(Duration::from_secs(1)).await;
    }

    async fn remove_member(&mut self, i: usize, leader: u64) {
        let id = self.tracked[i].id;
        let name = self.tracked[i].name.clone();
        // Off the running set from now on: the watcher stops asking it, no call goes to it,
        // and its stop is expected (even while the call is retried after an unknown answer).
        self.tracked[i].gone = Some(Gone {
            note: REMOVED_NOTE,
            checker: "removed member",
            starts: u64::MAX,
        });
        self.refresh_watch();
        let (_, members) = self.change(Change::Remove(id)).await;
        self.tracked[i].listed = false;
        self.check_answer("the member remove answer", &members, None);
        let removed_at = Instant::now();
        let was_leader = id == leader;
        self.log(format!(
            "removed {name} ({id:x}){}",
            if was_leader { ", the leader" } else { "" }
        ));
        loop {
            if let Some(note) = self.cluster.exit_of(i) {
                if !note.contains(REMOVED_NOTE) {
                    self.fail(
                        "removed member",
                        format!("{name} ({id:x}) was removed and exited with {note:?}, not {REMOVED_NOTE:?}"),
                    );
                }
                break;
            }
            if removed_at.elapsed() > REMOVED_EXIT_BOUND {
                self.fail(
                    "removed member",
                    format!("{name} ({id:x}) still runs {REMOVED_EXIT_BOUND:?} after its removal"),
                );
            }
            self.pause(Duration::from_millis(50)).await;
        }
        let starts = self.cluster.members[i].starts.load(Ordering::Relaxed);
        self.tracked[i].gone.as_mut().unwrap().starts = starts;
        self.cluster.members[i].alive = false;
        self.log(format!(
            "{name} stopped {:?} after its removal",
            removed_at.elapsed()
        ));
        self.report.removed += 1;
        if was_leader {
            self.report.leaders_removed += 1;
        }
    }

    /// A guide member (not infra0) loses its data dir: crashed, its disk wiped, restarted
    /// with its original flags (`--initial-cluster-state new`): it must refuse to start.
    /// Then it is removed and added back as a new member on a fresh host and disk.
    async fn replace(&mut self) {
        // The cluster first gets back whoever is down (a wiped voter and a crashed one at once
        // would leave three voters without a quorum), and the network whole: a wiped member
        // learns it must not start from its peers, and one that reaches none cannot tell (as
        // in etcd; README, "Runtime reconfiguration").
        self.heal();
        for j in 0..self.tracked.len() {
            if self.tracked[j].down_until.is_some() {
                self.restart(j);
            }
        }
        let candidates: Vec<usize> = (1..self.tracked.len())
            .filter(|i| self.tracked[*i].guide && self.tracked[*i].running_voter())
            .collect();
        self.replaces_left = self.replaces_left.saturating_sub(1);
        if candidates.is_empty() {
            self.log("replace: no guide member left to wipe".into());
            return;
        }
        let i = candidates[thread_rng().gen_range(0..candidates.len())];
        let id = self.tracked[i].id;
        let name = self.tracked[i].name.clone();
        self.cluster.crash(i);
        let disk = self.cluster.members[i].disk.clone();
        disk.wipe();
        self.log(format!("crashed {name} ({id:x}) and wiped its disk"));
        disk.forbid_log_writes(format!(
            "[wiped member refused] {name} ({id:x}) lost its data dir and, restarted with its \
             original flags (--initial-cluster-state new), began a new raft log instead of \
             refusing to start with \"member {id:x} {REFUSED_NOTE}\"\nops: {:?}\nreplay: {}",
            self.report.log,
            replay_command(self.plan.name)
        ));
        self.tracked[i].gone = Some(Gone {
            note: REFUSED_NOTE,
            checker: "wiped member refused",
            starts: u64::MAX,
        });
        self.refresh_watch();
        self.pause(Duration::from_millis(thread_rng().gen_range(100..1500)))
            .await;
        self.inv.lock().unwrap().wiped(id);
        self.cluster.restart(i);
        let restarted_at = Instant::now();
        let note = loop {
            if let Some(note) = self.cluster.exit_of(i) {
                break note;
            }
            if restarted_at.elapsed() > REFUSAL_BOUND {
                self.fail(
                    "wiped member refused",
                    format!("{name} ({id:x}) lost its data dir and still runs {REFUSAL_BOUND:?} after its restart with its original flags"),
                );
            }
            self.pause(Duration::from_millis(50)).await;
        };
        if !note.contains(REFUSED_NOTE) {
            self.fail(
                "wiped member refused",
                format!("{name} ({id:x}) lost its data dir and exited with {note:?}, not {REFUSED_NOTE:?}"),
            );
        }
        let starts = self.cluster.members[i].starts.load(Ordering::Relaxed);
        self.tracked[i].gone.as_mut().unwrap().starts = starts;
        self.cluster.members[i].alive = false;
        self.report.wiped_refused += 1;
        self.log(format!("{name} refused to start: {note}"));

        let (_, members) = self.change(Change::Remove(id)).await;
        self.tracked[i].listed = false;
        self.check_answer("the member remove answer", &members, None);
        self.log(format!("removed the wiped {name} ({id:x})"));
        let learner = thread_rng().gen_bool(0.5);
        self.add_member(learner, Some(name)).await;
        self.report.replaced += 1;
    }

    /// Cuts a running member other than infra0 off the network for 0.5-4 s (one at a time):
    /// the leader half of the time it is not infra0, so elections and membership changes
    /// meet a leader that vanished without crashing.
    async fn isolate(&mut self) {
        self.heal();
        let leader = self.leader().await;
        let candidates: Vec<usize> = (1..self.tracked.len())
            .filter(|i| self.tracked[*i].running() && self.tracked[*i].listed)
            .collect();
        if candidates.is_empty() {
            self.log("isolate: no candidate".into());
            return;
        }
        let leading = candidates
            .iter()
            .copied()
            .find(|i| self.tracked[*i].id == leader);
        let i = match leading {
            Some(l) if thread_rng().gen_bool(0.5) => l,
            _ => candidates[thread_rng().gen_range(0..candidates.len())],
        };
        self.cluster.isolate(i);
        let down = Duration::from_millis(thread_rng().gen_range(500..4000));
        self.isolated_until = Some(Instant::now() + down);
        let name = self.tracked[i].name.clone();
        let was_leader = self.tracked[i].id == leader;
        self.log(format!(
            "isolated {name}{} for {down:?}",
            if was_leader { " (the leader)" } else { "" }
        ));
        self.report.isolations += 1;
        if was_leader {
            self.report.leaders_isolated += 1;
        }
    }

    /// Ends an isolation (every link back).
    fn heal(&mut self) {
        if self.isolated_until.take().is_some() {
            self.cluster.heal_all();
            self.log("healed the network".into());
        }
    }

    /// Crashes a running voter other than infra0 (power loss); it comes back 0.5-4 s later,
    /// while the next operations run. One member is down at a time.
    async fn crash(&mut self) {
        for j in 0..self.tracked.len() {
            if self.tracked[j].down_until.is_some() {
                self.restart(j);
            }
        }
        let candidates: Vec<usize> = (1..self.tracked.len())
            .filter(|i| self.tracked[*i].running_voter())
            .collect();
        if candidates.is_empty() {
            self.log("crash: no candidate".into());
            return;
        }
        let i = candidates[thread_rng().gen_range(0..candidates.len())];
        self.cluster.crash(i);
        let down = Duration::from_millis(thread_rng().gen_range(500..4000));
        self.tracked[i].down_until = Some(Instant::now() + down);
        self.refresh_watch();
        let name = self.tracked[i].name.clone();
        self.log(format!("crashed {name} for {down:?}"));
        self.report.crashes += 1;
    }

    /// `[removed member]` and `[wiped member refused]` at the end: each stopped member's last
    /// exit note is still the one it stopped with, and no process started on its host since.
    fn check_gone(&self) {
        for (i, t) in self.tracked.iter().enumerate() {
            let Some(g) = &t.gone else { continue };
            let note = self.cluster.exit_of(i);
            let starts = self.cluster.members[i].starts.load(Ordering::Relaxed);
            if starts != g.starts || !note.as_deref().is_some_and(|n| n.contains(g.note)) {
                self.fail(
                    g.checker,
                    format!(
                        "{} ({:x}) stopped for good with {:?}, but ran again: {starts} starts \
                         (was {}), exit note now {note:?}",
                        t.name, t.id, g.note, g.starts
                    ),
                );
            }
        }
    }

    /// `[configuration]`: every running member lists exactly the expected members (polled:
    /// a member may apply the last change a moment after the others).
    async fn check_configuration(&mut self) {
        let expected = self.expected();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut lists = Vec::new();
            for i in 0..self.tracked.len() {
                if !self.tracked[i].running() {
                    continue;
                }
                let who = format!("{} ({:x})", self.tracked[i].name, self.tracked[i].id);
                let list = self
                    .on_operator(member_list(self.client_url(i), false))
                    .await
                    .map(|l| l.iter().map(ListedMember::from_pb).collect());
                lists.push((who, list));
            }
            match checkers::configurations_agree(&expected, &lists) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "{e}\nops: {:?}\nreplay: {}",
                    self.report.log,
                    replay_command(self.plan.name)
                ),
                Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// `url`'s Status.
async fn status(url: String) -> Option<pb::StatusResponse> {
    let mut c = Client::connect(&url).await?;
    madsim::time::timeout(
        Duration::from_secs(1),
        c.maintenance.status(pb::StatusRequest {}),
    )
    .await
    .ok()?
    .ok()
    .map(|r| r.into_inner())
}

/// `url`'s member list (serializable unless `linearizable`).
async fn member_list(url: String, linearizable: bool) -> Option<Vec<pb::Member>> {
    let mut c = Client::connect(&url).await?;
    let r = madsim::time::timeout(
        Duration::from_secs(8),
        c.cluster
            .member_list(pb::MemberListRequest { linearizable }),
    )
    .await
    .ok()?
    .ok()?;
    Some(r.into_inner().members)
}
