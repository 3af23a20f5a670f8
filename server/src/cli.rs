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
    ClusterState, Config, LOG_LEVELS,
};
use detcd_core::tls::{parse_cipher_suites, TlsInfo};

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
    /// Anything else the argument parser refused.
    #[error("{0}")]
    Other(String),
}

/// Flags accepted so etcd command lines start detcd, whose mechanism detcd does not have yet:
/// each logs a start-up warning saying so (the flag, then why).
const NO_EFFECT_YET: &[(&str, &str)] = &[(
    "experimental-initial-corrupt-check",
    "detcd does not yet compare its data with its peers' at start (etcd's initial \
     corruption check); the check is skipped",
)];

/// Flags whose values etcd checks after its flag package has parsed them (plain strings
/// there): a bad one exits 1. Every other flag's value is parsed by Go's flag package
/// (numbers, booleans, durations, URL lists, choices), which exits 2.
const CHECKED_AFTER_PARSING: &[&str] = &["initial-cluster", "log-level", "cipher-suites"];

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
    FlagSpec { name: "data-dir", heading: MEMBER, help: "Path to the data directory. [default: ${name}.etcd]" },
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
        name: "experimental-initial-corrupt-check",
        heading: CLUSTERING,
        help: "Accepted; detcd does not check its data against its peers' at start yet (a warning says so).",
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
    let takes_value = |name: &str| FLAGS.iter().any(|f| f.name == name);
    let known = |name: &str| {
        takes_value(name)
            || BOOL_FLAGS.iter().any(|f| f.name == name)
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

/// `parse`, returning the warnings instead of logging them.
pub fn parse_with_warnings(
    args: impl IntoIterator<Item = String>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Cli, Vec<String>), CliError> {
    let mut args: Vec<String> = args.into_iter().collect();
    if args.is_empty() {
        args.push("detcd".to_string());
    }
    if args.get(1).map(String::as_str) == Some("bench") {
        return Ok((Cli::Bench(args.split_off(2)), Vec::new()));
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
    let mut warnings = Vec::new();
    let known_env = |var: &str| {
        FLAGS
            .iter()
            .chain(BOOL_FLAGS)
            .any(|f| flag_to_env(f.name) == var)
            || var == flag_to_env("version")
    };
    for (var, value) in &env {
        if var.starts_with("ETCD_") && !known_env(var) {
            warnings.push(format!("unrecognized environment variable {var}={value}"));
        }
    }
    let from_cli = |name: &str| matches.value_source(name) == Some(ValueSource::CommandLine);
    for f in FLAGS.iter().chain(BOOL_FLAGS) {
        let var = flag_to_env(f.name);
        if from_cli(f.name) && env.iter().any(|(k, _)| *k == var) {
            return Err(CliError::EnvShadowed(var));
        }
    }
    if from_cli("version") && env.iter().any(|(k, _)| k == "ETCD_VERSION") {
        return Err(CliError::EnvShadowed("ETCD_VERSION".into()));
    }

    let given = |name: &str| -> Option<Given> {
        if from_cli(name) {
            let value = matches.get_one::<String>(name).cloned().unwrap_or_default();
            return Some(Given {
                value,
                source: Source::Flag,
            });
        }
        let var = flag_to_env(name);
        // etcd ignores a variable set to the empty string.
        let value = env
            .iter()
            .rev()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v.clone())?;
        (!value.is_empty()).then_some(Given {
            value,
            source: Source::Env(var),
        })
    };
    let config = build_config(&given)?;
    for (flag, why) in NO_EFFECT_YET {
        if given(flag).is_some_and(|g| parse_go_bool(&g.value) != Some(false)) {
            warnings.push(format!("--{flag} has no effect: {why}"));
        }
    }
    config.validate()?;
    detcd_core::tls::plan(&config)?;
    if given("listen-client-urls").is_some() && given("advertise-client-urls").is_none() {
        return Err(CliError::AdvertiseClientUrlsRequired);
    }
    Ok((Cli::Run(config), warnings))
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
    };
    c.peer_tls = TlsInfo {
        cert_file: text("peer-cert-file"),
        key_file: text("peer-key-file"),
        trusted_ca_file: text("peer-trusted-ca-file"),
        client_cert_auth: boolean("peer-client-cert-auth")?,
        auto_tls: boolean("peer-auto-tls")?,
        allowed_cn: text("peer-cert-allowed-cn"),
    };
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
    urls("listen-metrics-urls", &mut c.listen_metrics_urls)?;
    c.metrics_extensive = given("metrics").is_some_and(|g| g.value == "extensive");
    if let Some(g) = given("experimental-watch-progress-notify-interval") {
        c.watch_progress_notify_interval_ms = parse_go_duration_ms(&g.value)
            .map_err(|e| g.invalid("experimental-watch-progress-notify-interval", e))?;
    }
    Ok(c)
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
fn parse_go_duration_ms(s: &str) -> Result<u64, String> {
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
    fn env_edge_cases() {
        // Empty variables are ignored, as etcd ignores them.
        assert_eq!(config(&[], &[("ETCD_NAME", "")]).name, "default");
        let (cli, warnings) = run(
            &[],
            &[
                ("ETCD_FOO", "bar"),
                ("ETCD_DISCOVERY_SRV", "example.com"),
                ("ETCD_NAME", "n"),
            ],
        )
        .unwrap();
        assert!(matches!(cli, Cli::Run(ref c) if c.name == "n"));
        assert_eq!(
            warnings,
            vec![
                "unrecognized environment variable ETCD_FOO=bar".to_string(),
                "unrecognized environment variable ETCD_DISCOVERY_SRV=example.com".to_string(),
            ]
        );
        assert_eq!(
            error(&[], &[("ETCD_SNAPSHOT_COUNT", "lots")]),
            "invalid value \"lots\" for ETCD_SNAPSHOT_COUNT: parse error"
        );
        assert_eq!(
            error(&[], &[("ETCD_LISTEN_PEER_URLS", "10.0.0.1:2380")]),
            "invalid value \"10.0.0.1:2380\" for ETCD_LISTEN_PEER_URLS: URL scheme must be http or https: 10.0.0.1:2380"
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
            error(&["--enable-pprof"], &[]),
            "flag provided but not defined: -enable-pprof"
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
                &["--initial-advertise-peer-urls", "unix://x:1"],
                "invalid value \"unix://x:1\" for flag -initial-advertise-peer-urls: unix socket URLs are not supported by detcd (URL scheme must be http or https): unix://x:1",
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
