//! The end-to-end harness: real `detcd` processes on loopback, driven by `etcdctl` and the
//! `etcd-client` crate.
//!
//! - The binary is `$DETCD_BIN`, else `<workspace>/target/debug/detcd` (`tools/test` builds it
//!   first). Pointing `DETCD_BIN` at a real `etcd` runs the same scenarios against etcd, which is
//!   how the tests themselves are checked (only the guide's detcd-specific messages differ).
//! - Each member's stdout and stderr go to files in a per-cluster temp dir; the dir is removed on
//!   drop, and if the test is failing (panicking) every member's log tail is printed first.
//! - Members are killed with SIGKILL and reaped on drop.
//! - Every wait polls a condition against a deadline and panics with a message saying what it
//!   waited for plus the relevant logs; there are no fixed sleeps standing in for conditions.
//!
//! Addresses: test scenario N runs its members on 127.0.N.10, .11, .12 (.13 for an extra
//! process), client port 2379 and peer port 2380 on each: the guide's 10.0.1.10-12 layout, one
//! /24 per scenario so the scenarios can run in parallel (see [`subnet`]). Linux routes all of
//! 127.0.0.0/8 to `lo`, so no setup is needed. 127.0.0.1:2379 is deliberately never used: a
//! developer's own etcd (or detcd) may be listening there, and three members on one machine could
//! not all bind it anyway, although the guide's per-machine commands add
//! `--listen-client-urls ...,http://127.0.0.1:2379` to every member (one member per machine there).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use etcd_client;

