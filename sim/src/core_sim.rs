//! The core-only simulator: N `detcd_core::server::Server`s wired by an in-memory network
//! and in-memory disks, driven by a discrete-event loop. No async runtime, no madsim: a run
//! of 20 simulated seconds takes milliseconds, so thousands of seeds fit in a minute.
//!
//! The network drops, delays (so reorders), duplicates and partitions messages; a disk
//! ([`SimDisk`]) loses what was not synced on a crash. Every fault the run was asked for is
//! counted, and [`CoreRun::check`] fails a run whose faults did not happen. Client operations
//! are recorded in a [`History`] and checked with the same checkers as the madsim suite
//! (`crate::checkers`).
//!
//! Everything random comes from one seeded generator, so a run is a function of its seed.

use crate::checkers::{self, Observation};
use crate::disk::SimDisk;
use crate::history::{History, Op, OpId, Outcome, Output as HOutput};
use detcd_core::proto::detcdpb::{internal_request::Request, MemberAttributes};
use detcd_core::proto::etcdserverpb as pb;
use detcd_core::raft_log::RaftLog;
use detcd_core::server::{Mutations, Output, RequestError, Server, ServerConfig};
use detcd_core::state::{self, KvState, Owned, PendingCommit};
use detcd_core::wal::LogFile;
use detcd_net::snapshot_files::{MemSnapshots, SnapshotFiles};
use raft::prelude::{Message, MessageType};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::io::{Read, Write};
use std::sync::Arc;

/// A small deterministic generator (xorshift64*); the simulator's only randomness.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.range(0, 1000) < per_mille
    }
}

/// The faults a run injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Messages dropped, per mille.
    pub drop_per_mille: u64,
    /// Messages delivered twice, per mille.
    pub duplicate_per_mille: u64,
    /// Message delay range in ms (reordering comes from the spread).
    pub max_delay_ms: u64,
    /// Crash (power loss) and restart members.
    pub crashes: bool,
    /// Cut a member off from the others for a while.
    pub partitions: bool,
    /// Aim partitions and crashes at the current leader.
    pub target_leader: bool,
    /// Crash a member just after it cast a vote, and restart it at once (the window in
    /// which a member that forgot its vote would vote again in the same term).
    pub crash_after_vote: bool,
    /// Every member draws the same election timeouts, so candidates collide and votes split.
    pub colliding_elections: bool,
    /// Cut the leader off once, at this time (ms) for this long (ms).
    pub isolate_leader_once: Option<(u64, u64)>,
    /// Now and then ask the leader to hand leadership to another member (Maintenance's
    /// MoveLeader); an answer of success must come only once the target leads.
    pub leader_moves: bool,
}

impl Faults {
    /// A mix drawn from the seed.
    pub fn swarm(rng: &mut Rng) -> Faults {
        Faults {
            drop_per_mille: [0, 20, 100][rng.range(0, 3) as usize],
            duplicate_per_mille: [0, 20][rng.range(0, 2) as usize],
            max_delay_ms: [2, 10, 40][rng.range(0, 3) as usize],
            crashes: rng.chance(500),
            partitions: rng.chance(500),
            target_leader: rng.chance(500),
            crash_after_vote: rng.chance(300),
            colliding_elections: rng.chance(200),
            isolate_leader_once: None,
            leader_moves: false,
        }
    }
}

/// What a run is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub members: usize,
    /// Simulated time with faults and clients, in ms; then everything heals.
    pub duration_ms: u64,
    pub faults: Faults,
    pub clients: usize,
    pub snapshot_count: u64,
    /// Bugs planted in member 0 (or every member, for the read context and the vote).
    pub mutations: Mutations,
    /// A bug planted in the simulated transport: a snapshot message it drops is not
    /// reported to raft (the leader then waits for that snapshot forever).
    pub drop_snapshot_unreported: bool,
    /// A bug planted in the simulated network: it never duplicates, whatever the plan says
    /// (the `[faults]` checker must notice).
    pub never_duplicate: bool,
    /// A client gives up on an operation after this long (its outcome is then unknown).
    pub client_timeout_ms: u64,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        Plan {
            seed,
            members: 3,
            duration_ms: 10_000,
            faults: Faults::default(),
            clients: 4,
            snapshot_count: 50,
            mutations: Mutations::default(),
            drop_snapshot_unreported: false,
            never_duplicate: false,
            client_timeout_ms: CLIENT_TIMEOUT_MS,
        }
    }
}

