//! `detcd gateway start`: etcd's gateway command line (cobra/pflag style, as etcd's
//! `etcdmain/gateway.go`: `--flag value` or `--flag=value`, booleans without a value; no
//! `ETCD_*` variables) in front of detcd-net's gateway.

use detcd_net::gateway::{run_gateway, GatewayConfig};
use std::time::Duration;

const HELP: &str = "\
start the gateway

Usage:
  detcd gateway start [flags]

Flags:
      --discovery-srv string            DNS domain used to bootstrap initial cluster
      --discovery-srv-name string       service name to query when using DNS discovery
      --discovery-srv-resolver string   detcd only (not an etcd flag): the DNS server (ip:port) the SRV records
                                        and endpoint host names are resolved through (default: the system resolver)
      --endpoints strings               comma separated etcd cluster endpoints (default [127.0.0.1:2379])
  -h, --help                            help for start
      --insecure-discovery              accept insecure SRV records
      --listen-addr string              listen address (default \"127.0.0.1:23790\")
      --retry-delay duration            duration of delay before retrying failed endpoints (default 1m0s)
      --trusted-ca-file string          path to the client server TLS CA file for verifying the discovered endpoints when discovery-srv is provided.
";

/// What the gateway command line asks for.
#[derive(Debug)]
enum Parsed {
    Help,
    Run(GatewayConfig, String),
}

/// Parses the arguments after `gateway`. Errors are cobra's (`unknown flag: --x`). As cobra
/// does, the flags may come before the `start` subcommand (etcd's e2e TestGateway runs
/// `etcd gateway --endpoints=... start`): the first argument that is neither a flag nor a
/// flag's value names the subcommand.
fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut command = None;
    let mut flags: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if command.is_none() && !arg.starts_with('-') {
            command = Some(arg.as_str());
            continue;
        }
        flags.push(arg.clone());
        // cobra's stripFlags: before the subcommand, `--flag value` takes the next argument.
        let takes_value = arg.starts_with("--")
            && !arg.contains('=')
            && !["--insecure-discovery", "--help"].contains(&arg.as_str());
        if command.is_none() && takes_value && i < args.len() {
            flags.push(args[i].clone());
            i += 1;
        }
    }
    match command {
        Some("start") => {}
        None => return Ok(Parsed::Help),
        Some(other) => return Err(format!("unknown command {other:?} for \"detcd gateway\"")),
    }
    let args = flags;
    let mut cfg = GatewayConfig {
        listen_addr: "127.0.0.1:23790".into(),
        endpoints: vec!["127.0.0.1:2379".into()],
        endpoints_given: false,
        discovery_srv: String::new(),
        discovery_srv_name: String::new(),
        insecure_discovery: false,
        trusted_ca_file: String::new(),
        retry_delay: Duration::from_secs(60),
    };
    let mut resolver = String::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unknown command {arg:?} for \"detcd gateway start\""
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if name == "insecure-discovery" {
            cfg.insecure_discovery = match inline.as_deref() {
                None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") | Some("True") => true,
                Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") | Some("False") => false,
                Some(v) => {
                    return Err(format!(
                        "invalid argument {v:?} for \"--insecure-discovery\" flag: strconv.ParseBool: parsing {v:?}: invalid syntax"
                    ))
                }
            };
            continue;
        }
        let known = [
            "listen-addr",
            "discovery-srv",
            "discovery-srv-name",
            "discovery-srv-resolver",
            "trusted-ca-file",
            "endpoints",
            "retry-delay",
        ];
        if !known.contains(&name) {
            return Err(format!("unknown flag: --{name}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("flag needs an argument: --{name}"))?,
        };
        match name {
            "listen-addr" => cfg.listen_addr = value,
            "discovery-srv" => cfg.discovery_srv = value,
            "discovery-srv-name" => cfg.discovery_srv_name = value,
            "discovery-srv-resolver" => {
                detcd_net::dns::parse_resolver_addr(&value).map_err(|e| {
                    format!("invalid argument {value:?} for \"--discovery-srv-resolver\" flag: {e}")
                })?;
                resolver = value;
            }
            "trusted-ca-file" => cfg.trusted_ca_file = value,
            "endpoints" => {
                cfg.endpoints = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                cfg.endpoints_given = true;
            }
            "retry-delay" => {
                let ms = crate::cli::parse_go_duration_ms(&value).map_err(|e| {
                    format!("invalid argument {value:?} for \"--retry-delay\" flag: {e}")
                })?;
                cfg.retry_delay = Duration::from_millis(ms.max(1));
            }
            _ => unreachable!("known flags are matched above"),
        }
    }
    Ok(Parsed::Run(cfg, resolver))
}