/// The third octet of each scenario's loopback addresses (127.0.N.10-13). One entry per test
/// function that starts processes which might bind addresses; keep them distinct.
pub mod subnet {
    /// The guide's own example: exactly 127.0.1.10-12, so the member and cluster IDs are the
    /// ones measured with etcd 3.4.23 (etcd-facts.md §1).
    pub const GUIDE_STATIC: u8 = 1;
    pub const ETCD_CLIENT_CRATE: u8 = 2;
    pub const KILL_LEADER_AND_FOLLOWER: u8 = 3;
    pub const BOOTSTRAP_NAME_NOT_LISTED: u8 = 4;
    pub const BOOTSTRAP_URL_MISMATCH: u8 = 5;
    pub const BOOTSTRAP_CLUSTER_ID_CONFLICT: u8 = 6;
    pub const ENV_ONLY: u8 = 7;
    pub const ENV_SHADOWED: u8 = 8;
    pub const BAD_FLAGS: u8 = 9;
    pub const HTTP_ENDPOINTS: u8 = 10;
    pub const GRPC_ERRORS: u8 = 11;
    /// `--version` binds nothing, but the harness probes its ports before starting it, and that
    /// probe must not collide with BAD_FLAGS' members running in parallel.
    pub const VERSION: u8 = 12;
    pub const DAMAGED_WAL: u8 = 13;
    pub const SNAPSHOT_CATCH_UP: u8 = 14;
    pub const RECONFIGURATION: u8 = 15;
    pub const RECONFIG_ERRORS: u8 = 16;
    pub const RECONFIG_ONE: u8 = 17;
    pub const FORCE_NEW_CLUSTER: u8 = 18;
    pub const AUTO_PROMOTE: u8 = 19;
    pub const WATCH_LEASE_ETCDCTL: u8 = 20;
    pub const CONCURRENCY_CLIENT: u8 = 21;
    pub const KUBERNETES_TRAFFIC: u8 = 22;
    pub const LEASE_RESTART: u8 = 23;
    pub const OPERATOR_FLAGS: u8 = 24;
    pub const OPERATOR_COMPACTION: u8 = 25;
    pub const QUOTA_ALARM: u8 = 26;
    pub const KUBEADM: u8 = 27;
    pub const DISCOVERY_NEW: u8 = 28;
    pub const DISCOVERY_ETCD_MEMBERS: u8 = 29;
    pub const DISCOVERY_ETCD_HOST: u8 = 30;
    pub const DISCOVERY_ERRORS: u8 = 31;
    pub const DISCOVERY_HOST_CLUSTER: u8 = 32;
    /// etcd 3.6's v3 discovery (`--discovery-token`, `--discovery-endpoints`).
    pub const DISCOVERY_V3: u8 = 33;
    pub const V2_KEYS_VS_ETCD: u8 = 34;
    pub const DISCOVERY_HTTPS_PROXY: u8 = 35;
    /// `unix://` peer and client URLs (tests/tests/unix_sockets.rs).
    pub const UNIX_SOCKETS: u8 = 39;
    pub const V2_MEMBERS_VS_ETCD: u8 = 38;
    /// `--max-concurrent-streams` and the gRPC keepalive on the client port.
    pub const HTTP2_SETTINGS: u8 = 37;
    // TLS (tests/tests/tls.rs): 127.0.40.x-127.0.44.x.
    pub const TLS_GUIDE: u8 = 40;
    pub const TLS_PEER_OTHER_CA: u8 = 41;
    pub const TLS_AUTO: u8 = 42;
    pub const TLS_ROTATION: u8 = 43;
    pub const TLS_STARTUP_ERRORS: u8 = 44;
    pub const TLS_ALLOWED_CN: u8 = 45;
    /// --client-crl-file, --client-cert-allowed-hostname, --tls-min/max-version.
    pub const TLS_CRL: u8 = 46;
    /// etcd's SAN check of peer client certificates.
    pub const TLS_PEER_SAN: u8 = 47;
    // DNS SRV discovery and the gateway (tests/tests/srv_discovery.rs): 127.0.50.x-59.x.
    pub const SRV_GUIDE_NAMES: u8 = 50;
    pub const SRV_GUIDE_IPS: u8 = 51;
    pub const SRV_NAME_SUFFIX: u8 = 52;
    pub const SRV_SSL: u8 = 53;
    pub const SRV_SSL_NO_DOMAIN_SAN: u8 = 54;
    pub const SRV_ERRORS: u8 = 55;
    pub const SRV_GATEWAY: u8 = 56;
    // Metrics and health (tests/tests/metrics_health.rs): 127.0.60.x-127.0.69.x.
    pub const METRICS_CLUSTER: u8 = 60;
    pub const METRICS_HEALTH_ENDPOINTS: u8 = 61;
    pub const METRICS_ETCD_E2E: u8 = 62;
    pub const METRICS_TLS: u8 = 63;
    pub const METRICS_MEMBER_REMOVED: u8 = 64;
    // Maintenance calls (tests/tests/maintenance.rs): 127.0.70.x-127.0.72.x.
    pub const MAINTENANCE_MOVE_LEADER: u8 = 70;
    pub const MAINTENANCE_SNAPSHOT: u8 = 71;
    pub const MAINTENANCE_RESTORED: u8 = 72;
    /// SIGTERM and SIGINT (tests/tests/graceful_stop.rs).
    pub const GRACEFUL_STOP: u8 = 73;
}

pub mod dns;
pub mod tls;

/// The guide's `--initial-cluster-token`.
pub const GUIDE_TOKEN: &str = "etcd-cluster-1";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// How long a freshly started cluster gets to report healthy (debug build, 2 cores, other tests
/// running alongside; etcd itself takes ~1.3 s).
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// `127.0.<subnet>.<10 + index>`.
pub fn ip(subnet: u8, index: usize) -> String {
    format!("127.0.{subnet}.{}", 10 + index)
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The server under test: `$DETCD_BIN` (a relative path is taken from the workspace root, since
/// cargo runs tests in the package dir), else `<workspace>/target/debug/detcd`.
pub fn detcd_bin() -> PathBuf {
    let bin = match std::env::var_os("DETCD_BIN") {
        Some(p) if !p.is_empty() => workspace_root().join(p),
        _ => workspace_root().join("target/debug/detcd"),
    };
    assert!(
        bin.is_file(),
        "the detcd binary {} does not exist: run `cargo build --bin detcd` (tools/test does) or set DETCD_BIN",
        bin.display()
    );
    bin
}

/// A deadline for one wait, with a description for the panic message.
pub struct Deadline {
    end: Instant,
    what: String,
    timeout: Duration,
}

impl Deadline {
    pub fn new(timeout: Duration, what: impl Into<String>) -> Self {
        Deadline {
            end: Instant::now() + timeout,
            what: what.into(),
            timeout,
        }
    }
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }
    /// Panics (with `last`, the most recent observation) once the deadline has passed.
    pub fn check(&self, last: &dyn std::fmt::Display) {
        if self.expired() {
            panic!(
                "timed out after {:?} waiting for {}; last observation: {last}",
                self.timeout, self.what
            );
        }
    }
    /// The pause between two polls.
    pub fn pause(&self) {
        std::thread::sleep(Duration::from_millis(100));
    }
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }
}

