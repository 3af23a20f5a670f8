//! etcd's command line: the same flag names, defaults, `ETCD_*` environment variables and
//! error messages, so the clustering guide's commands run with `detcd` in place of `etcd`.
//!
//! Pure: arguments and environment come in as parameters, warnings go out as strings.
//! Like Go's `flag` package, a flag takes `--flag value`, `--flag=value`, `-flag value` or
//! `-flag=value`, and a repeated flag keeps its last value.

use clap::parser::ValueSource;
use clap::{error::ContextKind, error::ContextValue, error::ErrorKind, Arg, ArgAction, Command};
use detcd_core::config::{
    self, default_data_dir, initial_cluster_from_name, parse_initial_cluster, parse_urls,
    AutoCompaction, ClusterState, Config, Logger, LOG_LEVELS,
};
use detcd_core::tls::{parse_cipher_suites, TlsInfo, TlsVersion};

use crate::inert_flags::{self, Inert, Kind};

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once per process
pub enum Cli {
    /// Start a member with this configuration.
    Run(Config),
    /// `--version`: print `version_text()` and exit 0.
    Version,
    /// `-h` / `--help`: print this text and exit 0.
    Help(String),
    /// `detcd bench ...`: the arguments after `bench`, untouched.
    Bench(Vec<String>),
    /// `detcd gateway ...`: the arguments after `gateway`, untouched (see gateway.rs).
    Gateway(Vec<String>),
}

/// A command line or environment etcd would refuse; [`CliError::exit_code`] says how the
/// process exits. Flag names in messages are Go's (`-name`), as etcd prints them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("flag provided but not defined: -{0}")]
    UnknownFlag(String),
    #[error("'{0}' is not a valid flag")]
    NotAFlag(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A malformed value given on the command line.
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    InvalidFlagValue {
        flag: String,
        value: String,
        reason: String,
    },
    /// A malformed value given in the environment.
    #[error("invalid value {value:?} for {var}: {reason}")]
    InvalidEnvValue {
        var: String,
        value: String,
        reason: String,
    },
    /// A malformed value in the `--config-file`.
    #[error("invalid value {value:?} for {key} in the config file: {reason}")]
    InvalidFileValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "conflicting environment variable {0:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
    )]
    EnvShadowed(String),
    #[error("--advertise-client-urls is required when --listen-client-urls is set explicitly")]
    AdvertiseClientUrlsRequired,
    #[error("{0}")]
    Invalid(#[from] config::ConfigError),
    #[error("{0}")]
    Tls(#[from] detcd_core::tls::TlsError),
    /// A flag etcd has whose mechanism detcd lacks, set where ignoring it would be unsafe.
    #[error("--{flag}={value} is not supported: {reason}")]
    NotSupported {
        flag: String,
        value: String,
        reason: String,
    },
    /// `--config-file` could not be read or is not etcd's YAML configuration.
    #[error("{0}")]
    ConfigFile(String),
    /// Anything else the argument parser refused.
    #[error("{0}")]
    Other(String),
}

/// Flags whose values etcd checks after its flag package has parsed them (plain strings
/// there): a bad one exits 1. Every other flag's value is parsed by Go's flag package
/// (numbers, booleans, durations, URL lists, choices), which exits 2.
const CHECKED_AFTER_PARSING: &[&str] = &[
    "initial-cluster",
    "log-level",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
    "logger",
    "log-outputs",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "discovery-srv-resolver",
];

impl CliError {
    /// etcd's exit status: 2 for what Go's flag package refuses (an unknown flag, a missing
    /// argument, a value its type cannot parse), after printing the error and the usage;
    /// 1 for everything checked later (environment variables, combinations, files).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::UnknownFlag(_) | CliError::MissingValue(_) => 2,
            CliError::InvalidFlagValue { flag, .. }
                if !CHECKED_AFTER_PARSING.contains(&flag.as_str()) =>
            {
                2
            }
            _ => 1,
        }
    }
}

struct FlagSpec {
    name: &'static str,
    heading: &'static str,
    help: &'static str,
}

const MEMBER: &str = "Member";
const CLUSTERING: &str = "Clustering";
const LOGGING: &str = "Logging";
const SECURITY: &str = "Security";

/// Every value flag, in the order and under the headings of etcd's `--help`. Adding a flag here
/// gives it its `ETCD_*` variable; reading it is `build_config`'s job.
const FLAGS: &[FlagSpec] = &[
    FlagSpec { name: "name", heading: MEMBER, help: "Human-readable name for this member. [default: default]" },
    FlagSpec {
        name: "config-file",
        heading: MEMBER,
        help: "Path to the server configuration file (etcd's YAML). Note that if a configuration file is provided, other command line flags and environment variables will be ignored.",
    },
    FlagSpec { name: "data-dir", heading: MEMBER, help: "Path to the data directory. [default: ${name}.etcd]" },
    FlagSpec { name: "wal-dir", heading: MEMBER, help: "Path to the dedicated wal directory (detcd keeps its raft log file there)." },
    FlagSpec {
        name: "snapshot-count",
        heading: MEMBER,
        help: "Number of committed transactions to trigger a snapshot to disk. [default: 100000]",
    },
    FlagSpec {
        name: "heartbeat-interval",
        heading: MEMBER,
        help: "Time (in milliseconds) of a heartbeat interval. [default: 100]",
    },
    FlagSpec {
        name: "election-timeout",
        heading: MEMBER,
        help: "Time (in milliseconds) for an election to timeout. See tuning documentation for details. [default: 1000]",
    },
    FlagSpec {
        name: "listen-peer-urls",
        heading: MEMBER,
        help: "List of URLs to listen on for peer traffic. [default: http://localhost:2380]",
    },
    FlagSpec {
        name: "listen-client-urls",
        heading: MEMBER,
        help: "List of URLs to listen on for client traffic. [default: http://localhost:2379]",
    },
    FlagSpec {
        name: "max-txn-ops",
        heading: MEMBER,
        help: "Maximum number of operations permitted in a transaction. [default: 128]",
    },
    FlagSpec {
        name: "max-concurrent-streams",
        heading: MEMBER,
        help: "Maximum concurrent streams that each client can open at a time. [default: 4294967295]",
    },
    FlagSpec {
        name: "grpc-keepalive-interval",
        heading: MEMBER,
        help: "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable). [default: 2h]",
    },
    FlagSpec {
        name: "grpc-keepalive-timeout",
        heading: MEMBER,
        help: "Additional duration of wait before closing a non-responsive connection (0 to disable). [default: 20s]",
    },
    FlagSpec {
        name: "max-request-bytes",
        heading: MEMBER,
        help: "Maximum client request size in bytes the server will accept. [default: 1572864]",
    },
    FlagSpec {
        name: "quota-backend-bytes",
        heading: MEMBER,
        help: "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota). [default: 0]",
    },
    FlagSpec {
        name: "max-learners",
        heading: CLUSTERING,
        help: "Sets the maximum number of learners that can be available in the cluster membership. [default: 1]",
    },
    FlagSpec {
        name: "auto-compaction-retention",
        heading: CLUSTERING,
        help: "Auto compaction retention length. 0 means disable auto compaction. [default: 0]",
    },
    FlagSpec {
        name: "auto-compaction-mode",
        heading: CLUSTERING,
        help: "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention. [default: periodic]",
    },
    FlagSpec {
        name: "experimental-snapshot-catchup-entries",
        heading: CLUSTERING,
        help: "Number of entries for a slow follower to catch up after compacting the raft storage entries. [default: 5000]",
    },
    FlagSpec {
        name: "experimental-watch-progress-notify-interval",
        heading: CLUSTERING,
        help: "Duration of periodic watch progress notifications. [default: 10m0s]",
    },
    FlagSpec {
        name: "feature-gates",
        heading: CLUSTERING,
        help: "A set of key=value pairs that describe server level feature gates for alpha/experimental features. Options are:\n               AutoPromoteLearners=true|false (ALPHA - default=false): the leader promotes a learner once it is in sync (detcd only)",
    },
    FlagSpec {
        name: "initial-advertise-peer-urls",
        heading: CLUSTERING,
        help: "List of this member's peer URLs to advertise to the rest of the cluster. [default: http://localhost:2380]",
    },
    FlagSpec {
        name: "initial-cluster",
        heading: CLUSTERING,
        help: "Initial cluster configuration for bootstrapping. [default: ${name}=<each --initial-advertise-peer-urls>]",
    },
    FlagSpec {
        name: "initial-cluster-state",
        heading: CLUSTERING,
        help: "Initial cluster state ('new' or 'existing'). [default: new]",
    },
    FlagSpec {
        name: "initial-cluster-token",
        heading: CLUSTERING,
        help: "Initial cluster token for the etcd cluster during bootstrap.\n\
               Specifying this can protect you from unintended cross-cluster interaction when running multiple clusters. [default: etcd-cluster]",
    },
    // etcd discovery (see discovery_flags).
    FlagSpec {
        name: "discovery",
        heading: CLUSTERING,
        help: "Discovery URL used to bootstrap the cluster.",
    },
    FlagSpec {
        name: "discovery-fallback",
        heading: CLUSTERING,
        help: "Expected behavior ('exit' or 'proxy') when discovery services fails.\n\
               \"proxy\" supports v2 API only. [default: proxy]",
    },
    FlagSpec {
        name: "discovery-proxy",
        heading: CLUSTERING,
        help: "HTTP proxy to use for traffic to discovery service.",
    },
    // etcd 3.6's v3 discovery (see discovery_flags; help texts are etcd 3.6's).
    FlagSpec {
        name: "discovery-token",
        heading: CLUSTERING,
        help: "V3 discovery: discovery token for the etcd cluster to be bootstrapped.",
    },
    FlagSpec {
        name: "discovery-endpoints",
        heading: CLUSTERING,
        help: "V3 discovery: List of gRPC endpoints of the discovery service.",
    },
    FlagSpec {
        name: "discovery-dial-timeout",
        heading: CLUSTERING,
        help: "V3 discovery: dial timeout for client connections. [default: 2s]",
    },
    FlagSpec {
        name: "discovery-request-timeout",
        heading: CLUSTERING,
        help: "V3 discovery: timeout for discovery requests (excluding dial timeout). [default: 5s]",
    },
    FlagSpec {
        name: "discovery-keepalive-time",
        heading: CLUSTERING,
        help: "V3 discovery: keepalive time for client connections. [default: 2s]",
    },
    FlagSpec {
        name: "discovery-keepalive-timeout",
        heading: CLUSTERING,
        help: "V3 discovery: keepalive timeout for client connections. [default: 6s]",
    },
    FlagSpec {
        name: "discovery-cert",
        heading: CLUSTERING,
        help: "V3 discovery: identify secure client using this TLS certificate file.",
    },
    FlagSpec {
        name: "discovery-key",
        heading: CLUSTERING,
        help: "V3 discovery: identify secure client using this TLS key file.",
    },
    FlagSpec {
        name: "discovery-cacert",
        heading: CLUSTERING,
        help: "V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle.",
    },
    FlagSpec {
        name: "discovery-user",
        heading: CLUSTERING,
        help: "V3 discovery: username[:password] for authentication (prompt if password is not supplied). \
               (not supported: detcd has no authentication yet; setting it stops the start)",
    },
    FlagSpec {
        name: "discovery-password",
        heading: CLUSTERING,
        help: "V3 discovery: password for authentication (if this option is used, --user option shouldn't include password). \
               (not supported: detcd has no authentication yet; setting it stops the start)",
    },
    // DNS SRV discovery (see srv_flags).
    FlagSpec {
        name: "discovery-srv",
        heading: CLUSTERING,
        help: "DNS srv domain used to bootstrap the cluster.",
    },
    FlagSpec {
        name: "discovery-srv-name",
        heading: CLUSTERING,
        help: "Suffix to the dns srv name queried when bootstrapping.",
    },
    FlagSpec {
        name: "discovery-srv-resolver",
        heading: CLUSTERING,
        help: "detcd only (not an etcd flag): the DNS server (ip:port, or ip for port 53) that \
               --discovery-srv's SRV records and every host name of the member (advertised and \
               peer URLs) are resolved through, for split-horizon DNS and tests. [default: the \
               system resolver configuration, /etc/resolv.conf]",
    },
    FlagSpec {
        name: "advertise-client-urls",
        heading: CLUSTERING,
        help: "List of this member's client URLs to advertise to the public.\n\
               The client URLs advertised should be accessible to machines that talk to etcd cluster. \
               etcd client libraries parse these URLs to connect to the cluster. [default: http://localhost:2379]",
    },
    FlagSpec { name: "cert-file", heading: SECURITY, help: "Path to the client server TLS cert file." },
    FlagSpec { name: "key-file", heading: SECURITY, help: "Path to the client server TLS key file." },
    FlagSpec { name: "trusted-ca-file", heading: SECURITY, help: "Path to the client server TLS trusted CA cert file." },
    FlagSpec { name: "peer-cert-file", heading: SECURITY, help: "Path to the peer server TLS cert file." },
    FlagSpec { name: "peer-key-file", heading: SECURITY, help: "Path to the peer server TLS key file." },
    FlagSpec { name: "peer-trusted-ca-file", heading: SECURITY, help: "Path to the peer server TLS trusted CA file." },
    FlagSpec {
        name: "peer-cert-allowed-cn",
        heading: SECURITY,
        help: "Allowed CN for inter peer authentication.",
    },
    FlagSpec {
        name: "client-crl-file",
        heading: SECURITY,
        help: "Path to the client certificate revocation list file.",
    },
    FlagSpec {
        name: "client-cert-allowed-hostname",
        heading: SECURITY,
        help: "Allowed TLS hostname for client cert authentication.",
    },
    FlagSpec {
        name: "peer-crl-file",
        heading: SECURITY,
        help: "Path to the peer certificate revocation list file.",
    },
    FlagSpec {
        name: "peer-cert-allowed-hostname",
        heading: SECURITY,
        help: "Allowed TLS hostname for inter peer authentication.",
    },
    FlagSpec {
        name: "tls-min-version",
        heading: SECURITY,
        help: "Minimum TLS version supported by etcd. Possible values: TLS1.2, TLS1.3. [default: TLS1.2]",
    },
    FlagSpec {
        name: "tls-max-version",
        heading: SECURITY,
        help: "Maximum TLS version supported by etcd. Possible values: TLS1.2, TLS1.3 (empty defers to Go).",
    },
    FlagSpec {
        name: "cipher-suites",
        heading: SECURITY,
        help: "Comma-separated list of supported TLS cipher suites between client/server and peers (empty will be auto-populated by Go).",
    },
    FlagSpec {
        name: "self-signed-cert-validity",
        heading: SECURITY,
        help: "The validity period of the client and peer certificates that are automatically generated by etcd when you specify ClientAutoTLS and PeerAutoTLS, the unit is year, and the default is 1.",
    },
    FlagSpec {
        name: "logger",
        heading: LOGGING,
        help: "Specify 'zap' for structured logging (JSON lines) or 'capnslog' (text lines). [default: capnslog]",
    },
    FlagSpec {
        name: "log-outputs",
        heading: LOGGING,
        help: "Specify 'stdout' or 'stderr', or a comma-separated list of output targets (file paths; zap only for more than one). [default: default (stderr)]",
    },
    FlagSpec {
        name: "listen-metrics-urls",
        heading: "Profiling and Monitoring",
        help: "List of URLs to listen on for the metrics and health endpoints.",
    },
    FlagSpec {
        name: "metrics",
        heading: "Profiling and Monitoring",
        help: "Set level of detail for exported metrics, specify 'extensive' to include server side grpc histogram metrics. [default: basic]",
    },
    FlagSpec {
        name: "log-level",
        heading: LOGGING,
        help: "Configures log level. Only supports debug, info, warn, error, panic, or fatal. [default: info]",
    },
];

