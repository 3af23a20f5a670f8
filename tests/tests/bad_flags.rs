//! Malformed command lines exit naming the flag, with etcd's status: 2 for what Go's flag
//! package refuses (an unknown flag, a value its type cannot parse), 1 for values etcd checks
//! later (`--initial-cluster`); --version exits 0. etcd 3.4.23 exits the same way for each case.

use detcd_tests::{ip, subnet, Cluster, CLIENT_PORT, PEER_PORT};
use std::time::Duration;

/// Runs detcd with safe addresses and a temp data dir plus `extra`, so that a flag that is wrongly
/// accepted cannot bind anybody else's port. Returns (exit code, stdout, stderr).
fn run(label: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut c = Cluster::empty(label, subnet::BAD_FLAGS);
    let me = ip(c.subnet, 0);
    let mut args: Vec<String> = vec![
        "--name".into(),
        "infra0".into(),
        "--data-dir".into(),
        c.dir().join("infra0.etcd").to_string_lossy().into_owned(),
        "--listen-peer-urls".into(),
        format!("http://{me}:{PEER_PORT}"),
        "--initial-advertise-peer-urls".into(),
        format!("http://{me}:{PEER_PORT}"),
    ];
    // Client URLs only when the case is not about them.
    if !extra.contains(&"--listen-client-urls") {
        args.extend([
            "--listen-client-urls".into(),
            format!("http://{me}:{CLIENT_PORT}"),
            "--advertise-client-urls".into(),
            format!("http://{me}:{CLIENT_PORT}"),
        ]);
    } else {
        args.extend([
            "--advertise-client-urls".into(),
            format!("http://{me}:{CLIENT_PORT}"),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let i = c.add("infra0", me, args, vec![]);
    c.members[i].start();
    let status = c.members[i].wait_exit(Duration::from_secs(10));
    (status.code(), c.members[i].stdout(), c.members[i].stderr())
}

/// Returns a description of what is wrong, if anything: the run must exit `want` with stderr
/// naming `flag`.
fn check_rejected(label: &str, extra: &[&str], want: i32, flag: &str) -> Option<String> {
    let (code, _, stderr) = run(label, extra);
    if code != Some(want) || !stderr.contains(flag) {
        return Some(format!(
            "{extra:?}: want exit {want} and stderr naming {flag:?}; got exit {code:?}, stderr:\n{stderr}"
        ));
    }
    None
}

// One test function (not four) because every case uses the same addresses; all cases run and
// every failure is reported.
#[test]
fn bad_flags_exit_naming_the_flag() {
    let failures: Vec<String> = [
        check_rejected(
            "unknown_flag",
            &["--no-such-flag", "x"],
            2,
            "flag provided but not defined: -no-such-flag",
        ),
        check_rejected(
            "snapshot_count",
            &["--snapshot-count", "abc"],
            2,
            "invalid value \"abc\" for flag -snapshot-count: parse error",
        ),
        check_rejected(
            "initial_cluster",
            &["--initial-cluster", "infra0"],
            1,
            "initial-cluster",
        ),
        check_rejected(
            "listen_client_urls",
            &["--listen-client-urls", "notaurl"],
            2,
            "listen-client-urls",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn version_exits_0() {
    let mut c = Cluster::empty("version", subnet::VERSION);
    let i = c.add("version", ip(c.subnet, 0), vec!["--version".into()], vec![]);
    c.members[i].start();
    let status = c.members[i].wait_exit(Duration::from_secs(10));
    let stdout = c.members[i].stdout();
    assert_eq!(status.code(), Some(0), "{}", c.members[i].log_tail(20));
    assert!(stdout.contains("Version"), "stdout: {stdout}");
}