/// A directory under the system temp dir, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "detcd-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DETCD_KEEP_TEST_DIRS").is_some() {
            eprintln!("keeping {}", self.0.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The last `n` lines of a file (or a note that it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// One `detcd` process (and its restarts) with its own data dir and log files.
pub struct Member {
    pub name: String,
    /// The loopback address it listens on (client port 2379, peer port 2380).
    pub ip: String,
    /// Command-line arguments for the next start.
    pub args: Vec<String>,
    /// Environment for the next start, on top of the test's environment minus any `ETCD_*`.
    pub env: Vec<(String, String)>,
    pub data_dir: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// The status of the last process that exited (or was killed).
    pub last_exit: Option<ExitStatus>,
    /// Set when the client port speaks TLS: `client_url` is then `https://` and health checks
    /// go through curl with these files.
    pub client_tls: Option<tls::ClientFiles>,
    /// The process's working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// The binary to run instead of detcd (a real etcd, for interop tests).
    pub bin: Option<PathBuf>,
}

impl Member {
    fn new(
        dir: &Path,
        name: &str,
        ip: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Self {
        Member {
            name: name.to_string(),
            ip,
            args,
            env,
            data_dir: dir.join(format!("{name}.etcd")),
            stdout_path: dir.join(format!("{name}.stdout.log")),
            stderr_path: dir.join(format!("{name}.stderr.log")),
            child: None,
            starts: 0,
            last_exit: None,
            client_tls: None,
            cwd: None,
            bin: None,
        }
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip)
    }
    pub fn peer_url(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }
    /// `ip:2379`, as etcdctl prints endpoints.
    pub fn client_addr(&self) -> String {
        format!("{}:{CLIENT_PORT}", self.ip)
    }

    /// Starts the process with `args` and `env`; output is appended to the member's log files,
    /// each start preceded by a marker line with the command.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.check_ports_free();
        self.starts += 1;
        let bin = self.bin.clone().unwrap_or_else(detcd_bin);
        let banner = format!(
            "===== start #{} of {}: {}{} {}\n",
            self.starts,
            self.name,
            self.env
                .iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>(),
            bin.display(),
            self.args.join(" ")
        );
        let open = |p: &Path| -> File {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("opening {}: {e}", p.display()));
            f.write_all(banner.as_bytes()).unwrap();
            f
        };
        let mut cmd = Command::new(&bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(open(&self.stdout_path))
            .stderr(open(&self.stderr_path));
        scrub_env(&mut cmd);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// Panics if something else already listens on this member's ports: then health checks
    /// would talk to that process instead (a developer's cluster on the guide's addresses, or a
    /// leftover from an interrupted run).
    fn check_ports_free(&self) {
        for port in [CLIENT_PORT, PEER_PORT] {
            if let Err(e) = std::net::TcpListener::bind((self.ip.as_str(), port)) {
                panic!(
                    "cannot start {}: {}:{port} is not free ({e}); something else listens there \
                     (see `ss -ltnp | grep {}`): stop it and rerun",
                    self.name, self.ip, self.ip
                );
            }
        }
    }

    /// `kill -9` and reap. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.last_exit = child.wait().ok();
        }
    }

    /// Sends the signal `name` (`TERM`, `INT`, ...) with kill(1); the process keeps running
    /// until it exits by itself ([`Member::wait_exit`]).
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("the member is running");
        let ok = Command::new("kill")
            .args(["-s", name, &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -s {name} {} failed", self.name);
    }

    /// Whether the process is alive (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// Waits for the process to exit by itself; panics (after killing it) if it is still running
    /// at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Deadline::new(timeout, format!("{} to exit", self.name));
        loop {
            if !self.is_running() {
                return self
                    .last_exit
                    .expect("a process that was started has an exit status");
            }
            if deadline.expired() {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?} (killed it)\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of stderr and stdout, labelled.
    pub fn log_tail(&self, n: usize) -> String {
        format!(
            "----- {} stderr ({}) -----\n{}\n----- {} stdout -----\n{}\n",
            self.name,
            self.stderr_path.display(),
            tail(&self.stderr_path, n),
            self.name,
            tail(&self.stdout_path, n)
        )
    }

    /// Polls `GET /health` until it answers 200 with `"health":"true"`. Panics if the process
    /// exits or the deadline passes.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Deadline::new(
            timeout,
            format!("{} ({}) to report healthy", self.name, self.client_url()),
        );
        loop {
            if !self.is_running() {
                panic!(
                    "{} exited ({:?}) while waiting for it to become healthy\n{}",
                    self.name,
                    self.last_exit,
                    self.log_tail(40)
                );
            }
            let got = match &self.client_tls {
                Some(files) => tls::curl(&format!("{}/health", self.client_url()), files)
                    .map_err(std::io::Error::other),
                None => http_get(&self.client_addr(), "/health", Duration::from_secs(2)),
            };
            let last = match got {
                Ok((200, body)) if is_healthy_body(&body) => return,
                Ok((code, body)) => format!("HTTP {code} {body:?}"),
                Err(e) => format!("error: {e}"),
            };
            if deadline.expired() {
                panic!(
                    "timed out after {timeout:?} waiting for {} ({}) to report healthy; last /health: {last}\n{}",
                    self.name,
                    self.client_url(),
                    self.log_tail(40)
                );
            }
            deadline.pause();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `{"health":"true"}` (etcd 3.4.23 may add a `reason` field).
pub fn is_healthy_body(body: &str) -> bool {
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    compact.starts_with('{') && compact.contains(r#""health":"true""#)
}

/// Removes inherited etcd/etcdctl variables so a developer's environment cannot change a test.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("ETCD_") || k.starts_with("ETCDCTL_") {
            cmd.env_remove(&*k);
        }
    }
}

/// The flags of the guide's static example for member `index` of `size`, with the guide's
/// addresses mapped to 127.0.<subnet>.x and a data dir in `dir`.
pub fn guide_args(dir: &Path, subnet: u8, index: usize, size: usize, token: &str) -> Vec<String> {
    let name = format!("infra{index}");
    let me = ip(subnet, index);
    let initial_cluster = (0..size)
        .map(|i| format!("infra{i}=http://{}:{PEER_PORT}", ip(subnet, i)))
        .collect::<Vec<_>>()
        .join(",");
    [
        "--name",
        &name,
        "--initial-advertise-peer-urls",
        &format!("http://{me}:{PEER_PORT}"),
        "--listen-peer-urls",
        &format!("http://{me}:{PEER_PORT}"),
        "--listen-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--advertise-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--initial-cluster-token",
        token,
        "--initial-cluster",
        &initial_cluster,
        "--initial-cluster-state",
        "new",
        "--data-dir",
        &dir.join(format!("{name}.etcd")).to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Replaces the value of `--flag` in `args` (which must contain it).
pub fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[i + 1] = value.to_string();
}

/// A set of members sharing one temp dir. Dropping it kills every member, prints their logs if
/// the test is failing, and removes the dir.
pub struct Cluster {
    // Field order matters: members are killed before the dir is removed.
    pub members: Vec<Member>,
    pub subnet: u8,
    dir: TempDir,
}

impl Cluster {
    /// No members yet.
    pub fn empty(label: &str, subnet: u8) -> Self {
        Cluster {
            members: Vec::new(),
            subnet,
            dir: TempDir::new(label),
        }
    }

    /// The guide's static cluster of `size` members (infra0..), configured but not started.
    pub fn guide(label: &str, subnet: u8, size: usize, token: &str) -> Self {
        let mut c = Cluster::empty(label, subnet);
        for i in 0..size {
            let args = guide_args(c.dir(), subnet, i, size, token);
            c.add(&format!("infra{i}"), ip(subnet, i), args, vec![]);
        }
        c
    }

    /// Starts the guide's static cluster and waits until every member is healthy.
    pub fn start_guide(
        label: &str,
        subnet: u8,
        size: usize,
        token: &str,
        extra_args: &[&str],
    ) -> Self {
        let mut c = Cluster::guide(label, subnet, size, token);
        for m in &mut c.members {
            m.args.extend(extra_args.iter().map(|s| s.to_string()));
        }
        c.start_all();
        c.wait_healthy(HEALTHY_TIMEOUT);
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a member (not started) and returns its index.
    pub fn add(
        &mut self,
        name: &str,
        ip: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> usize {
        self.members
            .push(Member::new(self.dir.path(), name, ip, args, env));
        self.members.len() - 1
    }

    pub fn start_all(&mut self) {
        for m in &mut self.members {
            m.start();
        }
    }

    /// Waits until every running member is healthy.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let start = Instant::now();
        for m in &mut self.members {
            if m.child.is_some() {
                m.wait_healthy(
                    timeout
                        .saturating_sub(start.elapsed())
                        .max(Duration::from_secs(1)),
                );
            }
        }
    }

    /// The client URLs of all members (`http://ip:2379`).
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    /// Every started member's log tail.
    pub fn logs(&self, n: usize) -> String {
        self.members
            .iter()
            .filter(|m| m.starts > 0)
            .map(|m| m.log_tail(n))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "\n===== member logs (test failed; dir {}) =====\n{}",
                self.dir.path().display(),
                self.logs(60)
            );
        }
    }
}

/// A minimal HTTP/1.1 GET (`Connection: close`): returns the status code and the body
/// (de-chunked if needed).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None, timeout)
}