/// Boolean flags (Go's `--flag`, `--flag=true`, `--flag=false`); they also get `ETCD_*` variables.
const BOOL_FLAGS: &[FlagSpec] = &[
    FlagSpec {
        name: "force-new-cluster",
        heading: CLUSTERING,
        help: "Force to create a new one member cluster.",
    },
    FlagSpec {
        name: "strict-reconfig-check",
        heading: CLUSTERING,
        help: "Reject reconfiguration requests that would cause quorum loss. [default: true]",
    },
    FlagSpec {
        name: "enable-v2",
        heading: CLUSTERING,
        help: "Accept etcd V2 client requests: the v2 keys API (what etcd discovery uses) and a discovery service's /new?size=N.",
    },
    FlagSpec {
        name: "pre-vote",
        heading: CLUSTERING,
        help: "Enable to run an additional Raft election phase. [default: true, as etcd 3.5; etcd 3.4's was false]",
    },
    FlagSpec {
        name: "debug",
        heading: LOGGING,
        help: "Enable debug-level logging for etcd. Use '--log-level=debug' instead.",
    },
    FlagSpec {
        name: "discovery-insecure-transport",
        heading: CLUSTERING,
        help: "V3 discovery: disable transport security for client connections. [default: true]",
    },
    FlagSpec {
        name: "discovery-insecure-skip-tls-verify",
        heading: CLUSTERING,
        help: "V3 discovery: skip server certificate verification (CAUTION: this option should be enabled only for testing purposes).",
    },
    FlagSpec {
        name: "experimental-enable-lease-checkpoint",
        heading: CLUSTERING,
        help: "Enable to persist lease remaining TTL to prevent indefinite auto-renewal of long lived leases.",
    },
    FlagSpec { name: "client-cert-auth", heading: SECURITY, help: "Enable client cert authentication." },
    FlagSpec { name: "auto-tls", heading: SECURITY, help: "Client TLS using generated certificates." },
    FlagSpec { name: "peer-client-cert-auth", heading: SECURITY, help: "Enable peer client cert authentication." },
    FlagSpec { name: "peer-auto-tls", heading: SECURITY, help: "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided." },
    FlagSpec {
        name: "experimental-peer-skip-client-san-verification",
        heading: SECURITY,
        help: "Skip verification of SAN field in client certificate for peer connections.",
    },
];

const USAGE: &str = "\
Usage:

  detcd [flags]
    Start a detcd server.

  detcd --version
    Show the version of detcd.

  detcd -h | --help
    Show the help information about detcd.

  detcd bench [flags]
    Run the load generator against a cluster.

  detcd gateway start [flags]
    Run etcd's L4 gateway (detcd gateway start --help for its flags).
";

/// `ETCD_` + the flag name upper-cased with `-` turned into `_`.
pub fn flag_to_env(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

fn command() -> Command {
    let mut cmd = Command::new("detcd")
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .next_line_help(true)
        .help_template(format!("{USAGE}{{all-args}}\n"));
    for f in FLAGS {
        cmd = cmd.arg(
            Arg::new(f.name)
                .long(f.name)
                .value_name(f.name)
                .num_args(1)
                .allow_hyphen_values(true)
                .action(ArgAction::Set)
                .help_heading(f.heading)
                .help(f.help),
        );
    }
    for f in BOOL_FLAGS {
        cmd = cmd.arg(
            Arg::new(f.name)
                .long(f.name)
                .value_name("bool")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .action(ArgAction::Set)
                .help_heading(f.heading)
                .help(f.help),
        );
    }
    for f in crate::inert_flags::INERT_FLAGS {
        let arg = Arg::new(f.name)
            .long(f.name)
            .action(ArgAction::Set)
            .help_heading(f.heading)
            .help(f.help);
        cmd = cmd.arg(if f.kind == Kind::Bool {
            arg.value_name("bool")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
        } else {
            arg.value_name(f.name).num_args(1).allow_hyphen_values(true)
        });
    }
    cmd.arg(
        Arg::new("version")
            .long("version")
            .value_name("bool")
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .action(ArgAction::Set)
            .help_heading("Other")
            .help("Print the version and exit."),
    )
    .arg(
        Arg::new("help")
            .short('h')
            .long("help")
            .action(ArgAction::SetTrue)
            .help_heading("Other")
            .help("Show this help and exit."),
    )
}

/// The `--help` text.
pub fn help_text() -> String {
    command().render_help().to_string()
}

/// What `--version` prints, in the shape of etcd's.
pub fn version_text() -> String {
    format!(
        "detcd Version: {}\nAPI Version: 3.4\nGit SHA: Not provided\nOS/Arch: {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// Go's flag package takes `-flag` like `--flag`: rewrite single-dash spellings of known flags
/// (not values, not after `--`) so clap sees long flags. Any other single-dash word in a flag's
/// place is an unknown flag, named as written (clap would read it as a cluster of short flags).
fn normalize_args(args: Vec<String>) -> Result<Vec<String>, CliError> {
    let takes_value = |name: &str| {
        FLAGS.iter().any(|f| f.name == name)
            || inert_flags::find(name).is_some_and(|f| f.kind != Kind::Bool)
    };
    let known = |name: &str| {
        takes_value(name)
            || BOOL_FLAGS.iter().any(|f| f.name == name)
            || inert_flags::find(name).is_some()
            || name == "version"
            || name == "help"
    };
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.push(arg);
            out.extend(iter.by_ref());
            break;
        }
        let mut arg = arg;
        if !arg.starts_with("--") && arg.len() > 2 && arg.starts_with('-') {
            let name = arg[1..].split('=').next().unwrap_or("");
            if !known(name) {
                return Err(CliError::UnknownFlag(name.to_string()));
            }
            arg.insert(0, '-');
        }
        let value_follows = arg
            .strip_prefix("--")
            .is_some_and(|name| !name.contains('=') && takes_value(name));
        out.push(arg);
        if value_follows {
            if let Some(value) = iter.next() {
                out.push(value);
            }
        }
    }
    Ok(out)
}

fn map_clap_error(e: clap::Error) -> CliError {
    let invalid_arg = || match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or("").to_string(),
        _ => String::new(),
    };
    match e.kind() {
        ErrorKind::UnknownArgument => {
            let arg = invalid_arg();
            if arg.starts_with('-') {
                CliError::UnknownFlag(
                    arg.split('=')
                        .next()
                        .unwrap_or("")
                        .trim_start_matches('-')
                        .to_string(),
                )
            } else {
                CliError::NotAFlag(arg)
            }
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals if !invalid_arg().is_empty() => {
            CliError::MissingValue(invalid_arg().trim_start_matches('-').to_string())
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            CliError::Other(first.to_string())
        }
    }
}

/// Where a flag's value came from.
enum Source {
    Flag,
    Env(String),
    /// A key of the `--config-file`.
    File,
}

/// One flag's explicit value, if any.
struct Given {
    value: String,
    source: Source,
}

impl Given {
    fn invalid(&self, flag: &str, reason: impl ToString) -> CliError {
        match &self.source {
            Source::Flag => CliError::InvalidFlagValue {
                flag: flag.to_string(),
                value: self.value.clone(),
                reason: reason.to_string(),
            },
            Source::Env(var) => CliError::InvalidEnvValue {
                var: var.clone(),
                value: self.value.clone(),
                reason: reason.to_string(),
            },
            Source::File => CliError::InvalidFileValue {
                key: flag.to_string(),
                value: self.value.clone(),
                reason: reason.to_string(),
            },
        }
    }
}

/// Parses the command line (`args` as `std::env::args()` gives it: the program name first) and
/// the environment. Warnings (unrecognized `ETCD_*` variables) are logged through `tracing`;
/// use `parse_with_warnings` to get them as text instead.
#[allow(dead_code)] // main.rs prints the warnings itself, after it set up logging.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Cli, CliError> {
    let (cli, warnings) = parse_with_warnings(args, env)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(cli)
}

/// `parse`, returning the warnings instead of logging them. A `--config-file` is read from
/// the file system.
pub fn parse_with_warnings(
    args: impl IntoIterator<Item = String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Cli, Vec<String>), CliError> {
    parse_with(args, env, &|path| std::fs::read_to_string(path))
}