const HEARTBEAT_MS: u64 = 100;
const ELECTION_TICKS: usize = 10;
const KEYS: [&str; 3] = ["a", "b", "c"];
/// A client gives up on an operation after this long (its outcome is then unknown).
const CLIENT_TIMEOUT_MS: u64 = 3000;
/// Events handled per run at most (a bound on the loop).
const MAX_EVENTS: usize = 5_000_000;

#[derive(Debug)]
enum Event {
    Tick(usize),
    Deliver(usize, Message),
    /// The member's disk finished its oldest job (of that incarnation).
    DiskDone(usize, u64),
    ClientOp(usize),
    ClientTimeout(usize, u64),
    Crash(usize),
    /// Crash exactly this member (not redirected to the leader).
    CrashVoter(usize),
    Restart(usize),
    Isolate(usize),
    IsolateLeader,
    /// Ask the leader to move leadership to another member (drawn from this number).
    MoveLeader(usize),
    Heal,
}

enum DiskJob {
    Append {
        number: u64,
        records: Vec<u8>,
        sync: bool,
        then_send: Vec<Message>,
    },
    Replace(Vec<u8>),
    Commit(Box<PendingCommit>),
    BuildSnapshot(Box<state::SnapshotSource>),
    InstallSnapshot(Box<state::SnapshotInstall>),
}

struct Member {
    id: u64,
    disk: SimDisk,
    server: Option<Server<Owned>>,
    incarnation: u64,
    jobs: std::collections::VecDeque<DiskJob>,
    log: Option<Box<dyn LogFile>>,
    /// Client operations waiting for this member: request id -> (client, op id, key, op).
    waiting: BTreeMap<u64, (usize, OpId, String, Op)>,
    /// (term, vote) last seen, to notice a new vote.
    last_vote: (u64, u64),
    /// Snapshot files: built here, or received beside a MsgSnapshot; production's in-memory
    /// store (synced when committed, so a crash keeps them).
    snapshot_files: MemSnapshots,
}

struct Client {
    /// The operation in flight: (member, request id, op id); at most one per client.
    busy: Option<(usize, u64, OpId)>,
    seq: u64,
}

/// A finished run: what happened and the evidence for the checkers.
pub struct CoreRun {
    pub plan: Plan,
    pub history: History,
    pub observations: Vec<Observation>,
    /// (member id, revision, KV hash) of each member after healing.
    pub final_states: Vec<(u64, i64, u64)>,
    /// Faults that happened, by name.
    pub faults_seen: BTreeMap<&'static str, u64>,
    pub fatal: Option<String>,
    pub events: usize,
    /// Members ever cut off by a partition.
    pub isolated_ever: BTreeSet<u64>,
    /// The member each operation was sent to.
    pub op_members: BTreeMap<OpId, u64>,
    /// ReadIndex batches sent again, over every member's last incarnation.
    pub read_retries: u64,
}

pub struct CoreSim {
    plan: Plan,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    members: Vec<Member>,
    clients: Vec<Client>,
    isolated: BTreeSet<usize>,
    healed: bool,
    history: History,
    observations: Vec<Observation>,
    faults_seen: BTreeMap<&'static str, u64>,
    fatal: Option<String>,
    /// The last value a put of each key was answered for (what a CAS expects).
    last_put: BTreeMap<String, String>,
    /// Members ever cut off, and the member each operation was sent to.
    isolated_ever: BTreeSet<u64>,
    op_members: BTreeMap<OpId, u64>,
    /// MoveLeader requests in flight: (member, incarnation, request id) -> target ID.
    leader_moves: BTreeMap<(usize, u64, u64), u64>,
}

fn member_id(i: usize) -> u64 {
    0x1000 + i as u64
}

