//! `/metrics`: etcd's Prometheus metrics, with etcd's names, types, labels and HELP texts, in
//! Prometheus' text format (the `prometheus` crate's encoder, format 0.0.4 as etcd's Go client
//! writes it).
//!
//! One [`Metrics`] per member (the simulator runs several in one process), reached through
//! [`crate::node::Shared`]. What the metrics cost the member:
//! - counters and histograms updated where things happen are atomics (the WAL fsync and redb
//!   commit timings on the disk threads, peer bytes in the transport, gRPC calls in
//!   [`grpc_layer`]);
//! - everything that can be read off existing state is read only when scraped
//!   ([`Metrics::render`]): the raft status (copied under the mutex every response header
//!   already takes), the MVCC counts (the read lock every Range takes), the watch hub's counts.
//!
//! Only metrics whose value is real are exported; the README lists etcd's that are not.
//! Names come from etcd 3.4.23's source: etcdserver/metrics.go, etcdserver/api/etcdhttp/
//! metrics.go (health), mvcc/metrics.go, wal/metrics.go, mvcc/backend/metrics.go,
//! etcdserver/api/rafthttp/metrics.go, etcdserver/api/membership/metrics.go; gRPC's from
//! go-grpc-prometheus (server_metrics.go); 3.6's health check metrics from
//! server/etcdserver/api/etcdhttp/health.go.

use crate::node::Shared;
use detcd_core::ids::format_id;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, Mutex};

/// `--metrics`: `basic` (etcd's default) or `extensive` (adds gRPC handling-time histograms,
/// etcd's embed/etcd.go `grpc_prometheus.EnableHandlingTimeHistogram()`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level {
    #[default]
    Basic,
    Extensive,
}

/// A member's metrics registry and the handles of the metrics updated as things happen.
pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes: counters read off the raft status are brought up to date at scrape
    /// time ([`bump`]), which must not interleave.
    scrape: Mutex<()>,
    /// The data file's size on disk (a `stat`; what Maintenance.Status reports too).
    db_size: Arc<dyn Fn() -> u64 + Send + Sync>,

    // etcdserver/metrics.go
    has_leader: IntGauge,
    is_leader: IntGauge,
    is_learner: IntGauge,
    leader_changes: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    proposals_pending: IntGauge,
    proposals_failed: IntCounter,
    /// ReadIndex requests sent again, unanswered in time or lost to a leader change.
    slow_read_indexes: IntCounter,
    snapshot_apply_in_progress: IntGauge,
    /// Raft driver steps that applied entries and took longer than 100 ms (etcd's
    /// warnApplyDuration); see the README on how this differs from etcd's per-request count.
    pub slow_applies: IntCounter,
    // etcdhttp: /health's counters, and etcd 3.6's per-check results of /livez and /readyz.
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub healthcheck: IntGaugeVec,
    pub healthchecks_total: IntCounterVec,

    // wal/metrics.go, mvcc/backend/metrics.go
    /// Each fsync of the raft log file (one per group-committed batch).
    pub wal_fsync: Histogram,
    /// Bytes appended to the raft log file (a gauge in etcd, kept so).
    pub wal_write_bytes: IntGauge,
    /// Each commit of the data file (redb's durable commit: etcd's bbolt commit).
    pub backend_commit: Histogram,

    // mvcc/metrics.go (set when scraped)
    db_total_size: IntGauge,
    /// 3.4 exports the data file's size under this name too.
    db_total_size_debugging: IntGauge,
    /// The store's bytes as detcd counts them for the quota (Status's dbSizeInUse).
    db_total_size_in_use: IntGauge,
    keys_total: IntGauge,
    current_revision: IntGauge,
    compact_revision: IntGauge,
    watch_stream_total: IntGauge,
    watcher_total: IntGauge,
    slow_watcher_total: IntGauge,
    /// Put and DeleteRange operations applied (etcd exports each under both names in 3.4).
    put_total: [IntCounter; 2],
    delete_total: [IntCounter; 2],
    total_put_size: IntGauge,

    // lease/metrics.go
    lease_granted: IntCounter,
    lease_revoked: IntCounter,
    lease_renewed: IntCounter,

    // rafthttp/metrics.go
    /// Bytes of raft messages (and snapshot chunks) sent to each peer, `To` its ID.
    pub peer_sent_bytes: IntCounterVec,
    /// Bytes of raft messages (and snapshot chunks) received from each peer, `From` its ID.
    pub peer_received_bytes: IntCounterVec,
    /// 1 while the stream to a peer is up, `Local`/`Remote` the two IDs.
    pub active_peers: IntGaugeVec,

    /// go-grpc-prometheus' server metrics.
    pub grpc: GrpcMetrics,
}