/// A minimal HTTP/1.1 request (`Connection: close`) with an optional form body
/// (`application/x-www-form-urlencoded`, as `curl -d` sends): the status code and the body.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    form: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let body = form.map(|f| ("application/x-www-form-urlencoded", f));
    http_request_with(addr, method, path, body, timeout)
}

/// [`http_request`] with a body of any content type: `(content type, body)`.
pub fn http_request_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    match body {
        None => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )?,
        Some((content_type, body)) => write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?,
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("no end of headers in {:?}", String::from_utf8_lossy(&raw)),
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("bad status line in {head:?}"),
            )
        })?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body =
            dechunk(&body).ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad chunked body"))?;
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// etcdctl

/// The `etcdctl` to use: `$DETCD_ETCDCTL` if set (a path; a missing file counts as not
/// installed), else `etcdctl` from PATH.
fn etcdctl_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DETCD_ETCDCTL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcdctl"))
        .find(|p| p.is_file())
}

/// Whether a test that needs etcdctl can run. With `CI=true` a missing etcdctl fails the test;
/// elsewhere it prints the skip notice and returns false (the test then returns early).
pub fn have_etcdctl() -> bool {
    if etcdctl_path().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("etcdctl is not installed, and CI=true requires it (apt-get install etcd-client)");
    }
    println!("skipped: etcdctl not installed (apt-get install etcd-client)");
    false
}