impl CoreSim {
    pub fn new(plan: Plan) -> CoreSim {
        let ids: Vec<(u64, Vec<String>)> = (0..plan.members)
            .map(|i| (member_id(i), vec![format!("http://10.0.1.{}:2380", 10 + i)]))
            .collect();
        let members = (0..plan.members)
            .map(|i| {
                let disk = SimDisk::new();
                let db = redb::Builder::new()
                    .create_with_backend(disk.open())
                    .expect("a new in-memory data file");
                let mut log = disk.open_log();
                state::initialize_new_member(&db, &mut log, 0xc1, ids[i].0, &ids)
                    .expect("initializing a member on a fresh disk");
                Member {
                    id: ids[i].0,
                    disk,
                    server: None,
                    incarnation: 0,
                    jobs: Default::default(),
                    log: None,
                    waiting: BTreeMap::new(),
                    last_vote: (0, 0),
                    snapshot_files: MemSnapshots::default(),
                }
            })
            .collect();
        let clients = (0..plan.clients)
            .map(|_| Client { busy: None, seq: 0 })
            .collect();
        let rng = Rng::new(plan.seed);
        let mut sim = CoreSim {
            plan,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            members,
            clients,
            isolated: BTreeSet::new(),
            healed: false,
            history: History::new(),
            observations: Vec::new(),
            faults_seen: BTreeMap::new(),
            fatal: None,
            last_put: BTreeMap::new(),
            isolated_ever: BTreeSet::new(),
            op_members: BTreeMap::new(),
            leader_moves: BTreeMap::new(),
        };
        for i in 0..sim.members.len() {
            sim.start(i, false);
        }
        for c in 0..sim.clients.len() {
            let at = sim.rng.range(500, 1500);
            sim.schedule(at, Event::ClientOp(c));
        }
        sim.plan_faults();
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Event) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((self.now + delay, self.seq, self.events.len() - 1)));
    }

    fn saw(&mut self, fault: &'static str) {
        *self.faults_seen.entry(fault).or_default() += 1;
    }

    fn start(&mut self, i: usize, restarted: bool) {
        let m = &mut self.members[i];
        m.incarnation += 1;
        let db = Arc::new(
            redb::Builder::new()
                .create_with_backend(m.disk.open())
                .expect("reopening the data file"),
        );
        let mut log_file = m.disk.open_log();
        let log = RaftLog::load(&db, &mut log_file).expect("loading the raft log");
        let views = Owned::new(state::load_views(&db).expect("loading the state machine"));
        let applied = state::read_applied(&db).expect("reading the applied index");
        let mut cfg = ServerConfig::new(
            m.id,
            ELECTION_TICKS,
            MemberAttributes {
                member_id: m.id,
                name: format!("infra{i}"),
                client_urls: vec![format!("http://10.0.1.{}:2379", 10 + i)],
            },
        );
        cfg.snapshot_count = self.plan.snapshot_count;
        cfg.catch_up_entries = 20;
        cfg.start_unix_ms = self.now + 1_000_000 * m.incarnation;
        cfg.election_seed = if self.plan.faults.colliding_elections {
            self.plan.seed
        } else {
            self.plan.seed ^ (m.id << 16) ^ m.incarnation
        };
        cfg.mutations.reuse_read_context = self.plan.mutations.reuse_read_context;
        cfg.mutations.forget_vote = self.plan.mutations.forget_vote;
        if i == 0 {
            cfg.mutations.skip_apply_at = self.plan.mutations.skip_apply_at;
        }
        let logger = detcd_core::raft_logger::raft_logger();
        let server = Server::new(
            cfg,
            log,
            KvState::new(db, views, applied),
            restarted,
            &logger,
        )
        .expect("starting the server");
        m.server = Some(server);
        m.log = Some(Box::new(log_file));
        m.jobs.clear();
        let first_tick = self.rng.range(1, HEARTBEAT_MS);
        self.schedule(first_tick, Event::Tick(i));
    }

    fn crash(&mut self, i: usize) {
        let m = &mut self.members[i];
        if m.server.is_none() {
            return;
        }
        m.server = None;
        m.jobs.clear();
        m.log = None;
        m.disk.crash();
        for (_, (client, op, _, _)) in std::mem::take(&mut m.waiting) {
            self.history.complete(op, Outcome::Unknown, self.now);
            self.clients[client].busy = None;
        }
    }

    fn plan_faults(&mut self) {
        let d = self.plan.duration_ms;
        let f = self.plan.faults.clone();
        let mut t = 2000;
        while t + 2000 < d {
            if f.crashes && self.rng.chance(500) {
                let victim = self.rng.range(0, self.plan.members as u64) as usize;
                self.schedule(t, Event::Crash(victim));
                let down = self.rng.range(200, 2000);
                self.schedule(t + down, Event::Restart(victim));
            }
            if f.leader_moves {
                let drawn = self.rng.range(0, 1000) as usize;
                self.schedule(t + 1000, Event::MoveLeader(drawn));
            }
            if f.partitions && self.rng.chance(500) {
                let victim = self.rng.range(0, self.plan.members as u64) as usize;
                self.schedule(t + 500, Event::Isolate(victim));
                let dur = self.rng.range(500, 3000);
                self.schedule(t + 500 + dur, Event::Heal);
            }
            t += self.rng.range(1500, 3000);
        }
        if let Some((at, dur)) = f.isolate_leader_once {
            self.schedule(at, Event::IsolateLeader);
            self.schedule(at + dur, Event::Heal);
        }
        self.schedule(d, Event::Heal);
    }

    fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.server.as_ref().is_some_and(|s| s.status().is_leader))
    }

    fn victim(&mut self, drawn: usize) -> usize {
        if self.plan.faults.target_leader {
            if let Some(l) = self.leader() {
                self.saw("fault aimed at the leader");
                return l;
            }
        }
        drawn
    }

    /// Runs the plan, heals, lets the cluster settle, and collects the evidence.
    pub fn run(mut self) -> CoreRun {
        let settle_until = self.plan.duration_ms + 6000;
        let mut handled = 0;
        while let Some(Reverse((at, _, slot))) = self.queue.pop() {
            if at > settle_until || self.fatal.is_some() || handled >= MAX_EVENTS {
                break;
            }
            self.now = at;
            handled += 1;
            let ev = self.events[slot].take().expect("each event is taken once");
            self.handle(ev);
            self.observe();
        }
        let installed: u64 = self
            .members
            .iter()
            .filter_map(|m| m.server.as_ref())
            .map(|s| s.status().snapshots_installed)
            .sum();
        if installed > 0 {
            self.faults_seen.insert("snapshot installed", installed);
        }
        let read_retries = self
            .members
            .iter()
            .filter_map(|m| m.server.as_ref())
            .map(|s| s.status().read_retries)
            .sum();
        let final_states = self
            .members
            .iter()
            .filter_map(|m| {
                let s = m.server.as_ref()?;
                let (rev, hash) = checkers::kv_hash(s.state());
                Some((m.id, rev, hash))
            })
            .collect();
        CoreRun {
            plan: self.plan,
            history: self.history,
            observations: self.observations,
            final_states,
            faults_seen: self.faults_seen,
            fatal: self.fatal,
            events: handled,
            isolated_ever: self.isolated_ever,
            op_members: self.op_members,
            read_retries,
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Tick(i) => {
                if self.members[i].server.is_some() {
                    self.with_server(i, |s| s.handle_tick());
                    self.schedule(HEARTBEAT_MS, Event::Tick(i));
                }
            }
            Event::Deliver(to, msg) => {
                if self.members[to].server.is_some() {
                    self.with_server(to, |s| s.handle_messages(vec![msg]));
                }
            }
            Event::DiskDone(i, incarnation) => self.disk_done(i, incarnation),
            Event::ClientOp(c) => self.client_op(c),
            Event::ClientTimeout(c, seq) => {
                if self.clients[c].seq == seq {
                    if let Some((m, req, op)) = self.clients[c].busy.take() {
                        self.members[m].waiting.remove(&req);
                        self.history.complete(op, Outcome::Unknown, self.now);
                        self.schedule(1, Event::ClientOp(c));
                    }
                }
            }
            Event::Crash(drawn) => {
                if !self.healed {
                    let i = self.victim(drawn);
                    if self.members[i].server.is_some() {
                        self.saw("crash");
                        self.crash(i);
                    }
                }
            }
            Event::CrashVoter(i) => {
                if !self.healed && self.members[i].server.is_some() {
                    self.saw("crash after vote");
                    self.crash(i);
                }
            }
            Event::Restart(i) => {
                if self.members[i].server.is_none() {
                    self.saw("restart");
                    self.start(i, true);
                }
            }
            Event::Isolate(drawn) => {
                if !self.healed && self.isolated.is_empty() {
                    let i = self.victim(drawn);
                    self.saw("partition");
                    self.isolated.insert(i);
                    self.isolated_ever.insert(self.members[i].id);
                }
            }
            Event::IsolateLeader => {
                if let Some(l) = self.leader() {
                    self.saw("fault aimed at the leader");
                    self.saw("partition");
                    self.isolated.insert(l);
                    self.isolated_ever.insert(self.members[l].id);
                }
            }
            Event::MoveLeader(drawn) => {
                if let (false, Some(l)) = (self.healed, self.leader()) {
                    let others: Vec<usize> = (0..self.members.len()).filter(|i| *i != l).collect();
                    let target = self.members[others[drawn % others.len()]].id;
                    self.saw("leadership transfer asked");
                    let incarnation = self.members[l].incarnation;
                    let server = self.members[l].server.as_mut().expect("the leader runs");
                    match server.handle_move_leader(target) {
                        Ok(id) => {
                            self.leader_moves.insert((l, incarnation, id), target);
                        }
                        Err(e) => self.fatal = Some(format!("member {l} stopped: {e}")),
                    }
                    self.carry_out(l);
                }
            }
            Event::Heal => {
                self.isolated.clear();
                if self.now >= self.plan.duration_ms {
                    self.healed = true;
                    for i in 0..self.members.len() {
                        if self.members[i].server.is_none() {
                            self.start(i, true);
                        }
                    }
                }
            }
        }
    }

    /// Feeds the server an input and carries out its outputs.
    fn with_server(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Server<Owned>) -> Result<(), state::Fatal>,
    ) {
        let server = self.members[i].server.as_mut().expect("a running member");
        if let Err(e) = f(server) {
            self.fatal = Some(format!("member {i} stopped: {e}"));
            return;
        }
        self.carry_out(i);
    }

    fn carry_out(&mut self, i: usize) {
        while let Some(out) = self.members[i]
            .server
            .as_mut()
            .and_then(|s| s.poll_output())
        {
            match out {
                Output::Send(mut msgs) => {
                    // raft-rs walks its peers in hash-map order: fix an order so the draws
                    // below depend on the seed only.
                    msgs.sort_by_key(|m| m.to);
                    for m in msgs {
                        self.send(i, m);
                    }
                }
                Output::AppendLog {
                    number,
                    records,
                    sync,
                    then_send,
                } => self.queue_disk(
                    i,
                    DiskJob::Append {
                        number,
                        records,
                        sync,
                        then_send,
                    },
                ),
                Output::ReplaceLog { image } => self.queue_disk(i, DiskJob::Replace(image)),
                Output::Commit(c) => self.queue_disk(i, DiskJob::Commit(c)),
                Output::BuildSnapshot(source) => self.queue_disk(i, DiskJob::BuildSnapshot(source)),
                Output::InstallSnapshot(install) => {
                    self.queue_disk(i, DiskJob::InstallSnapshot(install))
                }
                // This harness never asks for a defragmentation.
                Output::Defragment(_) => panic!("a defragmentation nobody asked for"),
                Output::StateCopy { .. } => panic!("a copy of the state nobody asked for"),
                Output::Response { id, result } => {
                    let key = (i, self.members[i].incarnation, id);
                    match self.leader_moves.remove(&key) {
                        Some(target) => self.leader_moved(i, target, result),
                        None => self.respond(i, id, result),
                    }
                }
                Output::ReadReady { id, result } => self.read_ready(i, id, result),
                // The in-memory network routes by member ID, and this harness makes no
                // membership changes: the member list never changes here.
                Output::MembershipChanged(_) => {}
                // Watch is the executor's; the madsim suite checks it end to end.
                Output::Events(_) | Output::StoreReplaced(_) | Output::V2Fired(_) => {}
                Output::Removed => {
                    self.fatal = Some(format!("member {i} was removed, but no change was asked"))
                }
            }
        }
    }

    fn queue_disk(&mut self, i: usize, job: DiskJob) {
        let m = &mut self.members[i];
        m.jobs.push_back(job);
        let delay = self.rng.range(1, 4);
        let incarnation = self.members[i].incarnation;
        self.schedule(delay, Event::DiskDone(i, incarnation));
    }

    fn disk_done(&mut self, i: usize, incarnation: u64) {
        let m = &mut self.members[i];
        if m.incarnation != incarnation || m.server.is_none() {
            return;
        }
        let Some(job) = m.jobs.pop_front() else {
            return;
        };
        let log = m.log.as_mut().expect("a running member has its log");
        let result = match job {
            DiskJob::Append {
                number,
                records,
                sync,
                then_send,
            } => {
                let written = log
                    .append(&records)
                    .and_then(|_| if sync { log.sync() } else { Ok(()) });
                if written.is_ok() {
                    // Durable: what waited for it goes out (sorted, as in carry_out).
                    let mut msgs = then_send;
                    msgs.sort_by_key(|m| m.to);
                    for m in msgs {
                        self.send(i, m);
                    }
                }
                written.map(|_| Some(number)).map_err(|e| e.to_string())
            }
            DiskJob::Replace(image) => log.replace(&image).map(|_| None).map_err(|e| e.to_string()),
            DiskJob::InstallSnapshot(install) => {
                // The transport stored the file before raft saw the message.
                let index = install.snap.get_metadata().index;
                let files = &self.members[i].snapshot_files;
                let installed = match files.open(index) {
                    Ok(f) => install.run(f),
                    Err(e) => Err(state::Fatal(format!("snapshot file {index}: {e}"))),
                };
                if installed.is_ok() {
                    files.remove(index); // as the executor does: the data file holds it now
                }
                self.with_server(i, |s| {
                    // What etcd_server_snapshot_apply_in_progress_total reports.
                    assert!(s.status().installing_snapshot, "an install in flight");
                    s.handle_snapshot_installed(installed)
                });
                return;
            }
            DiskJob::BuildSnapshot(source) => {
                self.saw("snapshot built");
                let index = source.index;
                let files = &self.members[i].snapshot_files;
                let built = source
                    .write_to(Vec::new())
                    .and_then(|(bytes, file)| store_file(files, index, &bytes).map(|_| file));
                self.with_server(i, |s| s.handle_snapshot_built(built));
                return;
            }
            DiskJob::Commit(c) => match c.txn.commit() {
                Ok(()) => {
                    self.with_server(i, |s| s.handle_committed(c.applied));
                    return;
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match result {
            Ok(Some(number)) => self.with_server(i, |s| s.handle_persisted(number)),
            Ok(None) => {}
            Err(e) => self.fatal = Some(format!("member {i} disk failed: {e}")),
        }
    }

    fn send(&mut self, from: usize, msg: Message) {
        let Some(to) = self.members.iter().position(|m| m.id == msg.to) else {
            return;
        };
        let (drop, dup, max_delay) = {
            let f = &self.plan.faults;
            (
                f.drop_per_mille,
                f.duplicate_per_mille,
                f.max_delay_ms.max(1),
            )
        };
        let cut = self.isolated.contains(&from) || self.isolated.contains(&to);
        let dropped = cut || (!self.healed && self.rng.chance(drop));
        let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        if is_snapshot && self.plan.drop_snapshot_unreported && !self.healed {
            self.saw("snapshot dropped unreported");
            return;
        }
        if dropped {
            self.saw("message dropped");
            if is_snapshot {
                // The transport reports a snapshot it could not deliver (or the follower
                // would wait for it forever).
                self.saw("snapshot lost");
                self.with_server(from, |s| {
                    s.handle_snapshot_status(msg.to, false);
                    Ok(())
                });
            }
            return;
        }
        if is_snapshot {
            // The file travels before the message (the transport's Peer.Snapshot call), and
            // the send is reported only once it is stored at the receiver.
            let index = msg.get_snapshot().get_metadata().index;
            let mut bytes = Vec::new();
            let sent = self.members[from]
                .snapshot_files
                .open(index)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .is_ok();
            let stored =
                sent && store_file(&self.members[to].snapshot_files, index, &bytes).is_ok();
            if !stored {
                self.saw("snapshot lost");
                self.with_server(from, |s| {
                    s.handle_snapshot_status(msg.to, false);
                    Ok(())
                });
                return;
            }
            self.saw("snapshot sent");
            self.with_server(from, |s| {
                s.handle_snapshot_status(msg.to, true);
                Ok(())
            });
        }
        // A forwarded proposal is not idempotent in raft (nor in etcd): duplicating one
        // applies the write twice. detcd's transport (gRPC streams) never duplicates; the
        // other messages are duplicated to exercise raft's own handling.
        if !self.healed
            && msg.get_msg_type() != MessageType::MsgPropose
            && self.rng.chance(dup)
            && !self.plan.never_duplicate
        {
            self.saw("message duplicated");
            let delay = self.rng.range(1, max_delay + 1);
            self.schedule(delay, Event::Deliver(to, msg.clone()));
        }
        let delay = self.rng.range(1, max_delay + 1);
        self.schedule(delay, Event::Deliver(to, msg));
    }

    // ---- clients ----

    fn client_op(&mut self, c: usize) {
        if self.now >= self.plan.duration_ms || self.clients[c].busy.is_some() {
            return;
        }
        let alive: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].server.is_some())
            .collect();
        if alive.is_empty() {
            self.schedule(100, Event::ClientOp(c));
            return;
        }
        let m = alive[self.rng.range(0, alive.len() as u64) as usize];
        let key = KEYS[self.rng.range(0, KEYS.len() as u64) as usize].to_string();
        self.clients[c].seq += 1;
        let seq = self.clients[c].seq;
        let value = format!("c{c}-{seq}");
        let (op, req) = match self.rng.range(0, 10) {
            0..=3 => (Op::Get, None),
            4..=6 => (
                Op::Put {
                    value: value.clone(),
                },
                Some(Request::Put(pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.into_bytes(),
                    ..Default::default()
                })),
            ),
            7 => (
                Op::Delete,
                Some(Request::DeleteRange(pb::DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })),
            ),
            _ => {
                let expect = self.last_put.get(&key).cloned();
                let req = cas_request(&key, expect.as_deref(), &value);
                (
                    Op::Cas {
                        expect,
                        value: value.clone(),
                    },
                    Some(Request::Txn(req)),
                )
            }
        };
        let op_id = self
            .history
            .invoke(c as u32, key.clone(), op.clone(), self.now);
        let server = self.members[m].server.as_mut().unwrap();
        let ids = match req {
            Some(r) => server.handle_proposals(vec![r]),
            None => server.handle_reads(1),
        };
        let id = match ids {
            Ok(ids) => ids[0],
            Err(e) => {
                self.fatal = Some(format!("member {m} stopped: {e}"));
                return;
            }
        };
        self.op_members.insert(op_id, self.members[m].id);
        self.members[m].waiting.insert(id, (c, op_id, key, op));
        self.clients[c].busy = Some((m, id, op_id));
        self.schedule(self.plan.client_timeout_ms, Event::ClientTimeout(c, seq));
        self.carry_out(m);
    }

    fn finish(&mut self, i: usize, id: u64, outcome: Outcome, revision: Option<i64>) {
        let Some((c, op, key, kind)) = self.members[i].waiting.remove(&id) else {
            return;
        };
        if let (Op::Put { value }, Outcome::Ok(_)) = (&kind, &outcome) {
            self.last_put.insert(key, value.clone());
        }
        self.history.complete(op, outcome, self.now);
        if let Some(rev) = revision {
            self.observations.push(Observation::Revision {
                op,
                member: self.members[i].id,
                revision: rev,
            });
        }
        self.clients[c].busy = None;
        let think = self.rng.range(1, 50);
        self.schedule(think, Event::ClientOp(c));
    }

    /// A MoveLeader's answer: success only once its target leads, as this member sees it.
    fn leader_moved(
        &mut self,
        i: usize,
        target: u64,
        result: Result<state::Applied, RequestError>,
    ) {
        match result {
            Ok(state::Applied::LeaderMoved) => {
                let leader = self.members[i].server.as_ref().map(|s| s.status().leader);
                if leader != Some(target) {
                    self.fatal = Some(format!(
                        "member {i} answered MoveLeader to {target:x} while it saw {leader:x?} lead"
                    ));
                }
                self.saw("leadership moved");
            }
            Ok(other) => self.fatal = Some(format!("MoveLeader answered with {other:?}")),
            Err(_) => self.saw("leadership transfer failed"),
        }
    }

    fn respond(&mut self, i: usize, id: u64, result: Result<state::Applied, RequestError>) {
        let Some((_, _, _, op)) = self.members[i].waiting.get(&id).cloned() else {
            return;
        };
        let (outcome, rev) = match result {
            Ok(state::Applied::Put(r)) => (Outcome::Ok(HOutput::Put), header_rev(&r.header)),
            Ok(state::Applied::DeleteRange(r)) => (
                Outcome::Ok(HOutput::Delete {
                    deleted: r.deleted > 0,
                }),
                header_rev(&r.header),
            ),
            Ok(state::Applied::Txn(r)) => (
                Outcome::Ok(HOutput::Cas {
                    succeeded: r.succeeded,
                }),
                header_rev(&r.header),
            ),
            Ok(other) => panic!("unexpected apply result {other:?} for {op:?}"),
            // Never proposed: it did not happen.
            Err(
                RequestError::NoLeader | RequestError::TooManyRequests | RequestError::NotLeader(_),
            ) => (Outcome::Failed, None),
            Err(RequestError::Refused(_)) => (Outcome::Failed, None),
            Err(RequestError::LeaderChanged | RequestError::TimedOut { .. }) => {
                (Outcome::Unknown, None)
            }
        };
        self.finish(i, id, outcome, rev);
    }

    fn read_ready(&mut self, i: usize, id: u64, result: Result<(), RequestError>) {
        let Some((_, _, key, _)) = self.members[i].waiting.get(&id).cloned() else {
            return;
        };
        if result.is_err() {
            return self.finish(i, id, Outcome::Failed, None);
        }
        let state = self.members[i].server.as_ref().unwrap().state();
        let (value, rev) = checkers::read_key(state, &key);
        self.finish(i, id, Outcome::Ok(HOutput::Get(value)), Some(rev));
    }

    /// Samples every running member's status for the per-term leader check, and crashes a
    /// member that just voted when the plan says so.
    fn observe(&mut self) {
        let mut voted = Vec::new();
        for (i, m) in self.members.iter_mut().enumerate() {
            if let Some(s) = &m.server {
                let st = s.status();
                if st.is_leader {
                    self.observations.push(Observation::Leader {
                        term: st.term,
                        member: m.id,
                    });
                }
                let vote = (st.term, st.vote);
                if st.vote != 0 && st.vote != m.id && vote != m.last_vote {
                    voted.push(i);
                }
                m.last_vote = vote;
            }
        }
        if self.plan.faults.crash_after_vote && !self.healed {
            for i in voted {
                if self.rng.chance(700) {
                    // After the vote is durable and its answer sent (the disk takes 1-3 ms).
                    self.schedule(5, Event::CrashVoter(i));
                    let back = self.rng.range(6, 20);
                    self.schedule(back, Event::Restart(i));
                }
            }
        }
    }
}