/// go-grpc-prometheus' `grpc_server_*` metrics (label names sorted, as Go prints them).
pub struct GrpcMetrics {
    pub started: IntCounterVec,
    pub handled: IntCounterVec,
    pub msg_received: IntCounterVec,
    pub msg_sent: IntCounterVec,
    /// Only with `--metrics extensive`.
    pub handling_seconds: Option<HistogramVec>,
    /// etcd's own (v3rpc/metrics.go, counted in its codec): the bytes of the gRPC messages
    /// received from and sent to clients.
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
}

/// gRPC's status codes by number, with the names go-grpc-prometheus puts in `grpc_code`.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The gRPC methods the client port serves, (service, method, go-grpc-prometheus' type), from
/// core/proto's services: their series are created at zero at start, as go-grpc-prometheus'
/// InitializeMetrics does for every registered method.
pub const GRPC_METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
];

/// The go-grpc-prometheus type of a method: from [`GRPC_METHODS`], and for a method not there
/// (one a later change adds to a service) the streaming methods etcd has, else unary.
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    if let Some((_, _, t)) = GRPC_METHODS
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
    {
        return t;
    }
    match method {
        "Snapshot" => "server_stream",
        _ => "unary",
    }
}

fn opts(namespace: &str, subsystem: &str, name: &str, help: &str) -> Opts {
    Opts::new(name, help)
        .namespace(namespace)
        .subsystem(subsystem)
}

fn hist(namespace: &str, subsystem: &str, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace(namespace)
            .subsystem(subsystem)
            .buckets(buckets),
    )
    .expect("valid histogram")
}

/// Registers `c` and returns it (names are fixed here, so a failure is a bug).
fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// Brings a counter read off the raft status up to `value` (the status only grows).
fn bump(c: &IntCounter, value: u64) {
    c.inc_by(value.saturating_sub(c.get()));
}