/// The real etcd server (Debian's `etcd-server`, etcd 3.4) for interop tests:
/// `$DETCD_ETCD` if set, else `etcd` from PATH.
pub fn etcd_server_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DETCD_ETCD").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Whether a test that runs a real etcd can run: with `CI=true` a missing etcd fails the
/// test; elsewhere it prints the skip notice and returns false.
pub fn have_etcd_server() -> bool {
    if etcd_server_path().is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("etcd is not installed, and CI=true requires it (apt-get install etcd-server)");
    }
    println!("skipped: etcd not installed (apt-get install etcd-server)");
    false
}

/// What one etcdctl run printed.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` -> {}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Starts `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args>` with piped output, in an
/// environment without the developer's ETCD*/ETCDCTL* variables; returns it and its command
/// line (for messages).
fn spawn_etcdctl(endpoints: &[String], args: &[&str], stdin: Stdio) -> (Child, String) {
    let bin = etcdctl_path().expect("etcdctl not installed (call have_etcdctl() first)");
    let eps = format!("--endpoints={}", endpoints.join(","));
    let command = format!("ETCDCTL_API=3 etcdctl {eps} {}", args.join(" "));
    let mut cmd = Command::new(&bin);
    scrub_env(&mut cmd);
    cmd.env("ETCDCTL_API", "3")
        .arg(&eps)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
    (child, command)
}