/// `parse_with_warnings` with the config file read by `read` (tests give files in memory).
pub fn parse_with(
    args: impl IntoIterator<Item = String>,
    env: impl IntoIterator<Item = (String, String)>,
    read: &dyn Fn(&str) -> std::io::Result<String>,
) -> Result<(Cli, Vec<String>), CliError> {
    let mut args: Vec<String> = args.into_iter().collect();
    if args.is_empty() {
        args.push("detcd".to_string());
    }
    if args.get(1).map(String::as_str) == Some("bench") {
        return Ok((Cli::Bench(args.split_off(2)), Vec::new()));
    }
    if args.get(1).map(String::as_str) == Some("gateway") {
        return Ok((Cli::Gateway(args.split_off(2)), Vec::new()));
    }
    let matches = command()
        .try_get_matches_from(normalize_args(args)?)
        .map_err(map_clap_error)?;

    // Like etcd, --help and --version act before the environment is read.
    if matches.get_flag("help") {
        return Ok((Cli::Help(help_text()), Vec::new()));
    }
    if let Some(v) = matches.get_one::<String>("version") {
        match parse_go_bool(v) {
            Some(true) => return Ok((Cli::Version, Vec::new())),
            Some(false) => {}
            None => {
                return Err(CliError::InvalidFlagValue {
                    flag: "version".into(),
                    value: v.clone(),
                    reason: "parse error".into(),
                })
            }
        }
    }

    let env: Vec<(String, String)> = env.into_iter().collect();
    let env_value = |var: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v.clone())
            // etcd ignores a variable set to the empty string.
            .filter(|v| !v.is_empty())
    };
    let from_cli = |name: &str| matches.value_source(name) == Some(ValueSource::CommandLine);
    let mut warnings = Vec::new();

    // etcd (etcdmain/config.go): a config file, from the flag or ETCD_CONFIG_FILE, replaces
    // every other flag and variable.
    let config_file = if from_cli("config-file") {
        matches.get_one::<String>("config-file").cloned()
    } else {
        env_value("ETCD_CONFIG_FILE")
    };
    let file = match &config_file {
        None => None,
        Some(path) => {
            let text = read(path).map_err(|e| {
                CliError::ConfigFile(format!("cannot read the config file {path:?}: {e}"))
            })?;
            let is_duration = |name: &str| {
                DURATION_FLAGS.contains(&name)
                    || inert_flags::find(name).is_some_and(|f| f.kind == Kind::Duration)
            };
            let file = crate::config_file::parse(&text, &is_known_flag, &is_duration)
                .map_err(|e| CliError::ConfigFile(format!("config file {path:?}: {e}")))?;
            warnings.push(format!(
                "Loading server configuration from {path:?}. Other configuration command line flags and environment variables will be ignored if provided."
            ));
            warnings.extend(file.warnings.iter().cloned());
            Some(file)
        }
    };

    if file.is_none() {
        let known_env = |var: &str| {
            all_flag_names().any(|f| flag_to_env(f) == var) || var == flag_to_env("version")
        };
        for (var, value) in &env {
            if var.starts_with("ETCD_") && !known_env(var) {
                warnings.push(format!("unrecognized environment variable {var}={value}"));
            }
        }
        for name in all_flag_names() {
            let var = flag_to_env(name);
            if from_cli(name) && env.iter().any(|(k, _)| *k == var) {
                return Err(CliError::EnvShadowed(var));
            }
        }
        if from_cli("version") && env.iter().any(|(k, _)| k == "ETCD_VERSION") {
            return Err(CliError::EnvShadowed("ETCD_VERSION".into()));
        }
    }

    let given = |name: &str| -> Option<Given> {
        if let Some(file) = &file {
            return file.values.get(name).map(|v| Given {
                value: v.clone(),
                source: Source::File,
            });
        }
        if from_cli(name) {
            let value = matches.get_one::<String>(name).cloned().unwrap_or_default();
            return Some(Given {
                value,
                source: Source::Flag,
            });
        }
        let var = flag_to_env(name);
        env_value(&var).map(|value| Given {
            value,
            source: Source::Env(var),
        })
    };
    let config = build_config(&given)?;
    check_inert_flags(&given, &mut warnings)?;
    config.validate()?;
    detcd_core::tls::plan(&config)?;
    if given("listen-client-urls").is_some() && given("advertise-client-urls").is_none() {
        return Err(CliError::AdvertiseClientUrlsRequired);
    }
    Ok((Cli::Run(config), warnings))
}

/// Value flags whose values are Go durations (an integer in the config file is nanoseconds).
const DURATION_FLAGS: &[&str] = &[
    "experimental-watch-progress-notify-interval",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "discovery-dial-timeout",
    "discovery-request-timeout",
    "discovery-keepalive-time",
    "discovery-keepalive-timeout",
];

/// Every flag name detcd takes (not `--version`/`--help`).
fn all_flag_names() -> impl Iterator<Item = &'static str> {
    FLAGS
        .iter()
        .chain(BOOL_FLAGS)
        .map(|f| f.name)
        .chain(inert_flags::INERT_FLAGS.iter().map(|f| f.name))
}

fn is_known_flag(name: &str) -> bool {
    all_flag_names().any(|f| f == name)
}

/// Checks each given inert flag's value as Go's flag package would, then warns about or
/// refuses the ones set away from etcd's default (see `inert_flags`).
fn check_inert_flags(
    given: &dyn Fn(&str) -> Option<Given>,
    warnings: &mut Vec<String>,
) -> Result<(), CliError> {
    for f in inert_flags::INERT_FLAGS {
        let Some(g) = given(f.name) else { continue };
        let is_default = match f.kind {
            Kind::Text => g.value == f.default,
            Kind::Bool => {
                let v = parse_go_bool(&g.value).ok_or_else(|| g.invalid(f.name, "parse error"))?;
                Some(v) == parse_go_bool(f.default)
            }
            Kind::Uint => {
                let v = parse_go_uint(&g.value).map_err(|r| g.invalid(f.name, r))?;
                Ok(v) == parse_go_uint(f.default)
            }
            Kind::Int => {
                let v = parse_go_int(&g.value).map_err(|r| g.invalid(f.name, r))?;
                Ok(v) == parse_go_int(f.default)
            }
            Kind::Duration => {
                let v = parse_go_duration_ms(&g.value).map_err(|r| g.invalid(f.name, r))?;
                Ok(v) == parse_go_duration_ms(f.default)
            }
            Kind::Choice(valid) => {
                if !valid.contains(&g.value.as_str()) {
                    let list = valid.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>();
                    return Err(g.invalid(f.name, format!("valid values are {}", list.join(", "))));
                }
                g.value == f.default
            }
        };
        if is_default {
            continue;
        }
        match f.inert {
            Inert::NoEffect(why) => warnings.push(format!("--{} has no effect: {why}", f.name)),
            Inert::Refused(why) => {
                return Err(CliError::NotSupported {
                    flag: f.name.to_string(),
                    value: g.value,
                    reason: why.to_string(),
                })
            }
            Inert::AlwaysOn(_) => {}
        }
    }
    Ok(())
}

fn build_config(given: &dyn Fn(&str) -> Option<Given>) -> Result<Config, CliError> {
    let mut c = Config::default();
    let urls = |flag: &str, into: &mut Vec<config::Url>| -> Result<(), CliError> {
        if let Some(g) = given(flag) {
            *into = parse_urls(&g.value).map_err(|e| g.invalid(flag, e))?;
        }
        Ok(())
    };
    if let Some(g) = given("name") {
        c.name = g.value;
    }
    urls("listen-peer-urls", &mut c.listen_peer_urls)?;
    urls("listen-client-urls", &mut c.listen_client_urls)?;
    urls(
        "initial-advertise-peer-urls",
        &mut c.initial_advertise_peer_urls,
    )?;
    urls("advertise-client-urls", &mut c.advertise_client_urls)?;
    c.data_dir = match given("data-dir") {
        Some(g) => g.value,
        None => default_data_dir(&c.name),
    };
    c.initial_cluster = match given("initial-cluster") {
        Some(g) => parse_initial_cluster(&g.value).map_err(|e| g.invalid("initial-cluster", e))?,
        None => initial_cluster_from_name(&c.name, &c.initial_advertise_peer_urls),
    };
    if let Some(g) = given("initial-cluster-token") {
        c.initial_cluster_token = g.value;
    }
    if let Some(g) = given("initial-cluster-state") {
        c.initial_cluster_state = match g.value.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            _ => {
                return Err(g.invalid(
                    "initial-cluster-state",
                    "valid values are \"new\", \"existing\"",
                ))
            }
        };
    }
    let uint = |flag: &str, max: u64| -> Result<Option<u64>, CliError> {
        let Some(g) = given(flag) else {
            return Ok(None);
        };
        match parse_go_uint(&g.value) {
            Ok(v) if v <= max => Ok(Some(v)),
            Ok(_) => Err(g.invalid(flag, "value out of range")),
            Err(reason) => Err(g.invalid(flag, reason)),
        }
    };
    if let Some(v) = uint("snapshot-count", u64::MAX)? {
        c.snapshot_count = v;
    }
    if let Some(v) = uint("heartbeat-interval", u64::MAX)? {
        c.heartbeat_interval = v;
    }
    if let Some(v) = uint("election-timeout", u64::MAX)? {
        c.election_timeout = v;
    }
    if let Some(v) = uint("max-request-bytes", u32::MAX as u64)? {
        c.max_request_bytes = v as u32;
    }
    if let Some(g) = given("quota-backend-bytes") {
        c.quota_backend_bytes =
            parse_go_int(&g.value).map_err(|r| g.invalid("quota-backend-bytes", r))?;
    }
    if let Some(g) = given("log-level") {
        if !LOG_LEVELS.contains(&g.value.as_str()) {
            return Err(g.invalid(
                "log-level",
                format!("valid values are {}", LOG_LEVELS.join(", ")),
            ));
        }
        c.log_level = g.value;
    }
    let boolean = |flag: &str| -> Result<bool, CliError> {
        match given(flag) {
            None => Ok(false),
            Some(g) => parse_go_bool(&g.value).ok_or_else(|| g.invalid(flag, "parse error")),
        }
    };
    let text = |flag: &str| given(flag).map(|g| g.value).unwrap_or_default();
    c.client_tls = TlsInfo {
        cert_file: text("cert-file"),
        key_file: text("key-file"),
        trusted_ca_file: text("trusted-ca-file"),
        client_cert_auth: boolean("client-cert-auth")?,
        auto_tls: boolean("auto-tls")?,
        allowed_cn: String::new(),
        allowed_hostname: text("client-cert-allowed-hostname"),
        crl_file: text("client-crl-file"),
        skip_client_san_verify: false,
    };
    c.peer_tls = TlsInfo {
        cert_file: text("peer-cert-file"),
        key_file: text("peer-key-file"),
        trusted_ca_file: text("peer-trusted-ca-file"),
        client_cert_auth: boolean("peer-client-cert-auth")?,
        auto_tls: boolean("peer-auto-tls")?,
        allowed_cn: text("peer-cert-allowed-cn"),
        allowed_hostname: text("peer-cert-allowed-hostname"),
        crl_file: text("peer-crl-file"),
        skip_client_san_verify: boolean("experimental-peer-skip-client-san-verification")?,
    };
    for flag in ["tls-min-version", "tls-max-version"] {
        if let Some(g) = given(flag) {
            let v = TlsVersion::parse(&g.value).map_err(|e| g.invalid(flag, e))?;
            if flag == "tls-min-version" {
                c.tls_versions.min = v;
            } else {
                c.tls_versions.max = v;
            }
        }
    }
    if let Some(g) = given("cipher-suites") {
        c.cipher_suites =
            parse_cipher_suites(&g.value).map_err(|e| g.invalid("cipher-suites", e))?;
    }
    if let Some(v) = uint("self-signed-cert-validity", u32::MAX as u64)? {
        c.self_signed_cert_validity = v as u32;
    }
    if given("strict-reconfig-check").is_some() {
        c.strict_reconfig_check = boolean("strict-reconfig-check")?;
    }
    c.force_new_cluster = boolean("force-new-cluster")?;
    c.enable_v2 = boolean("enable-v2")?;
    if let Some(g) = given("feature-gates") {
        for (gate, on) in
            parse_feature_gates(&g.value).map_err(|e| g.invalid("feature-gates", e))?
        {
            match gate.as_str() {
                "AutoPromoteLearners" => c.auto_promote_learners = on,
                _ => {
                    return Err(g.invalid(
                        "feature-gates",
                        format!("unrecognized feature gate: {gate}"),
                    ))
                }
            }
        }
    }
    if let Some(v) = uint("max-learners", u32::MAX as u64)? {
        c.max_learners = v as u32;
    }
    c.lease_checkpoint = boolean("experimental-enable-lease-checkpoint")?;
    if let Some(g) = given("wal-dir") {
        c.wal_dir = Some(g.value);
    }
    if let Some(v) = uint("max-txn-ops", u32::MAX as u64)? {
        c.max_txn_ops = v as u32;
    }
    if let Some(v) = uint("max-concurrent-streams", u32::MAX as u64)? {
        c.max_concurrent_streams = v as u32;
    }
    if let Some(v) = uint("experimental-snapshot-catchup-entries", u64::MAX)? {
        c.snapshot_catchup_entries = v;
    }
    let duration_ms = |flag: &str| -> Result<Option<u64>, CliError> {
        given(flag)
            .map(|g| parse_go_duration_ms(&g.value).map_err(|e| g.invalid(flag, e)))
            .transpose()
    };
    if let Some(v) = duration_ms("grpc-keepalive-interval")? {
        c.grpc_keepalive_interval_ms = v;
    }
    if let Some(v) = duration_ms("grpc-keepalive-timeout")? {
        c.grpc_keepalive_timeout_ms = v;
    }
    if given("pre-vote").is_some() {
        c.pre_vote = boolean("pre-vote")?;
    }
    if boolean("debug")? {
        c.log_level = "debug".to_string();
    }
    c.auto_compaction = auto_compaction(given)?;
    if let Some(g) = given("logger") {
        c.logger = match g.value.as_str() {
            "capnslog" => Logger::Text,
            "zap" => Logger::Zap,
            other => return Err(g.invalid("logger", format!("unknown logger option {other:?}"))),
        };
    }
    if let Some(g) = given("log-outputs") {
        // etcd's flags.UniqueStringsValue: comma-separated, duplicates dropped, sorted.
        let mut outputs: Vec<String> = g
            .value
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        outputs.sort();
        outputs.dedup();
        c.log_outputs = outputs;
    }
    check_log_outputs(c.logger, &c.log_outputs).map_err(|e| match given("log-outputs") {
        Some(g) => g.invalid("log-outputs", e),
        None => CliError::Other(e),
    })?;
    urls("listen-metrics-urls", &mut c.listen_metrics_urls)?;
    c.metrics_extensive = given("metrics").is_some_and(|g| g.value == "extensive");
    if let Some(g) = given("experimental-watch-progress-notify-interval") {
        c.watch_progress_notify_interval_ms = parse_go_duration_ms(&g.value)
            .map_err(|e| g.invalid("experimental-watch-progress-notify-interval", e))?;
    }
    srv_flags(given, &mut c)?;
    discovery_flags(given, &mut c)?;
    Ok(c)
}