impl Metrics {
    /// The metrics of member `member_id` at `level`; `db_size` gives the data file's size.
    /// Sets the constant ones (`etcd_server_id`, `etcd_server_version`,
    /// `etcd_cluster_version`) and creates the gRPC series at zero.
    pub fn new(
        member_id: u64,
        level: Level,
        db_size: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Metrics {
        let r = Registry::new();
        let gauge = |ns, sub, name, help| {
            reg(
                &r,
                IntGauge::with_opts(opts(ns, sub, name, help)).expect("gauge"),
            )
        };
        let counter = |ns, sub, name, help| {
            reg(
                &r,
                IntCounter::with_opts(opts(ns, sub, name, help)).expect("counter"),
            )
        };
        let counter_vec = |ns, sub, name, help, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(opts(ns, sub, name, help), labels).expect("counter vec"),
            )
        };
        let gauge_vec = |ns, sub, name, help, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(opts(ns, sub, name, help), labels).expect("gauge vec"),
            )
        };
        // etcd: ExponentialBuckets(0.001, 2, 14): 1 ms to 8.192 s.
        let disk_buckets = || exponential_buckets(0.001, 2.0, 14).expect("buckets");

        let server_id = gauge_vec(
            "etcd",
            "server",
            "id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &["server_id"],
        );
        server_id.with_label_values(&[&format_id(member_id)]).set(1);
        let version = gauge_vec(
            "etcd",
            "server",
            "version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &["server_version"],
        );
        version
            .with_label_values(&[crate::api::ETCD_VERSION])
            .set(1);
        let cluster_version = gauge_vec(
            "etcd",
            "cluster",
            "version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            &["cluster_version"],
        );
        cluster_version
            .with_label_values(&[detcd_core::CLUSTER_API_VERSION])
            .set(1);

        let grpc = GrpcMetrics::new(&r, level);
        #[cfg(not(madsim))]
        {
            // process_cpu_seconds_total, process_open_fds, process_max_fds,
            // process_resident_memory_bytes, process_virtual_memory_bytes, ... from /proc.
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }

        Metrics {
            has_leader: gauge(
                "etcd",
                "server",
                "has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd",
                "server",
                "is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                "etcd",
                "server",
                "is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                "etcd",
                "server",
                "leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                "etcd",
                "server",
                "proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                "etcd",
                "server",
                "proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                "etcd",
                "server",
                "proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                "etcd",
                "server",
                "proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            slow_read_indexes: counter(
                "etcd",
                "server",
                "slow_read_indexes_total",
                "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            ),
            snapshot_apply_in_progress: gauge(
                "etcd",
                "server",
                "snapshot_apply_in_progress_total",
                "1 if the server is applying the incoming snapshot. 0 if none.",
            ),
            slow_applies: counter(
                "etcd",
                "server",
                "slow_apply_total",
                "The total number of slow apply requests (likely overloaded from slow disk).",
            ),
            health_success: counter(
                "etcd",
                "server",
                "health_success",
                "The total number of successful health checks",
            ),
            health_failures: counter(
                "etcd",
                "server",
                "health_failures",
                "The total number of failed health checks",
            ),
            healthcheck: gauge_vec(
                "etcd",
                "server",
                "healthcheck",
                "The result of each kind of healthcheck.",
                &["name", "type"],
            ),
            healthchecks_total: counter_vec(
                "etcd",
                "server",
                "healthchecks_total",
                "The total number of each kind of healthcheck.",
                &["name", "status", "type"],
            ),
            wal_fsync: reg(
                &r,
                hist(
                    "etcd",
                    "disk",
                    "wal_fsync_duration_seconds",
                    "The latency distributions of fsync called by WAL.",
                    disk_buckets(),
                ),
            ),
            wal_write_bytes: gauge(
                "etcd",
                "disk",
                "wal_write_bytes_total",
                "Total number of bytes written in WAL.",
            ),
            backend_commit: reg(
                &r,
                hist(
                    "etcd",
                    "disk",
                    "backend_commit_duration_seconds",
                    "The latency distributions of commit called by backend.",
                    disk_buckets(),
                ),
            ),
            db_total_size: gauge(
                "etcd",
                "mvcc",
                "db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_debugging: gauge(
                "etcd_debugging",
                "mvcc",
                "db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_in_use: gauge(
                "etcd",
                "mvcc",
                "db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys_total: gauge(
                "etcd_debugging",
                "mvcc",
                "keys_total",
                "Total number of keys.",
            ),
            current_revision: gauge(
                "etcd_debugging",
                "mvcc",
                "current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                "etcd_debugging",
                "mvcc",
                "compact_revision",
                "The revision of the last compaction in store.",
            ),
            watch_stream_total: gauge(
                "etcd_debugging",
                "mvcc",
                "watch_stream_total",
                "Total number of watch streams.",
            ),
            watcher_total: gauge(
                "etcd_debugging",
                "mvcc",
                "watcher_total",
                "Total number of watchers.",
            ),
            slow_watcher_total: gauge(
                "etcd_debugging",
                "mvcc",
                "slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),
            put_total: ["etcd", "etcd_debugging"].map(|ns| {
                counter(
                    ns,
                    "mvcc",
                    "put_total",
                    "Total number of puts seen by this member.",
                )
            }),
            delete_total: ["etcd", "etcd_debugging"].map(|ns| {
                counter(
                    ns,
                    "mvcc",
                    "delete_total",
                    "Total number of deletes seen by this member.",
                )
            }),
            total_put_size: gauge(
                "etcd_debugging",
                "mvcc",
                "total_put_size_in_bytes",
                "The total size of put kv pairs seen by this member.",
            ),
            lease_granted: counter(
                "etcd_debugging",
                "lease",
                "granted_total",
                "The total number of granted leases.",
            ),
            lease_revoked: counter(
                "etcd_debugging",
                "lease",
                "revoked_total",
                "The total number of revoked leases.",
            ),
            lease_renewed: counter(
                "etcd_debugging",
                "lease",
                "renewed_total",
                "The number of renewed leases seen by the leader.",
            ),
            peer_sent_bytes: counter_vec(
                "etcd",
                "network",
                "peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                "etcd",
                "network",
                "peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            active_peers: gauge_vec(
                "etcd",
                "network",
                "active_peers",
                "The current number of active peer connections.",
                &["Local", "Remote"],
            ),
            grpc,
            registry: r,
            scrape: Mutex::new(()),
            db_size,
        }
    }

    /// Metrics for unit tests (basic level, no data file).
    pub fn for_tests(member_id: u64) -> Metrics {
        Metrics::new(member_id, Level::Basic, Arc::new(|| 0))
    }

    /// The text `/metrics` serves: everything read off `shared` brought up to date first.
    /// `etcd_server_quota_backend_bytes`: the space quota in force (etcd's quota.go sets it
    /// once at start; 0 when the quota is off).
    pub fn set_quota(&self, bytes: u64) {
        let g = IntGauge::with_opts(opts(
            "etcd",
            "server",
            "quota_backend_bytes",
            "Current backend storage quota size in bytes.",
        ))
        .expect("gauge");
        g.set(bytes as i64);
        let _ = self.registry.register(Box::new(g));
    }

    pub fn render(&self, shared: &Shared) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let st = shared.status();
        self.has_leader.set(i64::from(st.leader != 0));
        self.is_leader.set(i64::from(st.is_leader));
        self.is_learner.set(i64::from(st.is_learner));
        bump(&self.leader_changes, st.leader_changes);
        // etcd sets these from the raft commit and applied indexes (etcdserver/raft.go,
        // server.go): gauges despite their names.
        self.proposals_committed.set(st.commit as i64);
        self.proposals_applied.set(st.applied as i64);
        self.proposals_pending.set(st.proposals_pending as i64);
        bump(&self.proposals_failed, st.proposals_failed);
        bump(&self.slow_read_indexes, st.read_retries);
        self.snapshot_apply_in_progress
            .set(i64::from(st.installing_snapshot));
        let (keys, rev, compact, ops) = {
            let m = shared.mvcc.read().unwrap_or_else(|e| e.into_inner());
            (
                m.live_keys(),
                m.current_revision(),
                m.compact_revision(),
                m.op_counts(),
            )
        };
        for c in &self.put_total {
            bump(c, ops.puts);
        }
        for c in &self.delete_total {
            bump(c, ops.deletes);
        }
        self.total_put_size.set(ops.put_bytes as i64);
        let leases = shared
            .leases
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .counts();
        bump(&self.lease_granted, leases.granted);
        bump(&self.lease_revoked, leases.revoked);
        bump(&self.lease_renewed, leases.renewed);
        self.keys_total.set(keys as i64);
        self.current_revision.set(rev);
        self.compact_revision.set(compact);
        let (streams, watchers, unsynced) = shared.watch.counts();
        self.watch_stream_total.set(streams as i64);
        self.watcher_total.set(watchers as i64);
        self.slow_watcher_total.set(unsynced as i64);
        let db_size = (self.db_size)() as i64;
        self.db_total_size.set(db_size);
        self.db_total_size_debugging.set(db_size);
        self.db_total_size_in_use
            .set(shared.mvcc.read().unwrap().stored_bytes() as i64);
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }

    /// Records one `/livez` or `/readyz` check's outcome (etcd 3.6's recordMetrics).
    pub fn record_check(&self, check_type: &str, name: &str, ok: bool) {
        self.healthcheck
            .with_label_values(&[name, check_type])
            .set(i64::from(ok));
        let status = if ok { "success" } else { "error" };
        self.healthchecks_total
            .with_label_values(&[name, status, check_type])
            .inc();
    }

    /// The stream to peer `remote` came up or went down.
    pub fn set_peer_active(&self, local: u64, remote: u64, active: bool) {
        self.active_peers
            .with_label_values(&[&format_id(local), &format_id(remote)])
            .set(i64::from(active));
    }

    /// `bytes` sent to peer `to`.
    pub fn peer_sent(&self, to: u64, bytes: usize) {
        self.peer_sent_bytes
            .with_label_values(&[&format_id(to)])
            .inc_by(bytes as u64);
    }

    /// `bytes` received from peer `from`.
    pub fn peer_received(&self, from: u64, bytes: usize) {
        self.peer_received_bytes
            .with_label_values(&[&format_id(from)])
            .inc_by(bytes as u64);
    }
}