fn header_rev(h: &Option<pb::ResponseHeader>) -> Option<i64> {
    h.as_ref().map(|h| h.revision)
}

/// A txn that sets `key` to `value` if its value is `expect` (absent when None).
fn cas_request(key: &str, expect: Option<&str>, value: &str) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match expect {
        Some(v) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(v.as_bytes().to_vec())),
            ..Default::default()
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        },
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    }
}

impl CoreRun {
    /// Every checker over the run; Err names the first checker that failed and its evidence.
    pub fn check(&self) -> Result<(), String> {
        match self.failures().into_iter().next() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// What every checker found wrong, each message starting with the checker's name.
    pub fn failures(&self) -> Vec<String> {
        if let Some(f) = &self.fatal {
            return vec![format!("[member stopped] {f}")];
        }
        let history = self.history.snapshot();
        [
            checkers::one_leader_per_term(&self.observations),
            checkers::linearizable(&history),
            checkers::revisions_never_go_back(&history, &self.observations),
            checkers::replicas_converge(&self.final_states, self.plan.members),
            self.faults_happened(),
        ]
        .into_iter()
        .filter_map(Result::err)
        .collect()
    }

    /// A run that asked for faults must have seen them.
    fn faults_happened(&self) -> Result<(), String> {
        let f = &self.plan.faults;
        let seen = |k: &str| self.faults_seen.get(k).copied().unwrap_or(0);
        let mut missing = Vec::new();
        if f.drop_per_mille > 0 && seen("message dropped") == 0 {
            missing.push("message dropped");
        }
        // MoveLeader requests need a leader at the moment they are drawn, and a move needs
        // its target up: under crashes a seed may see neither. The scenario asserts both
        // across its seeds (sim/tests/core_cluster.rs leadership_moves_under_faults).
        if f.duplicate_per_mille > 0 && seen("message duplicated") == 0 {
            missing.push("message duplicated");
        }
        if f.target_leader
            && (f.crashes || f.partitions)
            && (seen("crash") + seen("partition")) > 0
            && seen("fault aimed at the leader") == 0
        {
            missing.push("fault aimed at the leader");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("[faults] planned but never happened: {missing:?}"))
        }
    }
}

/// Writes and commits a snapshot file, as the executor and the receiving transport do.
fn store_file(files: &MemSnapshots, index: u64, bytes: &[u8]) -> Result<(), state::Fatal> {
    let mut w = files
        .create(index)
        .map_err(|e| state::Fatal::new("creating a snapshot file", e))?;
    w.write_all(bytes)
        .and_then(|_| w.commit())
        .map_err(|e| state::Fatal::new("writing a snapshot file", e))
}
