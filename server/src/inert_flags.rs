//! etcd 3.4 and 3.5 server flags that detcd accepts without acting on them, so an etcd
//! command line (a unit file, a kubeadm manifest, a test rig) starts detcd unchanged.
//!
//! Each flag keeps etcd's name, value type (a value Go's flag package would refuse is refused
//! the same way, exit 2), default and `ETCD_*` variable. What happens when it is set to
//! something other than its default depends on why detcd does not act on it:
//! - [`Inert::NoEffect`]: it tunes a mechanism detcd does differently or does not have, and
//!   ignoring it loses nothing an operator relies on: one start-up warning names the flag and
//!   why.
//! - [`Inert::Refused`]: ignoring it would be unsafe or would silently change what the
//!   operator asked for (a separate client certificate, a host check, a bootstrap path): detcd refuses to
//!   start (exit 1) with the reason.
//! - [`Inert::AlwaysOn`]: detcd always behaves the way the flag asks; no warning.
//!
//! Flags are listed with etcd's `--help` texts (etcdmain/help.go of 3.4 and 3.5).

/// A value type of Go's flag package, as etcd declares the flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    Uint,
    Int,
    /// Go's `time.Duration` syntax (`5s`, `1h30m`).
    Duration,
    /// A `flag.Value` whose `Set` accepts only these (etcd's `flags.SelectiveStringValue`).
    Choice(&'static [&'static str]),
}