impl GrpcMetrics {
    fn new(r: &Registry, level: Level) -> GrpcMetrics {
        let vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("counter vec"),
            )
        };
        const CALL: &[&str] = &["grpc_method", "grpc_service", "grpc_type"];
        let bytes = |name: &str, help: &str| {
            reg(
                r,
                IntCounter::with_opts(opts("etcd", "network", name, help)).expect("counter"),
            )
        };
        let m = GrpcMetrics {
            received_bytes: bytes(
                "client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            sent_bytes: bytes(
                "client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            started: vec(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                CALL,
            ),
            handled: vec(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &["grpc_code", "grpc_method", "grpc_service", "grpc_type"],
            ),
            msg_received: vec(
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                CALL,
            ),
            msg_sent: vec(
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                CALL,
            ),
            handling_seconds: (level == Level::Extensive).then(|| {
                reg(
                    r,
                    HistogramVec::new(
                        HistogramOpts::new(
                            "grpc_server_handling_seconds",
                            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                        )
                        .buckets(prometheus::DEFAULT_BUCKETS.to_vec()),
                        CALL,
                    )
                    .expect("histogram vec"),
                )
            }),
        };
        for (service, method, t) in GRPC_METHODS {
            m.started.with_label_values(&[method, service, t]);
            for code in GRPC_CODES {
                m.handled.with_label_values(&[code, method, service, t]);
            }
            if let Some(h) = &m.handling_seconds {
                h.with_label_values(&[method, service, t]);
            }
        }
        m
    }
}