/// `--discovery`, `--discovery-fallback` and `--discovery-proxy` (etcd 3.4's v2 discovery),
/// and etcd 3.6's v3 discovery flags (see [`v3_discovery_flags`]).
/// As etcd: the default `--initial-cluster` is dropped when `--discovery` is set, and an
/// explicit one (or `--discovery-srv`) alongside it is an error (exit 1); so is joining an
/// existing cluster with a discovery URL (etcdserver's ErrDiscoveryURLSet... wording from
/// embed/config.go).
fn discovery_flags(given: &dyn Fn(&str) -> Option<Given>, c: &mut Config) -> Result<(), CliError> {
    if let Some(g) = given("discovery-fallback") {
        c.discovery.fallback_proxy = match g.value.as_str() {
            "proxy" => true,
            "exit" => false,
            other => {
                return Err(g.invalid(
                    "discovery-fallback",
                    format!("valid values are 'exit' or 'proxy', not {other:?}"),
                ))
            }
        };
    }
    c.discovery.proxy = given("discovery-proxy")
        .map(|g| g.value)
        .unwrap_or_default();
    c.discovery.url = given("discovery").map(|g| g.value).unwrap_or_default();
    v3_discovery_flags(given, c)?;
    if c.discovery.url.is_empty() {
        return Ok(());
    }
    if given("initial-cluster").is_some() || given("discovery-srv").is_some() {
        return Err(CliError::Other(CONFLICT_BOOTSTRAP_FLAGS.to_string()));
    }
    if c.initial_cluster_state == detcd_core::config::ClusterState::Existing {
        return Err(CliError::Other(
            "discovery URL should not be set when joining existing initial cluster".into(),
        ));
    }
    c.initial_cluster.clear();
    Ok(())
}