/// Runs `detcd gateway ...`; returns the exit status (1 for any error, as etcd's gateway).
pub async fn run(args: Vec<String>) -> u8 {
    match parse(&args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            0
        }
        Err(e) => {
            eprintln!("Error: {e}");
            eprint!("{HELP}");
            1
        }
        Ok(Parsed::Run(cfg, resolver)) => {
            let _ = crate::logging::init(
                detcd_core::config::Logger::Text,
                &["default".to_string()],
                "info",
            );
            let dns = match detcd_net::dns::SystemDns::new(&resolver) {
                Ok(d) => std::sync::Arc::new(d),
                Err(e) => {
                    eprintln!("detcd gateway: {e}");
                    return 1;
                }
            };
            match run_gateway(cfg, dns).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn etcds_flags_and_defaults() {
        let Ok(Parsed::Run(c, r)) = parse(&args(&["start"])) else {
            panic!()
        };
        assert_eq!(c.listen_addr, "127.0.0.1:23790");
        assert_eq!(c.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(c.retry_delay, Duration::from_secs(60));
        assert!(!c.insecure_discovery && r.is_empty());
        let Ok(Parsed::Run(c, r)) = parse(&args(&[
            "start",
            "--discovery-srv=example.com",
            "--discovery-srv-name",
            "foo",
            "--insecure-discovery",
            "--listen-addr",
            "127.0.50.1:23790",
            "--endpoints=a:1,b:2",
            "--retry-delay=1.5s",
            "--discovery-srv-resolver=127.0.0.1:5353",
            "--trusted-ca-file",
            "ca.crt",
        ])) else {
            panic!()
        };
        assert_eq!(c.discovery_srv, "example.com");
        assert_eq!(c.discovery_srv_name, "foo");
        assert!(c.insecure_discovery);
        assert_eq!(c.endpoints, ["a:1", "b:2"]);
        assert!(c.endpoints_given);
        assert_eq!(c.retry_delay, Duration::from_millis(1500));
        assert_eq!(r, "127.0.0.1:5353");
        assert_eq!(c.trusted_ca_file, "ca.crt");
    }

    /// cobra takes the subcommand's flags before its name too (etcd's e2e TestGateway).
    #[test]
    fn flags_may_come_before_start() {
        for argv in [
            &["--endpoints=a:1,b:2", "start"][..],
            &["--endpoints", "a:1,b:2", "start"][..],
            &["--endpoints", "a:1", "start", "--endpoints=a:1,b:2"][..],
        ] {
            let Ok(Parsed::Run(c, _)) = parse(&args(argv)) else {
                panic!("{argv:?}")
            };
            assert_eq!(c.endpoints, ["a:1", "b:2"], "{argv:?}");
        }
        let Ok(Parsed::Run(c, _)) = parse(&args(&["--insecure-discovery", "start"])) else {
            panic!()
        };
        assert!(c.insecure_discovery);
    }

    #[test]
    fn errors_are_cobras() {
        assert_eq!(
            parse(&args(&["start", "--bogus"])).unwrap_err(),
            "unknown flag: --bogus"
        );
        assert_eq!(
            parse(&args(&["start", "--listen-addr"])).unwrap_err(),
            "flag needs an argument: --listen-addr"
        );
        assert!(parse(&args(&["start", "--retry-delay=abc"])).is_err());
        assert!(matches!(parse(&args(&[])), Ok(Parsed::Help)));
        assert!(matches!(parse(&args(&["--help"])), Ok(Parsed::Help)));
        assert_eq!(
            parse(&args(&["stop"])).unwrap_err(),
            "unknown command \"stop\" for \"detcd gateway\""
        );
    }
}