/// Runs `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args>`, feeding `stdin`, killed after
/// 30 s (etcdctl's own dial and command timeouts are shorter).
pub fn etcdctl_stdin(endpoints: &[String], args: &[&str], stdin: &str) -> CtlOutput {
    let (mut child, command) = spawn_etcdctl(endpoints, args, Stdio::piped());
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Deadline::new(Duration::from_secs(30), command.clone());
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for etcdctl") {
            break st;
        }
        if deadline.expired() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{command}` did not finish within 30 s (killed it)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    CtlOutput {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        command,
    }
}

/// Runs etcdctl with no input.
pub fn etcdctl(endpoints: &[String], args: &[&str]) -> CtlOutput {
    etcdctl_stdin(endpoints, args, "")
}

/// Runs etcdctl and panics unless it exits 0.
pub fn etcdctl_ok(endpoints: &[String], args: &[&str]) -> CtlOutput {
    let out = etcdctl(endpoints, args);
    assert!(out.success(), "etcdctl failed: {out}");
    out
}

/// A long-running etcdctl (watch, lock, elect, keep-alive) whose output is read as it
/// comes. Killed (SIGKILL) and reaped on drop.
pub struct CtlProcess {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub command: String,
}

impl CtlProcess {
    /// Starts `ETCDCTL_API=3 etcdctl --endpoints=<endpoints> <args>`.
    pub fn start(endpoints: &[String], args: &[&str]) -> CtlProcess {
        let (mut child, command) = spawn_etcdctl(endpoints, args, Stdio::null());
        let collect = |mut r: Box<dyn Read + Send>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let into = buf.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    into.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        CtlProcess {
            child,
            stdout,
            stderr,
            command,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stdout satisfies `done` (or panics after `timeout`, showing the output).
    pub fn wait_stdout(&mut self, timeout: Duration, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Deadline::new(timeout, format!("`{}` to print {what}", self.command));
        loop {
            let out = self.stdout();
            if done(&out) {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            deadline.check(&format!(
                "exit {exited:?}\nstdout:\n{out}\nstderr:\n{}",
                self.stderr()
            ));
            deadline.pause();
        }
    }

    /// Sends SIGTERM (etcdctl resigns or unlocks on it) and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Deadline::new(
            Duration::from_secs(10),
            format!("`{}` to exit", self.command),
        );
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for etcdctl") {
                return st;
            }
            deadline.check(&self.stderr());
            deadline.pause();
        }
    }

    /// SIGKILL: the process ends without cleaning up (its lease is left to expire).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CtlProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// JSON without a JSON library: etcdctl's and etcd's JSON is flat enough for field extraction.

/// Every unsigned number that follows `"key":` in `json`, in order.
pub fn json_u64s(json: &str, key: &str) -> Vec<u64> {
    let pat = format!("\"{key}\":");
    let mut out = Vec::new();
    let mut rest = json;
    while let Some(i) = rest.find(&pat) {
        rest = rest[i + pat.len()..].trim_start();
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// etcd-client

/// A tokio runtime for a (synchronous) test's client calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Connection options with short timeouts, so a dead member fails a call instead of hanging it.
pub fn client_options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
}

/// An etcd-client connected to `endpoints` (`http://ip:2379`); retried until a 15 s deadline.
pub async fn connect(endpoints: &[String]) -> etcd_client::Client {
    let deadline = Deadline::new(
        Duration::from_secs(15),
        format!("etcd-client to connect to {endpoints:?}"),
    );
    loop {
        let err = match tokio::time::timeout(
            Duration::from_secs(5),
            etcd_client::Client::connect(endpoints, Some(client_options())),
        )
        .await
        {
            Ok(Ok(c)) => return c,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        deadline.check(&err);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Awaits `fut` for at most `secs` seconds; panics naming `what` on timeout.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not complete within {secs} s"),
    }
}

/// The gRPC status message of an etcd-client error, or the error's text.
pub fn grpc_message(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}