/// etcd 3.6's v3 discovery flags (`--discovery-token`, `--discovery-endpoints`, the client's
/// timeouts, TLS and credentials), checked as etcd 3.6's embed `Config.Validate` does, in its
/// order: `--discovery-endpoints` with another bootstrap flag (`--initial-cluster` given
/// explicitly, `--discovery`, `--discovery-srv`) is etcd 3.6's conflicting-bootstrap-flags
/// error; `--discovery-proxy` with any v3 setting, a token without endpoints or the reverse,
/// and an empty endpoint are refused with etcd 3.6's texts. With endpoints the default
/// `--initial-cluster` is dropped. `--discovery-user`/`--discovery-password` are refused:
/// detcd has no Auth service, and its discovery client does not authenticate.
fn v3_discovery_flags(
    given: &dyn Fn(&str) -> Option<Given>,
    c: &mut Config,
) -> Result<(), CliError> {
    let text = |flag: &str| given(flag).map(|g| g.value).unwrap_or_default();
    let v3 = &mut c.discovery.v3;
    v3.token = text("discovery-token");
    if let Some(g) = given("discovery-endpoints") {
        // etcd's flags.UniqueStringsValue: split on commas, duplicates dropped, sorted.
        let mut eps: Vec<String> = g.value.split(',').map(String::from).collect();
        eps.sort();
        eps.dedup();
        v3.endpoints = eps;
    }
    for (flag, into) in [
        ("discovery-dial-timeout", &mut v3.dial_timeout_ms),
        ("discovery-request-timeout", &mut v3.request_timeout_ms),
        ("discovery-keepalive-time", &mut v3.keepalive_time_ms),
        ("discovery-keepalive-timeout", &mut v3.keepalive_timeout_ms),
    ] {
        if let Some(g) = given(flag) {
            *into = parse_go_duration_ms(&g.value).map_err(|e| g.invalid(flag, e))?;
        }
    }
    for (flag, into) in [
        ("discovery-insecure-transport", &mut v3.insecure_transport),
        (
            "discovery-insecure-skip-tls-verify",
            &mut v3.insecure_skip_tls_verify,
        ),
    ] {
        if let Some(g) = given(flag) {
            *into = parse_go_bool(&g.value).ok_or_else(|| g.invalid(flag, "parse error"))?;
        }
    }
    v3.cert_file = text("discovery-cert");
    v3.key_file = text("discovery-key");
    v3.cacert_file = text("discovery-cacert");
    v3.user = text("discovery-user");
    v3.password = text("discovery-password");

    let v3 = &c.discovery.v3;
    let bootstrap_flags = [
        !c.discovery.url.is_empty(),
        given("initial-cluster").is_some(),
        !c.srv.domain.is_empty(),
        v3.is_set(),
    ];
    if v3.is_set() && bootstrap_flags.iter().filter(|set| **set).count() > 1 {
        return Err(CliError::Other(CONFLICT_BOOTSTRAP_FLAGS_36.to_string()));
    }
    let v3_flags = v3.is_set()
        || !v3.token.is_empty()
        || !v3.cert_file.is_empty()
        || !v3.key_file.is_empty()
        || !v3.cacert_file.is_empty()
        || !v3.user.is_empty()
        || !v3.password.is_empty();
    if !c.discovery.proxy.is_empty() && v3_flags {
        return Err(CliError::Other(
            "both v2 discovery settings (discovery, discovery-proxy) and v3 discovery settings \
             (discovery-token, discovery-endpoints, discovery-cert, discovery-key, discovery-cacert, \
             discovery-user, discovery-password) are set"
                .into(),
        ));
    }
    if v3.token.is_empty() == v3.is_set() {
        return Err(CliError::Other(
            "both --discovery-token and --discovery-endpoints must be set".into(),
        ));
    }
    if v3.endpoints.iter().any(|e| e.trim().is_empty()) {
        return Err(CliError::Other(
            "--discovery-endpoints must not contain empty endpoints".into(),
        ));
    }
    if !v3.user.is_empty() || !v3.password.is_empty() {
        return Err(CliError::Other(
            "--discovery-user and --discovery-password are not supported: detcd has no \
             authentication (no Auth service), so its v3 discovery client cannot authenticate \
             either; use a discovery service without authentication"
                .into(),
        ));
    }
    if v3.is_set() {
        c.initial_cluster.clear();
    }
    Ok(())
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`, as etcd parses them
/// (embed/config.go `parseCompactionRetention`): a plain integer is hours (periodic) or
/// revisions (revision), anything else a Go duration; 0 turns auto compaction off.
fn auto_compaction(
    given: &dyn Fn(&str) -> Option<Given>,
) -> Result<Option<AutoCompaction>, CliError> {
    let mode = given("auto-compaction-mode");
    let periodic = match &mode {
        None => true,
        Some(g) => match g.value.as_str() {
            "periodic" => true,
            "revision" => false,
            other => {
                return Err(g.invalid(
                    "auto-compaction-mode",
                    format!("unknown auto-compaction-mode {other:?}"),
                ))
            }
        },
    };
    let Some(g) = given("auto-compaction-retention") else {
        return Ok(None);
    };
    let amount: u64 = match g.value.parse::<u64>() {
        Ok(n) if periodic => n.saturating_mul(3_600_000),
        Ok(n) => n,
        Err(_) => {
            let ms = parse_go_duration_ms(&g.value).map_err(|e| {
                g.invalid(
                    "auto-compaction-retention",
                    format!("error parsing CompactionRetention: {e}"),
                )
            })?;
            // etcd keeps the duration in nanoseconds; as a revision count that is ms * 1e6.
            if periodic {
                ms
            } else {
                ms.saturating_mul(1_000_000)
            }
        }
    };
    Ok(match (amount, periodic) {
        (0, _) => None,
        (ms, true) => Some(AutoCompaction::Periodic { retention_ms: ms }),
        (revisions, false) => Some(AutoCompaction::Revision {
            retention: revisions,
        }),
    })
}

/// etcd's rules for `--log-outputs` (embed/config_logging.go), with detcd's one difference:
/// `journal` (systemd's journald) is refused, since detcd does not write to it.
fn check_log_outputs(logger: Logger, outputs: &[String]) -> Result<(), String> {
    if outputs.iter().any(|o| o == "journal") {
        return Err(
            "detcd cannot log to journald; use stderr (journald collects it under systemd)".into(),
        );
    }
    match logger {
        Logger::Text => {
            if outputs.len() != 1 {
                return Err(format!(
                    "--logger=capnslog supports only 1 value in '--log-outputs', got {outputs:?}"
                ));
            }
            if !["default", "stderr", "stdout"].contains(&outputs[0].as_str()) {
                return Err(format!(
                    "unknown log-output {:?} (only supports \"default\", \"stderr\", \"stdout\")",
                    outputs[0]
                ));
            }
        }
        Logger::Zap => {
            if outputs.is_empty() {
                return Err("no log outputs given".into());
            }
            if outputs.len() > 1 && outputs.iter().any(|o| o == "default") {
                return Err("multi logoutput for \"default\" is not supported yet".into());
            }
        }
    }
    Ok(())
}

/// etcd's `ErrConflictBootstrapFlags`.
pub const CONFLICT_BOOTSTRAP_FLAGS: &str = "multiple discovery or bootstrap flags are set. \
Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"";

/// etcd 3.6's `ErrConflictBootstrapFlags`, which names `--discovery-endpoints` (etcd 3.6's v3
/// discovery): detcd prints it when that flag is one of the conflicting ones.
pub const CONFLICT_BOOTSTRAP_FLAGS_36: &str = "multiple discovery or bootstrap flags are set. \
Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"";

/// `--discovery-srv`, `--discovery-srv-name` and detcd's `--discovery-srv-resolver`. As etcd,
/// the default `--initial-cluster` is dropped when `--discovery-srv` is set, and an explicit one
/// alongside it is an error (exit 1).
fn srv_flags(given: &dyn Fn(&str) -> Option<Given>, c: &mut Config) -> Result<(), CliError> {
    let text = |flag: &str| given(flag).map(|g| g.value).unwrap_or_default();
    c.srv.domain = text("discovery-srv");
    c.srv.name = text("discovery-srv-name");
    if let Some(g) = given("discovery-srv-resolver") {
        detcd_net::dns::parse_resolver_addr(&g.value)
            .map_err(|e| g.invalid("discovery-srv-resolver", e))?;
        c.srv.resolver = g.value;
    }
    if c.srv.domain.is_empty() {
        return Ok(());
    }
    let others = ["initial-cluster", "discovery"]
        .iter()
        .filter(|f| FLAGS.iter().any(|s| s.name == **f) && given(f).is_some())
        .count();
    if others > 0 {
        return Err(CliError::Other(CONFLICT_BOOTSTRAP_FLAGS.to_string()));
    }
    c.initial_cluster.clear();
    Ok(())
}

/// `--feature-gates`: comma-separated `Name=bool` pairs (Kubernetes' featuregate syntax, which
/// etcd 3.6 uses), with its messages.
fn parse_feature_gates(s: &str) -> Result<Vec<(String, bool)>, String> {
    let mut gates = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("missing bool value for {pair}"));
        };
        let on = parse_go_bool(value.trim()).ok_or_else(|| {
            format!(
                "invalid value of {name}={value}, err: strconv.ParseBool: parsing {value:?}: invalid syntax"
            )
        })?;
        gates.push((name.trim().to_string(), on));
    }
    Ok(gates)
}

/// Go's `strconv.ParseUint(s, 0, 64)` as the flag package uses it: decimal, or `0x`, `0o`,
/// `0b` and leading-`0` (octal) prefixes; `_` separators only with a prefix.
fn parse_go_uint(s: &str) -> Result<u64, &'static str> {
    let (digits, radix) = if let Some(r) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (r, 16)
    } else if let Some(r) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
        (r, 8)
    } else if let Some(r) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        (r, 2)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    // Go allows `_` between digits only when the base comes from a prefix.
    let digits: String = if radix == 10 {
        digits.to_string()
    } else {
        digits.replace('_', "")
    };
    if digits.is_empty() || !digits.chars().all(|ch| ch.is_digit(radix)) {
        return Err("parse error");
    }
    u64::from_str_radix(&digits, radix).map_err(|_| "value out of range")
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
fn parse_go_int(s: &str) -> Result<i64, &'static str> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let magnitude = parse_go_uint(rest)?;
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err("value out of range");
        }
        Ok((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).map_err(|_| "value out of range")
    }
}

/// Go's `time.ParseDuration`, in whole milliseconds (rounded down): decimal numbers with
/// optional fractions, each with a unit (ns, us, µs, ms, s, m, h), an optional sign; "0"
/// alone needs no unit. Negative durations are refused here (no duration flag takes one).
pub(crate) fn parse_go_duration_ms(s: &str) -> Result<u64, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(invalid());
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = rest;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = num.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        total_ns += value * scale;
        rest = tail;
    }
    if total_ns > i64::MAX as f64 {
        return Err(invalid());
    }
    Ok((total_ns / 1e6) as u64)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_without_effect_yet_start_with_a_warning() {
        let (_, warnings) = run(&["--experimental-initial-corrupt-check"], &[]).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--experimental-initial-corrupt-check has no effect")),
            "{warnings:?}"
        );
        let (_, warnings) = run(&["--experimental-initial-corrupt-check=false"], &[]).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // etcd's default, however spelled, is no change: no warning.
        let (_, warnings) = run(
            &[
                "--max-wals",
                "5",
                "--grpc-keepalive-min-time=5000ms",
                "--proxy",
                "off",
            ],
            &[("ETCD_ENABLE_V2", "false")],
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (_, warnings) = run(&["--enable-v2", "--max-wals", "0"], &[]).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(config(&["--enable-v2"], &[]).enable_v2);
    }

    /// Every etcd 3.4 server flag (`etcd --help` of 3.4.23) is one detcd takes, and the
    /// inert ones check their values as Go's flag package would.
    #[test]
    fn every_etcd_34_flag_is_accepted_and_inert_ones_are_typed() {
        const ETCD_34_FLAGS: &[&str] = &[
            "advertise-client-urls",
            "auth-token",
            "auth-token-ttl",
            "auto-compaction-mode",
            "auto-compaction-retention",
            "auto-tls",
            "backend-batch-interval",
            "backend-batch-limit",
            "bcrypt-cost",
            "cert-file",
            "cipher-suites",
            "client-cert-allowed-hostname",
            "client-cert-auth",
            "client-crl-file",
            "cors",
            "data-dir",
            "debug",
            "discovery",
            "discovery-fallback",
            "discovery-proxy",
            "election-timeout",
            "enable-pprof",
            "enable-v2",
            "experimental-backend-bbolt-freelist-type",
            "experimental-compaction-batch-limit",
            "experimental-corrupt-check-time",
            "experimental-enable-lease-checkpoint",
            "experimental-enable-v2v3",
            "experimental-initial-corrupt-check",
            "experimental-peer-skip-client-san-verification",
            "experimental-warning-apply-duration",
            "experimental-watch-progress-notify-interval",
            "force-new-cluster",
            "grpc-keepalive-interval",
            "grpc-keepalive-min-time",
            "grpc-keepalive-timeout",
            "heartbeat-interval",
            "host-whitelist",
            "initial-advertise-peer-urls",
            "initial-cluster",
            "initial-cluster-state",
            "initial-cluster-token",
            "initial-election-tick-advance",
            "key-file",
            "listen-client-urls",
            "listen-peer-urls",
            "log-level",
            "log-outputs",
            "log-package-levels",
            "logger",
            "max-concurrent-streams",
            "max-request-bytes",
            "max-snapshots",
            "max-txn-ops",
            "max-wals",
            "name",
            "peer-auto-tls",
            "peer-cert-allowed-cn",
            "peer-cert-allowed-hostname",
            "peer-cert-file",
            "peer-client-cert-auth",
            "peer-crl-file",
            "peer-key-file",
            "peer-trusted-ca-file",
            "pre-vote",
            "proxy",
            "proxy-dial-timeout",
            "proxy-failure-wait",
            "proxy-read-timeout",
            "proxy-refresh-interval",
            "proxy-write-timeout",
            "quota-backend-bytes",
            "snapshot-count",
            "strict-reconfig-check",
            "trusted-ca-file",
            "wal-dir",
            "discovery-srv",
            "discovery-srv-name",
            "listen-metrics-urls",
            "metrics",
        ];
        for f in ETCD_34_FLAGS {
            assert!(is_known_flag(f), "etcd 3.4's --{f} is not a detcd flag");
        }
        assert_eq!(code(&["--max-wals", "x"]), 2);
        assert_eq!(
            code(&["--backend-batch-interval", "10"]),
            2,
            "a duration needs a unit"
        );
        assert_eq!(code(&["--proxy", "sideways"]), 2);
        assert_eq!(code(&["--enable-pprof=maybe"]), 2);
        assert_eq!(
            error(&["--proxy", "sideways"], &[]),
            "invalid value \"sideways\" for flag -proxy: valid values are \"off\", \"readonly\", \"on\""
        );
        assert_eq!(code_env(&[("ETCD_MAX_WALS", "x")]), 1);
    }

    fn code(args: &[&str]) -> u8 {
        run(args, &[]).map(|_| 0).unwrap_or_else(|e| e.exit_code())
    }

    fn code_env(env: &[(&str, &str)]) -> u8 {
        run(&[], env).map(|_| 0).unwrap_or_else(|e| e.exit_code())
    }

    /// Flags whose absence of effect would be unsafe stop the start, naming the flag.
    #[test]
    fn unsafe_to_ignore_flags_are_refused() {
        assert!(error(&["--proxy", "on"], &[]).starts_with("--proxy=on is not supported"));
        assert_eq!(
            error(
                &[
                    "--discovery",
                    "https://discovery.etcd.io/x",
                    "--initial-cluster",
                    "a=http://h:2380"
                ],
                &[]
            ),
            CONFLICT_BOOTSTRAP_FLAGS
        );
        assert_eq!(
            error(
                &[
                    "--discovery",
                    "https://d/x",
                    "--initial-cluster-state",
                    "existing"
                ],
                &[]
            ),
            "discovery URL should not be set when joining existing initial cluster"
        );
        let c = config(
            &[
                "--discovery",
                "https://discovery.etcd.io/x",
                "--discovery-fallback",
                "exit",
                "--discovery-proxy",
                "http://proxy:3128",
            ],
            &[],
        );
        assert!(
            c.initial_cluster.is_empty(),
            "the default --initial-cluster is dropped"
        );
        assert_eq!(c.discovery.url, "https://discovery.etcd.io/x");
        assert!(!c.discovery.fallback_proxy);
        assert_eq!(c.discovery.proxy, "http://proxy:3128");
        assert_eq!(code(&["--host-whitelist", "*"]), 0);
    }

    /// The CRL, allowed-hostname, SAN-check and TLS version flags (etcd 3.4/3.5) reach the
    /// TLS configuration; bad versions are refused with etcd 3.5's words, exit 1.
    #[test]
    fn crl_hostname_and_tls_version_flags() {
        let c = config(
            &[
                "--client-crl-file",
                "/c.crl",
                "--client-cert-allowed-hostname",
                "client.example",
                "--peer-crl-file",
                "/p.crl",
                "--peer-cert-allowed-hostname",
                "peer.example",
                "--experimental-peer-skip-client-san-verification",
                "--tls-min-version",
                "TLS1.3",
            ],
            &[],
        );
        assert_eq!(c.client_tls.crl_file, "/c.crl");
        assert_eq!(c.client_tls.allowed_hostname, "client.example");
        assert_eq!(c.peer_tls.crl_file, "/p.crl");
        assert_eq!(c.peer_tls.allowed_hostname, "peer.example");
        assert!(c.peer_tls.skip_client_san_verify);
        assert!(!c.client_tls.skip_client_san_verify);
        assert_eq!(c.tls_versions.min, Some(TlsVersion::Tls13));
        assert_eq!(c.tls_versions.max, None);
        let c = config(
            &["--tls-min-version", "TLS1.2", "--tls-max-version", "TLS1.2"],
            &[],
        );
        assert_eq!(c.tls_versions.max, Some(TlsVersion::Tls12));
        assert_eq!(
            error(&["--tls-min-version", "TLS1.1"], &[]),
            "invalid value \"TLS1.1\" for flag -tls-min-version: unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)"
        );
        assert_eq!(code(&["--tls-max-version", "TLS1.0"]), 1);
        assert_eq!(
            error(
                &["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"],
                &[]
            ),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            error(
                &[
                    "--tls-min-version",
                    "TLS1.3",
                    "--cipher-suites",
                    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
                ],
                &[]
            ),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        assert_eq!(
            error(
                &[
                    "--peer-auto-tls",
                    "--peer-cert-allowed-cn",
                    "etcd",
                    "--peer-cert-allowed-hostname",
                    "h"
                ],
                &[]
            ),
            "AllowedCN and AllowedHostname are mutually exclusive (cn=\"etcd\", hostname=\"h\")"
        );
        assert_eq!(
            config(&[], &[("ETCD_PEER_CRL_FILE", "/e.crl")])
                .peer_tls
                .crl_file,
            "/e.crl"
        );
    }

    #[test]
    fn implemented_operator_flags() {
        let c = config(
            &[
                "--wal-dir",
                "/wal",
                "--max-txn-ops",
                "1000",
                "--pre-vote=false",
                "--debug",
                "--max-concurrent-streams",
                "100",
                "--grpc-keepalive-interval",
                "30s",
                "--grpc-keepalive-timeout",
                "5s",
                "--experimental-snapshot-catchup-entries",
                "100",
                "--logger",
                "zap",
                "--log-outputs",
                "stdout,/var/log/etcd.log,stdout",
            ],
            &[],
        );
        assert_eq!(c.wal_dir.as_deref(), Some("/wal"));
        assert_eq!(c.max_txn_ops, 1000);
        assert!(!c.pre_vote);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.max_concurrent_streams, 100);
        assert_eq!(c.grpc_keepalive_interval_ms, 30_000);
        assert_eq!(c.grpc_keepalive_timeout_ms, 5_000);
        assert_eq!(c.snapshot_catchup_entries, 100);
        assert_eq!(c.logger, Logger::Zap);
        assert_eq!(c.log_outputs, vec!["/var/log/etcd.log", "stdout"]);
        assert_eq!(code(&["--logger", "glog"]), 1);
        assert!(error(&["--log-outputs", "stdout,stderr"], &[])
            .ends_with("--logger=capnslog supports only 1 value in '--log-outputs', got [\"stderr\", \"stdout\"]"));
        assert!(
            error(&["--logger=zap", "--log-outputs", "default,stderr"], &[])
                .ends_with("multi logoutput for \"default\" is not supported yet")
        );
        assert!(error(&["--log-outputs", "/tmp/x.log"], &[]).contains("unknown log-output"));
        assert!(error(&["--logger=zap", "--log-outputs", "journal"], &[]).contains("journald"));
    }

    #[test]
    fn auto_compaction_as_etcd_parses_it() {
        let ac = |args: &[&str]| config(args, &[]).auto_compaction;
        assert_eq!(ac(&[]), None);
        assert_eq!(ac(&["--auto-compaction-retention", "0"]), None);
        assert_eq!(
            ac(&["--auto-compaction-retention", "1"]),
            Some(AutoCompaction::Periodic {
                retention_ms: 3_600_000
            })
        );
        assert_eq!(
            ac(&["--auto-compaction-retention", "5m"]),
            Some(AutoCompaction::Periodic {
                retention_ms: 300_000
            })
        );
        assert_eq!(
            ac(&[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000"
            ]),
            Some(AutoCompaction::Revision { retention: 1000 })
        );
        assert!(error(
            &[
                "--auto-compaction-mode",
                "weekly",
                "--auto-compaction-retention",
                "1"
            ],
            &[]
        )
        .contains("unknown auto-compaction-mode \"weekly\""));
        assert!(error(&["--auto-compaction-retention", "soon"], &[])
            .contains("error parsing CompactionRetention"));
        assert_eq!(code(&["--auto-compaction-retention", "soon"]), 1);
    }

    /// etcd 3.4's etcd.conf.yml.sample, unchanged.
    const ETCD_SAMPLE_CONFIG: &str = include_str!("../../tests/fixtures/etcd.conf.yml.sample");

    fn run_with_file(
        args: &[&str],
        env: &[(&str, &str)],
        file: &str,
    ) -> Result<(Cli, Vec<String>), CliError> {
        let args = std::iter::once("detcd")
            .chain(args.iter().copied())
            .map(String::from);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let file = file.to_string();
        parse_with(args, env, &move |path| {
            if path == "/etc/etcd.yml" {
                Ok(file.clone())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ))
            }
        })
    }

    #[test]
    fn etcds_sample_config_file_starts_detcd() {
        let (cli, warnings) =
            run_with_file(&["--config-file", "/etc/etcd.yml"], &[], ETCD_SAMPLE_CONFIG).unwrap();
        let Cli::Run(c) = cli else { panic!("{cli:?}") };
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, "default.etcd");
        assert_eq!(c.snapshot_count, 10000);
        assert!(!c.strict_reconfig_check);
        assert_eq!(c.logger, Logger::Zap);
        assert_eq!(c.log_outputs, vec!["stderr"]);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(
            c.auto_compaction,
            Some(AutoCompaction::Periodic {
                retention_ms: 3_600_000
            })
        );
        // enable-v2 is set to true in the sample; enable-pprof too: a warning, not a refusal.
        assert!(c.enable_v2);
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--enable-pprof has no effect")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--enable-pprof has no effect")),
            "{warnings:?}"
        );
        assert!(warnings[0].starts_with("Loading server configuration from \"/etc/etcd.yml\""));
    }

    /// etcd's config-file keys for CRLs, allowed host names (3.5: a list) and TLS versions.
    #[test]
    fn config_file_crl_hostname_and_tls_versions() {
        let file = "client-transport-security:\n  crl-file: /c.crl\n  allowed-hostname: [client.example, 10.0.0.1]\n\
                    peer-transport-security:\n  crl-file: /p.crl\n  allowed-hostname: peer.example\n  \
                    skip-client-san-verify: true\ntls-min-version: TLS1.2\ntls-max-version: TLS1.3\n";
        let (cli, _) = run_with_file(&["--config-file", "/etc/etcd.yml"], &[], file).unwrap();
        let Cli::Run(c) = cli else { panic!() };
        assert_eq!(c.client_tls.crl_file, "/c.crl");
        assert_eq!(c.client_tls.allowed_hostname, "client.example,10.0.0.1");
        assert_eq!(c.peer_tls.crl_file, "/p.crl");
        assert_eq!(c.peer_tls.allowed_hostname, "peer.example");
        assert!(c.peer_tls.skip_client_san_verify);
        assert_eq!(c.tls_versions.min, Some(TlsVersion::Tls12));
        assert_eq!(c.tls_versions.max, Some(TlsVersion::Tls13));
        let e = run_with_file(
            &["--config-file", "/etc/etcd.yml"],
            &[],
            "tls-max-version: TLS1.1\n",
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string().contains("unexpected TLS version \"TLS1.1\""),
            "{e}"
        );
    }

    #[test]
    fn a_config_file_replaces_flags_and_environment() {
        let file =
            "name: infra9\nsnapshot-count: 42\nclient-transport-security:\n  auto-tls: true\n";
        for (args, env) in [
            (
                vec!["--config-file", "/etc/etcd.yml", "--name", "other"],
                vec![],
            ),
            (
                vec![],
                vec![
                    ("ETCD_CONFIG_FILE", "/etc/etcd.yml"),
                    ("ETCD_NAME", "other"),
                ],
            ),
        ] {
            let (cli, _) = run_with_file(&args, &env, file).unwrap();
            let Cli::Run(c) = cli else { panic!() };
            assert_eq!(c.name, "infra9");
            assert_eq!(c.data_dir, "infra9.etcd");
            assert_eq!(c.snapshot_count, 42);
            assert!(c.client_tls.auto_tls);
        }
        let e = run_with_file(
            &["--config-file", "/etc/etcd.yml"],
            &[],
            "snapshot-count: lots\n",
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "invalid value \"lots\" for snapshot-count in the config file: parse error"
        );
        let e = run_with_file(&["--config-file", "/etc/missing.yml"], &[], "").unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .contains("cannot read the config file \"/etc/missing.yml\""),
            "{e}"
        );
        let e = run_with_file(&["--config-file", "/etc/etcd.yml"], &[], "name: [x\n").unwrap_err();
        assert!(e.to_string().contains("invalid YAML"), "{e}");
        let (_, warnings) =
            run_with_file(&["--config-file", "/etc/etcd.yml"], &[], "nmae: typo\n").unwrap();
        assert!(warnings.contains(&"unrecognized key nmae in the config file".to_string()));
    }

    /// etcd's statuses: 2 for what Go's flag package refuses, 1 for later checks.
    #[test]
    fn exit_codes_are_etcds() {
        let code = |args: &[&str], env: &[(&str, &str)]| {
            run(args, env).map(|_| 0).unwrap_or_else(|e| e.exit_code())
        };
        assert_eq!(code(&["--bogus"], &[]), 2);
        assert_eq!(code(&["--name"], &[]), 2);
        assert_eq!(code(&["--snapshot-count", "x"], &[]), 2);
        assert_eq!(code(&["--initial-cluster-state", "old"], &[]), 2);
        assert_eq!(code(&["--initial-cluster", "infra0"], &[]), 1);
        assert_eq!(code(&["--log-level", "loud"], &[]), 1);
        assert_eq!(code(&[], &[("ETCD_SNAPSHOT_COUNT", "x")]), 1);
        assert_eq!(code(&["notaflag"], &[]), 1);
    }

    #[test]
    fn go_durations_parse_as_go_does() {
        assert_eq!(parse_go_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_go_duration_ms("1h2m3.5s"), Ok(3_723_500));
        assert_eq!(parse_go_duration_ms("100ms"), Ok(100));
        assert_eq!(parse_go_duration_ms("0"), Ok(0));
        assert_eq!(parse_go_duration_ms("1500us"), Ok(1));
        assert!(parse_go_duration_ms("10")
            .unwrap_err()
            .contains("missing unit"));
        assert!(parse_go_duration_ms("10x")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_go_duration_ms("").is_err());
        assert!(parse_go_duration_ms("-1s").is_err());
        assert!(parse_go_duration_ms("1..2s").is_err());
    }
    use detcd_core::config::{format_initial_cluster, format_urls, Url};

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<(Cli, Vec<String>), CliError> {
        let args = std::iter::once("detcd")
            .chain(args.iter().copied())
            .map(String::from);
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        parse_with_warnings(args, env)
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match run(args, env) {
            Ok((Cli::Run(c), _)) => c,
            other => panic!("{args:?} {env:?}: expected a config, got {other:?}"),
        }
    }

    fn error(args: &[&str], env: &[(&str, &str)]) -> String {
        match run(args, env) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("{args:?} {env:?}: expected an error, got {other:?}"),
        }
    }

    fn urls(s: &str) -> Vec<Url> {
        parse_urls(s).unwrap()
    }

    #[test]
    fn no_flags_give_etcds_defaults() {
        assert_eq!(config(&[], &[]), Config::default());
        // Environment variables of other programs are not ours.
        assert_eq!(
            run(&[], &[("PATH", "/bin"), ("ETCDCTL_API", "3")]).unwrap(),
            (Cli::Run(Config::default()), vec![])
        );
    }

    #[test]
    fn the_guides_static_command() {
        let c = config(
            &[
                "--name", "infra0",
                "--initial-advertise-peer-urls", "http://10.0.1.10:2380",
                "--listen-peer-urls", "http://10.0.1.10:2380",
                "--listen-client-urls", "http://10.0.1.10:2379,http://127.0.0.1:2379",
                "--advertise-client-urls", "http://10.0.1.10:2379",
                "--initial-cluster-token", "etcd-cluster-1",
                "--initial-cluster", "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380",
                "--initial-cluster-state", "new",
            ],
            &[],
        );
        assert_eq!(c.name, "infra0");
        assert_eq!(c.data_dir, "infra0.etcd");
        assert_eq!(c.initial_advertise_peer_urls, urls("http://10.0.1.10:2380"));
        assert_eq!(c.listen_peer_urls, urls("http://10.0.1.10:2380"));
        assert_eq!(
            c.listen_client_urls,
            urls("http://10.0.1.10:2379,http://127.0.0.1:2379")
        );
        assert_eq!(c.advertise_client_urls, urls("http://10.0.1.10:2379"));
        assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
        assert_eq!(c.initial_cluster.len(), 3);
        assert_eq!(c.initial_cluster_state, ClusterState::New);
    }

    #[test]
    fn reconfiguration_flags() {
        let c = config(&[], &[]);
        assert!(c.strict_reconfig_check && !c.force_new_cluster && !c.auto_promote_learners);
        assert_eq!(c.max_learners, 1);
        let c = config(
            &["--strict-reconfig-check=false", "--force-new-cluster"],
            &[("ETCD_FEATURE_GATES", "AutoPromoteLearners=false")],
        );
        assert!(!c.strict_reconfig_check && c.force_new_cluster && !c.auto_promote_learners);
        assert_eq!(
            error(&["--feature-gates", "Bogus=true"], &[]),
            "invalid value \"Bogus=true\" for flag -feature-gates: unrecognized feature gate: Bogus"
        );
        assert!(error(&["--feature-gates", "AutoPromoteLearners"], &[])
            .ends_with("missing bool value for AutoPromoteLearners"));
        assert!(
            error(&["--feature-gates", "AutoPromoteLearners=maybe"], &[])
                .contains("strconv.ParseBool: parsing \"maybe\": invalid syntax")
        );
    }

    #[test]
    fn every_flag_both_spellings() {
        let all: &[(&str, &str)] = &[
            ("name", "n1"),
            ("data-dir", "/var/lib/n1"),
            ("listen-peer-urls", "http://10.0.0.1:2380"),
            ("listen-client-urls", "http://10.0.0.1:2379"),
            ("initial-advertise-peer-urls", "http://n1.example.com:2380"),
            ("advertise-client-urls", "http://n1.example.com:2379"),
            (
                "initial-cluster",
                "n1=http://n1.example.com:2380,n2=http://n2.example.com:2380",
            ),
            ("initial-cluster-token", "tok"),
            ("initial-cluster-state", "existing"),
            ("snapshot-count", "5000"),
            ("heartbeat-interval", "200"),
            ("election-timeout", "2000"),
            ("quota-backend-bytes", "8589934592"),
            ("max-request-bytes", "10485760"),
            ("log-level", "debug"),
            ("max-learners", "2"),
            ("feature-gates", "AutoPromoteLearners=true"),
        ];
        let check = |c: &Config| {
            assert_eq!(c.name, "n1");
            assert_eq!(c.data_dir, "/var/lib/n1");
            assert_eq!(c.listen_peer_urls, urls("http://10.0.0.1:2380"));
            assert_eq!(c.listen_client_urls, urls("http://10.0.0.1:2379"));
            assert_eq!(
                c.initial_advertise_peer_urls,
                urls("http://n1.example.com:2380")
            );
            assert_eq!(c.advertise_client_urls, urls("http://n1.example.com:2379"));
            assert_eq!(
                format_initial_cluster(&c.initial_cluster),
                "n1=http://n1.example.com:2380,n2=http://n2.example.com:2380"
            );
            assert_eq!(c.initial_cluster_token, "tok");
            assert_eq!(c.initial_cluster_state, ClusterState::Existing);
            assert_eq!(c.snapshot_count, 5000);
            assert_eq!(c.heartbeat_interval, 200);
            assert_eq!(c.election_timeout, 2000);
            assert_eq!(c.quota_backend_bytes, 8589934592);
            assert_eq!(c.max_request_bytes, 10485760);
            assert_eq!(c.log_level, "debug");
            assert_eq!(c.max_learners, 2);
            assert!(c.auto_promote_learners);
        };
        let separate: Vec<String> = all
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.to_string()])
            .collect();
        let joined: Vec<String> = all.iter().map(|(k, v)| format!("--{k}={v}")).collect();
        let single_dash: Vec<String> = all
            .iter()
            .flat_map(|(k, v)| [format!("-{k}"), v.to_string()])
            .collect();
        let single_dash_joined: Vec<String> =
            all.iter().map(|(k, v)| format!("-{k}={v}")).collect();
        for args in [separate, joined, single_dash, single_dash_joined] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            check(&config(&args, &[]));
        }
        let env: Vec<(String, String)> = all
            .iter()
            .map(|(k, v)| (flag_to_env(k), v.to_string()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (cli, warnings) = run(&[], &env).unwrap();
        let Cli::Run(c) = cli else { panic!() };
        check(&c);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn env_names() {
        assert_eq!(flag_to_env("initial-cluster"), "ETCD_INITIAL_CLUSTER");
        assert_eq!(
            flag_to_env("initial-advertise-peer-urls"),
            "ETCD_INITIAL_ADVERTISE_PEER_URLS"
        );
        assert_eq!(flag_to_env("name"), "ETCD_NAME");
    }

    #[test]
    fn the_guides_environment() {
        let c = config(
            &["--name", "infra1", "--initial-advertise-peer-urls", "http://10.0.1.11:2380"],
            &[
                (
                    "ETCD_INITIAL_CLUSTER",
                    "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380",
                ),
                ("ETCD_INITIAL_CLUSTER_STATE", "new"),
            ],
        );
        assert_eq!(c.initial_cluster.len(), 3);
        assert_eq!(c.name, "infra1");
    }

    #[test]
    fn derived_defaults_follow_the_final_name() {
        let c = config(&["--name", "infra0"], &[]);
        assert_eq!(c.data_dir, "infra0.etcd");
        assert_eq!(
            format_initial_cluster(&c.initial_cluster),
            "infra0=http://localhost:2380"
        );
        let c = config(&[], &[("ETCD_NAME", "envname")]);
        assert_eq!(c.data_dir, "envname.etcd");
        assert_eq!(
            format_initial_cluster(&c.initial_cluster),
            "envname=http://localhost:2380"
        );
        let c = config(
            &[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://10.0.0.2:2380,http://10.0.0.1:2380",
            ],
            &[],
        );
        assert_eq!(
            format_initial_cluster(&c.initial_cluster),
            "a=http://10.0.0.1:2380,a=http://10.0.0.2:2380"
        );
        // Explicit values win.
        let c = config(
            &[
                "--name",
                "a",
                "--data-dir",
                "/d",
                "--initial-cluster",
                "b=http://10.0.0.9:2380",
            ],
            &[],
        );
        assert_eq!(c.data_dir, "/d");
        assert_eq!(
            format_initial_cluster(&c.initial_cluster),
            "b=http://10.0.0.9:2380"
        );
    }

    #[test]
    fn last_flag_wins_and_values_may_start_with_a_dash() {
        assert_eq!(config(&["--name", "a", "--name", "b"], &[]).name, "b");
        assert_eq!(
            config(&["--initial-cluster-token", "-tok-"], &[]).initial_cluster_token,
            "-tok-"
        );
        assert_eq!(config(&["--name", "-name"], &[]).name, "-name");
        assert_eq!(
            config(&["--quota-backend-bytes", "-1"], &[]).quota_backend_bytes,
            -1
        );
    }

    #[test]
    fn env_and_flag_conflict() {
        assert_eq!(
            error(
                &["--initial-advertise-peer-urls", "http://10.0.1.10:2380"],
                &[("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://10.0.1.10:2380")]
            ),
            "conflicting environment variable \"ETCD_INITIAL_ADVERTISE_PEER_URLS\" is shadowed by corresponding \
             command-line flag (either unset environment variable or disable flag)"
        );
        // Even an empty variable conflicts, as in etcd.
        assert_eq!(
            error(&["-name=x"], &[("ETCD_NAME", "")]),
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag \
             (either unset environment variable or disable flag)"
        );
        // A variable for another flag is fine.
        assert_eq!(
            config(&["--name", "x"], &[("ETCD_DATA_DIR", "/d")]).data_dir,
            "/d"
        );
    }

    #[test]
    fn discovery_srv_flags() {
        let c = config(
            &["--discovery-srv", "example.com", "--name", "infra0"],
            &[
                ("ETCD_DISCOVERY_SRV_NAME", "foo"),
                ("ETCD_DISCOVERY_SRV_RESOLVER", "127.0.50.1:5353"),
            ],
        );
        assert_eq!(c.srv.domain, "example.com");
        assert_eq!(c.srv.name, "foo");
        assert_eq!(c.srv.resolver, "127.0.50.1:5353");
        // The default --initial-cluster is dropped: the records give it.
        assert!(c.initial_cluster.is_empty());
        let c = config(&[], &[("ETCD_DISCOVERY_SRV", "example.com")]);
        assert_eq!(c.srv.domain, "example.com");
        assert_eq!(
            error(
                &[
                    "--discovery-srv=example.com",
                    "--initial-cluster=a=http://10.0.1.10:2380"
                ],
                &[]
            ),
            CONFLICT_BOOTSTRAP_FLAGS
        );
        let (code, msg) = match run(&["--discovery-srv-resolver", "nope"], &[]) {
            Err(e) => (e.exit_code(), e.to_string()),
            Ok(_) => panic!("accepted a bad resolver"),
        };
        assert_eq!(code, 1);
        assert!(
            msg.contains("expected a DNS server address as ip:port"),
            "{msg}"
        );
        assert!(help_text().contains("--discovery-srv-resolver"));
        assert!(help_text().contains("detcd only (not an etcd flag)"));
    }

    /// etcd 3.6's v3 discovery flags: names, defaults, `ETCD_*` variables and embed
    /// `Config.Validate`'s checks and texts.
    #[test]
    fn v3_discovery_flags() {
        let d = config(&[], &[]).discovery.v3;
        assert_eq!(d, detcd_core::config::V3DiscoveryConfig::default());
        assert!(!d.is_set());
        assert_eq!(
            (
                d.dial_timeout_ms,
                d.request_timeout_ms,
                d.keepalive_time_ms,
                d.keepalive_timeout_ms
            ),
            (2_000, 5_000, 2_000, 6_000)
        );
        assert!(d.insecure_transport && !d.insecure_skip_tls_verify);
        let c = config(
            &[
                "--discovery-token",
                "tok",
                "--discovery-endpoints",
                "http://10.0.0.2:2379,10.0.0.1:2379,http://10.0.0.2:2379",
                "--discovery-dial-timeout",
                "1s",
                "--discovery-request-timeout=500ms",
                "--discovery-keepalive-time",
                "0",
                "--discovery-insecure-transport=false",
                "--discovery-insecure-skip-tls-verify",
                "--discovery-cert",
                "/c.pem",
                "--discovery-key",
                "/k.pem",
            ],
            &[
                ("ETCD_DISCOVERY_KEEPALIVE_TIMEOUT", "1m"),
                ("ETCD_DISCOVERY_CACERT", "/ca.pem"),
            ],
        );
        let v3 = &c.discovery.v3;
        assert_eq!(v3.token, "tok");
        // etcd's UniqueStringsValue: sorted, duplicates dropped.
        assert_eq!(v3.endpoints, ["10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(
            (
                v3.dial_timeout_ms,
                v3.request_timeout_ms,
                v3.keepalive_time_ms,
                v3.keepalive_timeout_ms
            ),
            (1_000, 500, 0, 60_000)
        );
        assert!(!v3.insecure_transport && v3.insecure_skip_tls_verify);
        assert_eq!(
            (
                v3.cert_file.as_str(),
                v3.key_file.as_str(),
                v3.cacert_file.as_str()
            ),
            ("/c.pem", "/k.pem", "/ca.pem")
        );
        assert!(
            c.initial_cluster.is_empty(),
            "the default --initial-cluster is dropped"
        );
        let c = config(
            &[],
            &[
                ("ETCD_DISCOVERY_TOKEN", "t"),
                ("ETCD_DISCOVERY_ENDPOINTS", "127.0.0.1:2379"),
            ],
        );
        assert!(c.discovery.v3.is_set());

        let ep = ["--discovery-endpoints", "127.0.0.1:2379"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            ep.iter().chain(extra).copied().collect()
        };
        for other in [
            &[
                "--discovery-token",
                "t",
                "--initial-cluster",
                "a=http://h:2380",
            ][..],
            &["--discovery-token", "t", "--discovery", "http://d/x"],
            &["--discovery-token", "t", "--discovery-srv", "example.com"],
        ] {
            assert_eq!(error(&with(other), &[]), CONFLICT_BOOTSTRAP_FLAGS_36);
        }
        assert_eq!(
            error(
                &[
                    "--discovery-token",
                    "t",
                    "--discovery-proxy",
                    "http://p:3128"
                ],
                &[]
            ),
            "both v2 discovery settings (discovery, discovery-proxy) and v3 discovery settings \
             (discovery-token, discovery-endpoints, discovery-cert, discovery-key, \
             discovery-cacert, discovery-user, discovery-password) are set"
        );
        assert_eq!(
            error(&ep, &[]),
            "both --discovery-token and --discovery-endpoints must be set"
        );
        assert_eq!(
            error(&["--discovery-token", "t"], &[]),
            "both --discovery-token and --discovery-endpoints must be set"
        );
        assert_eq!(
            error(
                &[
                    "--discovery-token",
                    "t",
                    "--discovery-endpoints",
                    "a:1,,b:2"
                ],
                &[]
            ),
            "--discovery-endpoints must not contain empty endpoints"
        );
        let msg = error(
            &with(&["--discovery-token", "t", "--discovery-user", "u"]),
            &[],
        );
        assert!(msg.contains("--discovery-user and --discovery-password are not supported"));
        let msg = error(
            &with(&["--discovery-token", "t"]),
            &[("ETCD_DISCOVERY_PASSWORD", "pw")],
        );
        assert!(!msg.contains("pw"), "the password is not echoed: {msg}");
        // Values Go's flag package refuses exit 2.
        assert_eq!(code(&["--discovery-dial-timeout", "2"]), 2);
        assert_eq!(code(&["--discovery-insecure-transport=maybe"]), 2);
        assert!(help_text().contains("--discovery-keepalive-timeout"));
        assert!(
            help_text().contains("V3 discovery: List of gRPC endpoints of the discovery service.")
        );
    }

    #[test]
    fn env_edge_cases() {
        // Empty variables are ignored, as etcd ignores them.
        assert_eq!(config(&[], &[("ETCD_NAME", "")]).name, "default");
        let (cli, warnings) = run(
            &[],
            &[
                ("ETCD_FOO", "bar"),
                ("ETCD_NOT_A_FLAG", "example.com"),
                ("ETCD_NAME", "n"),
            ],
        )
        .unwrap();
        assert!(matches!(cli, Cli::Run(ref c) if c.name == "n"));
        assert_eq!(
            warnings,
            vec![
                "unrecognized environment variable ETCD_FOO=bar".to_string(),
                "unrecognized environment variable ETCD_NOT_A_FLAG=example.com".to_string(),
            ]
        );
        assert_eq!(
            error(&[], &[("ETCD_SNAPSHOT_COUNT", "lots")]),
            "invalid value \"lots\" for ETCD_SNAPSHOT_COUNT: parse error"
        );
        assert_eq!(
            error(&[], &[("ETCD_LISTEN_PEER_URLS", "10.0.0.1:2380")]),
            "invalid value \"10.0.0.1:2380\" for ETCD_LISTEN_PEER_URLS: URL scheme must be http, https, unix, or unixs: 10.0.0.1:2380"
        );
        // ETCD_VERSION is a flag's variable (read by nobody, as in etcd).
        assert_eq!(
            run(&[], &[("ETCD_VERSION", "true")]).unwrap().1,
            Vec::<String>::new()
        );
    }

    #[test]
    fn tls_flags() {
        let c = config(
            &[
                "--listen-client-urls=https://127.0.0.1:2379",
                "--advertise-client-urls=https://127.0.0.1:2379",
                "--cert-file",
                "c.crt",
                "--key-file=c.key",
                "--trusted-ca-file",
                "ca.crt",
                "--client-cert-auth",
                "-peer-auto-tls",
                "--peer-client-cert-auth=false",
                "--peer-cert-allowed-cn",
                "etcd",
                "--self-signed-cert-validity",
                "3",
            ],
            &[(
                "ETCD_CIPHER_SUITES",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            )],
        );
        assert_eq!(c.client_tls.cert_file, "c.crt");
        assert_eq!(c.client_tls.key_file, "c.key");
        assert_eq!(c.client_tls.trusted_ca_file, "ca.crt");
        assert!(c.client_tls.client_cert_auth);
        assert!(!c.client_tls.auto_tls);
        assert!(c.peer_tls.auto_tls);
        assert!(!c.peer_tls.client_cert_auth);
        assert_eq!(c.peer_tls.allowed_cn, "etcd");
        assert_eq!(c.self_signed_cert_validity, 3);
        assert_eq!(
            c.cipher_suites,
            vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()]
        );
        let c = config(&[], &[("ETCD_AUTO_TLS", "true")]);
        assert!(c.client_tls.auto_tls);
        assert_eq!(
            error(&["--listen-client-urls=https://127.0.0.1:2379", "--advertise-client-urls=https://127.0.0.1:2379"], &[]),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
        );
        assert_eq!(
            error(&["--client-cert-auth=maybe"], &[]),
            "invalid value \"maybe\" for flag -client-cert-auth: parse error"
        );
    }

    #[test]
    fn metrics_flags() {
        let c = config(&[], &[]);
        assert!(c.listen_metrics_urls.is_empty() && !c.metrics_extensive);
        let c = config(
            &[
                "--listen-metrics-urls",
                "http://127.0.0.1:2381,https://127.0.0.1:2382",
                "--metrics=extensive",
            ],
            &[],
        );
        assert_eq!(
            c.listen_metrics_urls,
            urls("http://127.0.0.1:2381,https://127.0.0.1:2382")
        );
        assert!(c.metrics_extensive);
        let c = config(
            &[],
            &[
                ("ETCD_LISTEN_METRICS_URLS", "http://127.0.0.1:2381"),
                ("ETCD_METRICS", "basic"),
            ],
        );
        assert_eq!(c.listen_metrics_urls, urls("http://127.0.0.1:2381"));
        assert!(!c.metrics_extensive);
        // Listen URLs must be IPs, as etcd's checkBindURLs says for every listener.
        assert!(
            error(&["--listen-metrics-urls", "http://example.com:2381"], &[])
                .contains("expected IP in URL for binding"),
        );
    }

    #[test]
    fn unknown_flags_and_arguments() {
        assert_eq!(
            error(&["--bogus"], &[]),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(
            error(&["--bogus=1"], &[]),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(
            error(&["-bogus"], &[]),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(
            error(&["--experimental-bogus"], &[]),
            "flag provided but not defined: -experimental-bogus"
        );
        assert_eq!(error(&["stray"], &[]), "'stray' is not a valid flag");
        assert_eq!(error(&["--name"], &[]), "flag needs an argument: -name");
    }

    #[test]
    fn malformed_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--snapshot-count", "abc"], "invalid value \"abc\" for flag -snapshot-count: parse error"),
            (&["--snapshot-count", "-1"], "invalid value \"-1\" for flag -snapshot-count: parse error"),
            (&["--heartbeat-interval", "1.5"], "invalid value \"1.5\" for flag -heartbeat-interval: parse error"),
            (&["--election-timeout="], "invalid value \"\" for flag -election-timeout: parse error"),
            (&["--max-request-bytes", "4294967296"], "invalid value \"4294967296\" for flag -max-request-bytes: value out of range"),
            (&["--snapshot-count", "99999999999999999999"], "invalid value \"99999999999999999999\" for flag -snapshot-count: value out of range"),
            (&["--quota-backend-bytes", "2G"], "invalid value \"2G\" for flag -quota-backend-bytes: parse error"),
            (
                &["--listen-peer-urls", "http://10.0.1.10"],
                "invalid value \"http://10.0.1.10\" for flag -listen-peer-urls: URL address does not have the form \"host:port\": http://10.0.1.10",
            ),
            (
                &["--advertise-client-urls", "http://10.0.1.10:2379/"],
                "invalid value \"http://10.0.1.10:2379/\" for flag -advertise-client-urls: URL must not contain a path: http://10.0.1.10:2379/",
            ),
            (
                &["--initial-advertise-peer-urls", "ftp://x:1"],
                "invalid value \"ftp://x:1\" for flag -initial-advertise-peer-urls: URL scheme must be http, https, unix, or unixs: ftp://x:1",
            ),
            (
                &["--initial-cluster", "infra0=http://10.0.1.10:2380,infra1"],
                "invalid value \"infra0=http://10.0.1.10:2380,infra1\" for flag -initial-cluster: empty URL given for \"infra1\"",
            ),
            (
                &["--initial-cluster-state", "old"],
                "invalid value \"old\" for flag -initial-cluster-state: valid values are \"new\", \"existing\"",
            ),
            (
                &["--log-level", "verbose"],
                "invalid value \"verbose\" for flag -log-level: valid values are debug, info, warn, error, panic, fatal",
            ),
            (&["--version=maybe"], "invalid value \"maybe\" for flag -version: parse error"),
        ];
        for (args, msg) in cases {
            assert_eq!(error(args, &[]), *msg, "{args:?}");
        }
    }

    #[test]
    fn go_number_syntax() {
        assert_eq!(
            config(&["--snapshot-count", "0x10"], &[]).snapshot_count,
            16
        );
        assert_eq!(config(&["--snapshot-count", "010"], &[]).snapshot_count, 8);
        assert_eq!(config(&["--snapshot-count", "0"], &[]).snapshot_count, 0);
        assert_eq!(
            config(&["--snapshot-count", "0b101"], &[]).snapshot_count,
            5
        );
        assert_eq!(
            config(&["--quota-backend-bytes", "-0x10"], &[]).quota_backend_bytes,
            -16
        );
        assert_eq!(parse_go_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(
            parse_go_int("9223372036854775808"),
            Err("value out of range")
        );
        assert_eq!(parse_go_uint("08"), Err("parse error"));
        assert_eq!(parse_go_uint("+1"), Err("parse error"));
    }

    #[test]
    fn listen_client_urls_need_advertise_client_urls() {
        let msg = "--advertise-client-urls is required when --listen-client-urls is set explicitly";
        assert_eq!(
            error(&["--listen-client-urls", "http://10.0.1.10:2379"], &[]),
            msg
        );
        assert_eq!(
            error(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://10.0.1.10:2379")]),
            msg
        );
        let c = config(
            &["--listen-client-urls", "http://10.0.1.10:2379"],
            &[("ETCD_ADVERTISE_CLIENT_URLS", "http://10.0.1.10:2379")],
        );
        assert_eq!(
            format_urls(&c.advertise_client_urls),
            "http://10.0.1.10:2379"
        );
        // Advertising without listening explicitly is fine.
        config(&["--advertise-client-urls", "http://10.0.1.10:2379"], &[]);
    }

    #[test]
    fn start_up_checks_run() {
        assert_eq!(
            error(
                &["--listen-peer-urls", "http://infra0.example.com:2380"],
                &[]
            ),
            "expected IP in URL for binding (http://infra0.example.com:2380)"
        );
        assert_eq!(
            error(&["--election-timeout", "400"], &[]),
            "--election-timeout[400ms] should be at least as 5 times as --heartbeat-interval[100ms]"
        );
        assert_eq!(
            error(&["--election-timeout", "60000"], &[]),
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
        );
    }

    #[test]
    fn version_help_and_bench() {
        assert_eq!(run(&["--version"], &[]).unwrap().0, Cli::Version);
        assert_eq!(run(&["-version"], &[]).unwrap().0, Cli::Version);
        assert_eq!(run(&["--version=true"], &[]).unwrap().0, Cli::Version);
        assert!(matches!(
            run(&["--version=false"], &[]).unwrap().0,
            Cli::Run(_)
        ));
        // --version acts before the environment is read.
        assert_eq!(
            run(&["--version"], &[("ETCD_SNAPSHOT_COUNT", "junk")])
                .unwrap()
                .0,
            Cli::Version
        );
        let v = version_text();
        assert!(
            v.starts_with(&format!(
                "detcd Version: {}\nAPI Version: 3.4\n",
                env!("CARGO_PKG_VERSION")
            )),
            "{v}"
        );

        for h in ["-h", "--help", "-help"] {
            let Cli::Help(text) = run(&[h], &[]).unwrap().0 else {
                panic!("{h}")
            };
            assert!(text.starts_with("Usage:\n\n  detcd [flags]\n"), "{text}");
            for f in FLAGS {
                assert!(
                    text.contains(&format!("--{} <{}>", f.name, f.name)),
                    "{} missing:\n{text}",
                    f.name
                );
            }
            let member = text.find("Member:").expect("Member heading");
            let clustering = text.find("Clustering:").expect("Clustering heading");
            let logging = text.find("Logging:").expect("Logging heading");
            assert!(member < text.find("--snapshot-count").unwrap());
            assert!(
                member < clustering && clustering < text.find("--initial-cluster-token").unwrap()
            );
            assert!(clustering < logging && logging < text.find("--log-level").unwrap());
        }

        assert_eq!(run(&["bench"], &[]).unwrap().0, Cli::Bench(vec![]));
        assert_eq!(
            run(&["bench", "--endpoints", "x", "put"], &[("ETCD_NAME", "")])
                .unwrap()
                .0,
            Cli::Bench(vec!["--endpoints".into(), "x".into(), "put".into()])
        );
    }
}