#[cfg(not(madsim))]
pub use grpc_layer::grpc_layer;

/// The gRPC side of the metrics, as go-grpc-prometheus' server interceptors count: a call is
/// started when its request arrives, each length-prefixed message read from the request
/// body is one received, each one written to the response body one sent, and the call is
/// handled with the `grpc-status` of its trailers (or of a trailers-only answer). A call
/// whose response body is dropped before its trailers (the client reset the stream or went
/// away: how an `etcdctl watch` ends) is handled as `Canceled`, the code grpc-go's server
/// gives a handler whose context the client canceled.
#[cfg(not(madsim))]
mod grpc_layer {
    use super::{grpc_type, Metrics, GRPC_CODES};
    use axum::body::{Body, Bytes};
    use axum::extract::{Request, State};
    use axum::middleware::Next;
    use axum::response::Response;
    use http_body::{Body as HttpBody, Frame, SizeHint};
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Instant;

    /// axum middleware (`axum::middleware::from_fn_with_state`) for the gRPC routes.
    pub async fn grpc_layer(
        State(metrics): State<Arc<Metrics>>,
        req: Request,
        next: Next,
    ) -> Response {
        let Some((service, method)) = call_name(req.uri().path()) else {
            return next.run(req).await;
        };
        let t = grpc_type(&service, &method);
        let labels = [method.as_str(), service.as_str(), t];
        let g = &metrics.grpc;
        g.started.with_label_values(&labels).inc();
        let call = Arc::new(Call {
            metrics: metrics.clone(),
            service,
            method,
            grpc_type: t,
            start: Instant::now(),
            handled: std::sync::atomic::AtomicBool::new(false),
        });
        let req = req.map(|b| {
            Body::new(Counted {
                inner: b,
                frames: FrameCounter::default(),
                call: call.clone(),
                sent: false,
            })
        });
        let resp = next.run(req).await;
        if let Some(code) = resp.headers().get("grpc-status") {
            // A trailers-only answer (an error before any message).
            call.handled(parse_code(code.as_bytes()));
        }
        resp.map(|b| {
            Body::new(Counted {
                inner: b,
                frames: FrameCounter::default(),
                call,
                sent: true,
            })
        })
    }