/// What detcd does with the flag when it is set to anything but its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inert {
    NoEffect(&'static str),
    Refused(&'static str),
    AlwaysOn(&'static str),
}

pub struct InertFlag {
    pub name: &'static str,
    pub heading: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// etcd's default, in the flag's own syntax.
    pub default: &'static str,
    pub inert: Inert,
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const SECURITY: &str = "Security";
const AUTH: &str = "Auth";
const PROFILING: &str = "Profiling";
const LOGGING: &str = "Logging";
const V2_PROXY: &str = "v2 Proxy (not supported)";
const EXPERIMENTAL: &str = "Experimental";

const NOT_BBOLT: &str = "detcd's data file is redb, committed once per raft batch; bbolt's \
                         batching and freelist settings do not apply";
const NO_AUTH: &str = "detcd has no authentication yet (its Auth service answers \
                       Unimplemented), so there is nothing for this to tune";
const NO_V2: &str =
    "detcd serves the v2 keys API with --enable-v2 and has no v2 store stages or v2-over-v3 mode";
const NO_TRACING: &str = "detcd has no OpenTelemetry tracing";
const NO_CORRUPT_CHECK: &str = "detcd does not compare its data with its peers' yet (etcd's \
                                corruption checks); the check is skipped";
const NO_V2_PROXY: &str = "etcd's v2 proxy mode is not supported (etcd 3.6 removed it too); \
                           `detcd gateway start` is the L4 proxy";

macro_rules! inert {
    ($name:expr, $heading:expr, $kind:expr, $default:expr, $inert:expr, $help:expr) => {
        InertFlag {
            name: $name,
            heading: $heading,
            help: $help,
            kind: $kind,
            default: $default,
            inert: $inert,
        }
    };
}

use Inert::{AlwaysOn, NoEffect, Refused};
use Kind::{Bool, Choice, Duration, Int, Text, Uint};

/// Every etcd 3.4/3.5 server flag detcd accepts but does not act on.
pub const INERT_FLAGS: &[InertFlag] = &[
    inert!("max-snapshots", MEMBER, Uint, "5",
        NoEffect("detcd keeps only its newest snapshot file"),
        "Maximum number of snapshot files to retain (0 is unlimited). [default: 5]"),
    inert!("max-wals", MEMBER, Uint, "5",
        NoEffect("detcd's raft log is one file, compacted in place after each snapshot"),
        "Maximum number of wal files to retain (0 is unlimited). [default: 5]"),
    inert!("backend-batch-interval", MEMBER, Duration, "0", NoEffect(NOT_BBOLT),
        "BackendBatchInterval is the maximum time before commit the backend transaction."),
    inert!("backend-batch-limit", MEMBER, Int, "0", NoEffect(NOT_BBOLT),
        "BackendBatchLimit is the maximum operations before commit the backend transaction."),
    inert!("backend-bbolt-freelist-type", MEMBER, Text, "map", NoEffect(NOT_BBOLT),
        "BackendFreelistType specifies the type of freelist that boltdb backend uses (array and map are supported types). [default: map]"),
    inert!("grpc-keepalive-min-time", MEMBER, Duration, "5s",
        NoEffect("detcd's HTTP/2 server does not police how often clients ping"),
        "Minimum duration interval that a client should wait before pinging server. [default: 5s]"),
    inert!("socket-reuse-port", MEMBER, Bool, "false",
        NoEffect("detcd's listeners do not set SO_REUSEPORT"),
        "Enable to set socket option SO_REUSEPORT on listeners allowing rebinding of a port already in use."),
    inert!("socket-reuse-address", MEMBER, Bool, "false",
        NoEffect("detcd's listeners do not set SO_REUSEADDR"),
        "Enable to set socket option SO_REUSEADDR on listeners allowing binding to an address in TIME_WAIT state."),
    inert!("raft-read-timeout", MEMBER, Duration, "5s",
        NoEffect("peer traffic is gRPC streams with their own keepalives, not etcd's rafthttp"),
        "Read timeout set on each rafthttp connection [default: 5s]"),
    inert!("raft-write-timeout", MEMBER, Duration, "5s",
        NoEffect("peer traffic is gRPC streams with their own keepalives, not etcd's rafthttp"),
        "Write timeout set on each rafthttp connection [default: 5s]"),
    inert!("unsafe-no-fsync", MEMBER, Bool, "false",
        NoEffect("detcd always syncs its raft log before acknowledging; durability is not traded for speed"),
        "Disables fsync, unsafe, will cause data loss."),
    inert!("initial-election-tick-advance", CLUSTERING, Bool, "true",
        NoEffect("detcd's first election waits one randomized election timeout"),
        "Whether to fast-forward initial election ticks on boot for faster election. [default: true]"),
    inert!("v2-deprecation", CLUSTERING, Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), "not-yet",
        NoEffect(NO_V2),
        "v2store deprecation stage: 'not-yet', 'write-only', 'write-only-drop-data', 'gone'. [default: not-yet]"),
    inert!("client-cert-file", SECURITY, Text, "",
        Refused("detcd presents --cert-file as its client certificate; a separate one is not supported yet"),
        "Path to an explicit peer client TLS cert file otherwise cert file will be used when client auth is required. (not supported yet)"),
    inert!("client-key-file", SECURITY, Text, "",
        Refused("detcd presents --key-file with its client certificate; a separate one is not supported yet"),
        "Path to an explicit peer client TLS key file otherwise key file will be used when client auth is required. (not supported yet)"),
    inert!("peer-client-cert-file", SECURITY, Text, "",
        Refused("detcd presents --peer-cert-file to its peers; a separate client certificate is not supported yet"),
        "Path to an explicit peer client TLS cert file otherwise peer cert file will be used when client auth is required. (not supported yet)"),
    inert!("peer-client-key-file", SECURITY, Text, "",
        Refused("detcd presents --peer-key-file to its peers; a separate client key is not supported yet"),
        "Path to an explicit peer client TLS key file otherwise peer key file will be used when client auth is required. (not supported yet)"),
    inert!("cors", SECURITY, Text, "*",
        NoEffect("detcd sends no CORS headers, so browsers refuse cross-origin requests"),
        "Comma-separated whitelist of origins for CORS, or cross-origin resource sharing, (empty or * means allow all). [default: *]"),
    inert!("host-whitelist", SECURITY, Text, "*",
        Refused("Host header checks are not built yet; starting without would accept every host name"),
        "Acceptable hostnames from HTTP client requests, if server is not secure (empty or * means allow all). (only * supported)"),
    inert!("auth-token", AUTH, Text, "simple", NoEffect(NO_AUTH),
        "Specify a v3 authentication token type and its options ('simple' or 'jwt'). [default: simple]"),
    inert!("bcrypt-cost", AUTH, Uint, "10", NoEffect(NO_AUTH),
        "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords. Valid values are between 4 and 31. [default: 10]"),
    inert!("auth-token-ttl", AUTH, Uint, "300", NoEffect(NO_AUTH),
        "Time (in seconds) of the auth-token-ttl. [default: 300]"),
    inert!("enable-pprof", PROFILING, Bool, "false",
        NoEffect("pprof profiles Go programs; detcd is written in Rust"),
        "Enable runtime profiling data via HTTP server. Address is at client URL + \"/debug/pprof/\""),
    inert!("log-package-levels", LOGGING, Text, "",
        NoEffect("capnslog's per-package levels do not apply; use --log-level"),
        "Specify a particular log level for each etcd package (eg: 'etcdmain=CRITICAL,etcdserver=DEBUG')."),
    inert!("enable-log-rotation", LOGGING, Bool, "false",
        NoEffect("detcd does not rotate its log file; use logrotate's copytruncate"),
        "Enable log rotation of a single log-outputs file target."),
    inert!("log-rotation-config-json", LOGGING, Text,
        "{\"maxsize\": 100, \"maxage\": 0, \"maxbackups\": 0, \"localtime\": false, \"compress\": false}",
        NoEffect("detcd does not rotate its log file; use logrotate's copytruncate"),
        "Configures log rotation if enabled with a JSON logger config."),
    inert!("proxy", V2_PROXY, Choice(&["off", "readonly", "on"]), "off", Refused(NO_V2_PROXY),
        "Proxy mode setting ('off', 'readonly' or 'on'). [default: off]"),
    inert!("proxy-failure-wait", V2_PROXY, Uint, "5000", NoEffect(NO_V2_PROXY),
        "Time (in milliseconds) an endpoint will be held in a failed state."),
    inert!("proxy-refresh-interval", V2_PROXY, Uint, "30000", NoEffect(NO_V2_PROXY),
        "Time (in milliseconds) of the endpoints refresh interval."),
    inert!("proxy-dial-timeout", V2_PROXY, Uint, "1000", NoEffect(NO_V2_PROXY),
        "Time (in milliseconds) for a dial to timeout."),
    inert!("proxy-write-timeout", V2_PROXY, Uint, "5000", NoEffect(NO_V2_PROXY),
        "Time (in milliseconds) for a write to timeout."),
    inert!("proxy-read-timeout", V2_PROXY, Uint, "0", NoEffect(NO_V2_PROXY),
        "Time (in milliseconds) for a read to timeout."),
    inert!("enable-grpc-gateway", EXPERIMENTAL, Bool, "true",
        NoEffect("detcd does not serve the /v3 JSON gateway yet"),
        "Enable GRPC gateway. [default: true]"),
    inert!("experimental-initial-corrupt-check", EXPERIMENTAL, Bool, "false", NoEffect(NO_CORRUPT_CHECK),
        "Enable to check data corruption before serving any client/peer traffic."),
    inert!("experimental-corrupt-check-time", EXPERIMENTAL, Duration, "0s", NoEffect(NO_CORRUPT_CHECK),
        "Duration of time between cluster corruption check passes."),
    inert!("experimental-compact-hash-check-enabled", EXPERIMENTAL, Bool, "false", NoEffect(NO_CORRUPT_CHECK),
        "Enable leader to periodically check followers compaction hashes."),
    inert!("experimental-compact-hash-check-time", EXPERIMENTAL, Duration, "1m", NoEffect(NO_CORRUPT_CHECK),
        "Duration of time between leader checks followers compaction hashes. [default: 1m]"),
    inert!("experimental-enable-v2v3", EXPERIMENTAL, Text, "", NoEffect(NO_V2),
        "Serve v2 requests through the v3 backend under a given prefix."),
    inert!("experimental-backend-bbolt-freelist-type", EXPERIMENTAL, Text, "array", NoEffect(NOT_BBOLT),
        "ExperimentalBackendFreelistType specifies the type of freelist that boltdb backend uses(array and map are supported types). [default: array]"),
    inert!("experimental-compaction-batch-limit", EXPERIMENTAL, Int, "1000",
        NoEffect("detcd does not split a compaction into batches"),
        "ExperimentalCompactionBatchLimit sets the maximum revisions deleted in each compaction batch. [default: 1000]"),
    inert!("experimental-compaction-sleep-interval", EXPERIMENTAL, Duration, "10ms",
        NoEffect("detcd does not split a compaction into batches"),
        "Sets the sleep interval between each compaction batch. [default: 10ms]"),
    inert!("experimental-warning-apply-duration", EXPERIMENTAL, Duration, "100ms",
        NoEffect("detcd warns about raft log writes, data file commits and driver steps over 100 ms"),
        "Time duration after which a warning is generated if request takes more time. [default: 100ms]"),
    inert!("experimental-enable-lease-checkpoint-persist", EXPERIMENTAL, Bool, "false",
        AlwaysOn("a checkpointed remaining TTL is stored with the lease and survives restarts"),
        "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases. (always on in detcd)"),
    inert!("experimental-enable-distributed-tracing", EXPERIMENTAL, Bool, "false", NoEffect(NO_TRACING),
        "Enable experimental distributed tracing using OpenTelemetry Tracing."),
    inert!("experimental-distributed-tracing-address", EXPERIMENTAL, Text, "localhost:4317", NoEffect(NO_TRACING),
        "Address for distributed tracing used for OpenTelemetry Tracing. [default: localhost:4317]"),
    inert!("experimental-distributed-tracing-service-name", EXPERIMENTAL, Text, "etcd", NoEffect(NO_TRACING),
        "Configures service name for distributed tracing to be used to define service name for OpenTelemetry Tracing. [default: etcd]"),
    inert!("experimental-distributed-tracing-instance-id", EXPERIMENTAL, Text, "", NoEffect(NO_TRACING),
        "Configures service instance ID for distributed tracing to be used to define service instance ID key for OpenTelemetry Tracing."),
    inert!("experimental-distributed-tracing-sampling-rate", EXPERIMENTAL, Int, "0", NoEffect(NO_TRACING),
        "Number of samples to collect per million spans for OpenTelemetry Tracing (if enabled with experimental-enable-distributed-tracing flag)."),
    inert!("experimental-downgrade-check-time", EXPERIMENTAL, Duration, "5s",
        NoEffect("detcd has no cluster downgrade"),
        "Duration of time between two downgrade status check. [default: 5s]"),
    inert!("experimental-memory-mlock", EXPERIMENTAL, Bool, "false",
        NoEffect("detcd does not lock its pages in memory"),
        "Enable to enforce etcd pages (in particular bbolt) to stay in RAM."),
    inert!("experimental-txn-mode-write-with-shared-buffer", EXPERIMENTAL, Bool, "true", NoEffect(NOT_BBOLT),
        "Enable the write transaction to use a shared buffer in its read operations. [default: true]"),
    inert!("experimental-stop-grpc-service-on-defrag", EXPERIMENTAL, Bool, "false",
        NoEffect("detcd keeps serving reads while it defragments (writes wait)"),
        "Enable etcd gRPC service to stop serving client requests on defragmentation."),
    inert!("experimental-bootstrap-defrag-threshold-megabytes", EXPERIMENTAL, Uint, "0",
        NoEffect("detcd defragments only when asked (etcdctl defrag)"),
        "Enable the defrag during etcd server bootstrap on condition that it will free at least the provided threshold of disk space. Needs to be set to non-zero value to take effect."),
];

/// The flag named `name`, if it is one of these.
pub fn find(name: &str) -> Option<&'static InertFlag> {
    INERT_FLAGS.iter().find(|f| f.name == name)
}