    /// `/pkg.Service/Method` -> (pkg.Service, Method).
    fn call_name(path: &str) -> Option<(String, String)> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some((service.to_string(), method.to_string()))
    }

    fn parse_code(v: &[u8]) -> &'static str {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .and_then(|n| GRPC_CODES.get(n).copied())
            .unwrap_or("Unknown")
    }

    /// One call in flight: handled once.
    struct Call {
        metrics: Arc<Metrics>,
        service: String,
        method: String,
        grpc_type: &'static str,
        start: Instant,
        handled: std::sync::atomic::AtomicBool,
    }

    impl Call {
        fn labels(&self) -> [&str; 3] {
            [self.method.as_str(), self.service.as_str(), self.grpc_type]
        }

        fn handled(&self, code: &str) {
            if self
                .handled
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            let [m, s, t] = self.labels();
            let g = &self.metrics.grpc;
            g.handled.with_label_values(&[code, m, s, t]).inc();
            if let Some(h) = &g.handling_seconds {
                h.with_label_values(&[m, s, t])
                    .observe(self.start.elapsed().as_secs_f64());
            }
        }

        fn messages(&self, sent: bool, n: u64, bytes: u64) {
            let g = &self.metrics.grpc;
            if bytes > 0 {
                let c = if sent {
                    &g.sent_bytes
                } else {
                    &g.received_bytes
                };
                c.inc_by(bytes);
            }
            if n == 0 {
                return;
            }
            let c = if sent { &g.msg_sent } else { &g.msg_received };
            c.with_label_values(&self.labels()).inc_by(n);
        }
    }

    /// Counts gRPC's length-prefixed messages (1 flag byte, 4 length bytes, the message)
    /// across a body's data frames.
    #[derive(Default)]
    struct FrameCounter {
        header: [u8; 5],
        header_len: usize,
        /// Message bytes still to skip.
        remaining: u64,
    }

    impl FrameCounter {
        /// Feeds a data frame; returns how many messages it completed, and the length of the
        /// messages whose prefix it read (etcd's codec counts message bytes).
        fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
            let (mut done, mut bytes) = (0, 0);
            loop {
                if self.remaining > 0 {
                    let n = (self.remaining as usize).min(data.len());
                    data = &data[n..];
                    self.remaining -= n as u64;
                    if self.remaining > 0 {
                        return (done, bytes);
                    }
                    done += 1;
                    continue;
                }
                if data.is_empty() {
                    return (done, bytes);
                }
                let n = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len < 5 {
                    return (done, bytes);
                }
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                bytes += u64::from(len);
                if len == 0 {
                    done += 1;
                } else {
                    self.remaining = u64::from(len);
                }
            }
        }
    }

    /// A request body (`sent` false) or response body (`sent` true) whose messages are
    /// counted; the response's trailers (or its drop before them) handle the call.
    struct Counted {
        inner: Body,
        frames: FrameCounter,
        call: Arc<Call>,
        sent: bool,
    }

    impl HttpBody for Counted {
        type Data = Bytes;
        type Error = axum::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
            let this = &mut *self;
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let (n, bytes) = this.frames.feed(data);
                        this.call.messages(this.sent, n, bytes);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        if this.sent {
                            let code = trailers
                                .get("grpc-status")
                                .map(|v| parse_code(v.as_bytes()))
                                .unwrap_or("Unknown");
                            this.call.handled(code);
                        }
                    }
                }
                Poll::Ready(None) if this.sent => this.call.handled("Unknown"),
                _ => {}
            }
            polled
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            if self.sent {
                // No trailers went out: the client went away first.
                self.call.handled("Canceled");
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_are_counted_across_frames() {
            let mut c = FrameCounter::default();
            let msg = |len: u32| {
                let mut v = vec![0u8];
                v.extend_from_slice(&len.to_be_bytes());
                v.extend(std::iter::repeat_n(7u8, len as usize));
                v
            };
            let mut all = msg(3);
            all.extend(msg(0));
            all.extend(msg(10));
            assert_eq!(c.feed(&all), (3, 13));
            // Split anywhere, byte by byte: the same count.
            let mut c = FrameCounter::default();
            let (n, bytes) = all
                .iter()
                .map(|b| c.feed(std::slice::from_ref(b)))
                .fold((0, 0), |a, x| (a.0 + x.0, a.1 + x.1));
            assert_eq!((n, bytes), (3, 13));
            assert_eq!(c.feed(&msg(5)[..4]), (0, 0));
        }

        #[test]
        fn call_names_and_codes() {
            assert_eq!(
                call_name("/etcdserverpb.KV/Put"),
                Some(("etcdserverpb.KV".into(), "Put".into()))
            );
            assert_eq!(call_name("/health"), None);
            assert_eq!(parse_code(b"1"), "Canceled");
            assert_eq!(parse_code(b"14"), "Unavailable");
            assert_eq!(parse_code(b"99"), "Unknown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_help_are_etcds() {
        let shared = Shared::for_tests();
        let text = shared.metrics.render(&shared);
        for line in [
            "# HELP etcd_server_has_leader Whether or not a leader exists. 1 is existence, 0 is not.",
            "# TYPE etcd_server_has_leader gauge",
            "# TYPE etcd_server_leader_changes_seen_total counter",
            "# TYPE etcd_server_proposals_committed_total gauge",
            "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
            "etcd_server_id{server_id=\"1\"} 1",
            "etcd_cluster_version{cluster_version=\"3.4\"} 1",
            "grpc_server_handled_total{grpc_code=\"Canceled\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0",
            "etcd_debugging_mvcc_keys_total 0",
            "etcd_debugging_mvcc_compact_revision -1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("grpc_server_handling_seconds"),
            "basic level"
        );
        let extensive = Metrics::new(1, Level::Extensive, Arc::new(|| 0));
        assert!(extensive
            .render(&shared)
            .contains("# TYPE grpc_server_handling_seconds histogram"));
    }
}
