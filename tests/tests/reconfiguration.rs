//! Runtime reconfiguration with real processes and unmodified etcdctl 3.4: grow a cluster with
//! a learner and a voter, promote, remove the leader, replace a member that lost its data dir,
//! move a member to new peer URLs, all under a write load whose acknowledged writes must all
//! survive; and the join and `--strict-reconfig-check` errors, end to end.

use detcd_tests::etcd_client::{Client, GetOptions};
use detcd_tests::{
    client_options, etcdctl, have_etcdctl, ip, runtime, subnet, Cluster, Deadline, CLIENT_PORT,
    HEALTHY_TIMEOUT, PEER_PORT,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "reconfiguration";

/// One row of `etcdctl member list`: ID, started, name, peer URLs, client URLs, learner.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    started: bool,
    name: String,
    peer_urls: String,
    learner: bool,
}

fn member_list(endpoints: &[String]) -> Vec<Row> {
    let out = etcdctl(endpoints, &["member", "list"]);
    assert!(out.success(), "member list failed: {out}");
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(", ").collect();
            assert_eq!(f.len(), 6, "unexpected member list line {l:?}");
            Row {
                id: f[0].to_string(),
                started: f[1] == "started",
                name: f[2].to_string(),
                peer_urls: f[3].to_string(),
                learner: f[5] == "true",
            }
        })
        .collect()
}

fn id_of(endpoints: &[String], name: &str) -> String {
    member_list(endpoints)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} not in the member list"))
        .id
}

/// Runs an etcdctl membership command until it succeeds, retrying only while the cluster says
/// it is not ready for it (right after a start every peer has been connected for less than
/// etcd's 5 s health interval; a new learner needs a moment to catch up before its
/// promotion). Anything else fails the test: a leader change or a lost forward must be
/// handled by the server, which retries within its request timeout (hence etcdctl's longer
/// command timeout here).
fn ctl_until_ok(endpoints: &[String], args: &[&str]) -> detcd_tests::CtlOutput {
    let deadline = Deadline::new(Duration::from_secs(40), format!("etcdctl {args:?}"));
    let mut with_timeout = vec!["--command-timeout=15s"];
    with_timeout.extend_from_slice(args);
    loop {
        let out = etcdctl(endpoints, &with_timeout);
        if out.success() {
            return out;
        }
        let retryable = ["unhealthy cluster", "in sync with leader"]
            .iter()
            .any(|m| out.stderr.contains(m));
        assert!(retryable, "etcdctl failed: {out}");
        deadline.check(&out);
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The `ETCD_*=".."` lines `member add` prints, as environment variables.
fn printed_env(stdout: &str) -> Vec<(String, String)> {
    let env: Vec<(String, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    assert_eq!(env.len(), 4, "member add printed {stdout:?}");
    env
}

/// The command line of a member started from `member add`'s printed lines: only its listen
/// URLs and data dir (as the guide says to start it). `args[1]` is the peer listen URL.
fn joining_args(me: &str, data_dir: &std::path::Path) -> Vec<String> {
    [
        "--listen-peer-urls",
        &format!("http://{me}:{PEER_PORT}"),
        "--listen-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--advertise-client-urls",
        &format!("http://{me}:{CLIENT_PORT}"),
        "--data-dir",
        &data_dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Adds a member to `c` that starts from `member add`'s printed lines ([`joining_args`]).
fn start_added(c: &mut Cluster, name: &str, index: usize, printed: &str) -> usize {
    let me = ip(c.subnet, index);
    let args = joining_args(&me, &c.dir().join(format!("{name}.etcd")));
    let i = c.add(name, me, args, printed_env(printed));
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    i
}

/// Waits until `name` is listed as started (it published its name and client URLs).
fn wait_started(endpoints: &[String], name: &str) -> Row {
    let deadline = Deadline::new(
        Duration::from_secs(30),
        format!("{name} to be listed as started"),
    );
    loop {
        let rows = member_list(endpoints);
        if let Some(r) = rows.iter().find(|r| r.name == name && r.started) {
            return r.clone();
        }
        deadline.check(&format!("{rows:?}"));
        deadline.pause();
    }
}

/// `endpoint status` of one member: (is leader, is learner).
fn role(endpoint: &str) -> Option<(bool, bool)> {
    let out = etcdctl(&[endpoint.to_string()], &["endpoint", "status"]);
    if !out.success() {
        return None;
    }
    let f: Vec<&str> = out.stdout.trim().split(", ").collect();
    Some((f.get(4) == Some(&"true"), f.get(5) == Some(&"true")))
}

/// Puts distinct keys one at a time until stopped, to whichever of the current endpoints
/// answers, and records the acknowledged ones.
struct Load {
    stop: Arc<AtomicBool>,
    endpoints: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<BTreeMap<String, String>>>,
}

impl Load {
    fn start(endpoints: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let endpoints = Arc::new(Mutex::new(endpoints));
        let (s, e) = (stop.clone(), endpoints.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut acked = BTreeMap::new();
                let mut client: Option<Client> = None;
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    if client.is_none() {
                        let eps = e.lock().unwrap().clone();
                        client = tokio::time::timeout(
                            Duration::from_secs(5),
                            Client::connect(eps, Some(client_options())),
                        )
                        .await
                        .ok()
                        .and_then(|c| c.ok());
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                    let (k, v) = (format!("load/{n:06}"), format!("v{n}"));
                    let put = client.as_mut().unwrap().put(k.clone(), v.clone(), None);
                    match tokio::time::timeout(Duration::from_secs(5), put).await {
                        Ok(Ok(_)) => {
                            acked.insert(k, v);
                        }
                        _ => client = None,
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked
            })
        });
        Load {
            stop,
            endpoints,
            thread: Some(thread),
        }
    }

    fn set_endpoints(&self, endpoints: Vec<String>) {
        *self.endpoints.lock().unwrap() = endpoints;
    }

    fn finish(mut self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("load thread")
    }
}

/// Every acknowledged write is on `endpoint`, read linearizably.
fn check_acked(endpoint: &str, acked: &BTreeMap<String, String>) {
    let got: BTreeMap<String, String> = runtime().block_on(async {
        let mut c = detcd_tests::connect(&[endpoint.to_string()]).await;
        let resp = c
            .get("load/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("reading the load's keys");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect()
    });
    for (k, v) in acked {
        assert_eq!(
            got.get(k),
            Some(v),
            "acknowledged write {k}={v} is missing on {endpoint}"
        );
    }
}

#[test]
fn grow_promote_remove_the_leader_replace_and_move_under_load() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide("reconfiguration", subnet::RECONFIGURATION, 3, TOKEN, &[]);
    let load = Load::start(c.client_urls());
    // The running members' endpoints; a learner's only while it is one (it refuses all but
    // serializable reads, and etcdctl would retry on it).
    let mut learner: Option<String> = None;
    let eps = |c: &Cluster, learner: &Option<String>| -> Vec<String> {
        c.members
            .iter()
            .filter(|m| m.last_exit.is_none())
            .map(|m| m.client_url())
            .filter(|u| Some(u) != learner.as_ref())
            .collect()
    };

    // Grow: a learner first.
    let peer3 = format!("http://{}:{PEER_PORT}", ip(c.subnet, 3));
    let out = ctl_until_ok(
        &eps(&c, &learner),
        &[
            "member",
            "add",
            "infra3",
            "--learner",
            "--peer-urls",
            &peer3,
        ],
    );
    assert!(
        out.stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let i3 = start_added(&mut c, "infra3", 3, &out.stdout);
    let learner_ep = c.members[i3].client_url();
    learner = Some(learner_ep.clone());
    let row = wait_started(&eps(&c, &learner), "infra3");
    assert!(row.learner, "{row:?}");
    assert_eq!(role(&learner_ep), Some((false, true)));
    let refused = etcdctl(std::slice::from_ref(&learner_ep), &["put", "k", "v"]);
    assert!(
        refused
            .stderr
            .contains("etcdserver: rpc not supported for learner"),
        "a learner took a write: {refused}"
    );
    // Serializable reads are what a learner serves.
    let read = etcdctl(
        std::slice::from_ref(&learner_ep),
        &["get", "load/", "--prefix", "--consistency=s", "--limit=1"],
    );
    assert!(read.success(), "{read}");

    // Promote it, then add a voter: five voters.
    let id3 = id_of(&eps(&c, &learner), "infra3");
    let out = ctl_until_ok(&eps(&c, &learner), &["member", "promote", &id3]);
    assert!(
        out.stdout.contains(&format!("Member {id3:>16} promoted")),
        "{out}"
    );
    assert_eq!(role(&learner_ep), Some((false, false)));
    learner = None;
    let peer4 = format!("http://{}:{PEER_PORT}", ip(c.subnet, 4));
    let out = ctl_until_ok(
        &eps(&c, &learner),
        &["member", "add", "infra4", "--peer-urls", &peer4],
    );
    start_added(&mut c, "infra4", 4, &out.stdout);
    wait_started(&eps(&c, &learner), "infra4");
    load.set_endpoints(eps(&c, &learner));
    assert_eq!(member_list(&eps(&c, &learner)).len(), 5);

    // Remove the leader: it exits 0 as etcd does, and the others elect a new one.
    let leader = (0..c.members.len())
        .find(|i| role(&c.members[*i].client_url()).is_some_and(|(l, _)| l))
        .expect("a leader");
    let leader_name = c.members[leader].name.clone();
    let leader_id = id_of(&eps(&c, &learner), &leader_name);
    let out = ctl_until_ok(&eps(&c, &learner), &["member", "remove", &leader_id]);
    assert!(out.stdout.contains("removed from cluster"), "{out}");
    let status = c.members[leader].wait_exit(Duration::from_secs(20));
    assert!(status.success(), "the removed leader exited with {status}");
    assert!(
        c.members[leader]
            .stderr()
            .contains("the member has been permanently removed from the cluster"),
        "{}",
        c.members[leader].log_tail(20)
    );
    load.set_endpoints(eps(&c, &learner));
    let deadline = Deadline::new(Duration::from_secs(20), "a new leader");
    while !eps(&c, &learner)
        .iter()
        .any(|e| role(e).is_some_and(|(l, _)| l))
    {
        deadline.check(&"no leader yet");
        deadline.pause();
    }
    assert!(member_list(&eps(&c, &learner))
        .iter()
        .all(|r| r.name != leader_name));
    // Restarted, the removed member does not rejoin: it refuses to start (exit 1) if it
    // applied its own removal, or its peers tell it it was removed and it stops (exit 0, as
    // etcd) if it learned of it from them first.
    c.members[leader].start();
    let status = c.members[leader].wait_exit(Duration::from_secs(20));
    assert!(matches!(status.code(), Some(0 | 1)), "{status}");
    let starts = c.members[leader].stderr();
    let last_start = starts.rsplit("===== start").next().unwrap();
    assert!(last_start.contains("permanently removed"), "{last_start}");

    // Replace a member that lost its data dir: restarted as it was, it is refused; removed,
    // added again and started from the printed lines, it serves.
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_name = c.members[victim].name.clone();
    let victim_id = id_of(&eps(&c, &learner), &victim_name);
    c.members[victim].kill();
    std::fs::remove_dir_all(&c.members[victim].data_dir).unwrap();
    c.members[victim].last_exit = None;
    c.members[victim].start();
    let status = c.members[victim].wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", c.members[victim].log_tail(20));
    let refused = format!("member {victim_id} has already been bootstrapped");
    assert!(
        c.members[victim].stderr().contains(&refused),
        "{}",
        c.members[victim].log_tail(20)
    );
    assert!(
        !c.members[victim].data_dir.exists(),
        "a refused start left its data dir"
    );
    load.set_endpoints(eps(&c, &learner));
    ctl_until_ok(&eps(&c, &learner), &["member", "remove", &victim_id]);
    let peer = c.members[victim].peer_url();
    let out = ctl_until_ok(
        &eps(&c, &learner),
        &["member", "add", &victim_name, "--peer-urls", &peer],
    );
    c.members[victim].env = printed_env(&out.stdout);
    c.members[victim].args = joining_args(&c.members[victim].ip, &c.members[victim].data_dir);
    c.members[victim].last_exit = None;
    c.members[victim].start();
    c.members[victim].wait_healthy(HEALTHY_TIMEOUT);
    let row = wait_started(&eps(&c, &learner), &victim_name);
    assert!(row.id != victim_id && !row.learner, "{row:?}");

    // Move infra3 to new peer URLs, as an operator moves a member to another machine: stop
    // it, update its peer URLs, start it listening there. (A member left running at its old
    // address stops hearing from the others; were it the leader, it would lose its quorum
    // until it stepped down.)
    let moved = format!("http://{}:{PEER_PORT}", ip(c.subnet, 5));
    c.members[i3].kill();
    c.members[i3].last_exit = None;
    let old_ep = c.members[i3].client_url();
    let live: Vec<String> = eps(&c, &learner)
        .into_iter()
        .filter(|e| *e != old_ep)
        .collect();
    let out = ctl_until_ok(
        &live,
        &["member", "update", &id3, &format!("--peer-urls={moved}")],
    );
    assert!(out.stdout.contains("updated in cluster"), "{out}");
    c.members[i3].args[1] = moved.clone();
    c.members[i3].start();
    c.members[i3].wait_healthy(HEALTHY_TIMEOUT);
    let row = member_list(&eps(&c, &learner))
        .into_iter()
        .find(|r| r.name == "infra3");
    assert!(row.is_some_and(|r| r.peer_urls == moved && !r.learner));
    let deadline = Deadline::new(Duration::from_secs(20), "infra3 to follow at its new URL");
    while etcdctl(&[c.members[i3].client_url()], &["put", "moved", "yes"])
        .status
        .code()
        != Some(0)
    {
        deadline.check(&"infra3 cannot write yet");
        deadline.pause();
    }

    let acked = load.finish();
    assert!(
        acked.len() > 20,
        "the load made too little progress: {}",
        acked.len()
    );
    for e in eps(&c, &learner) {
        check_acked(&e, &acked);
    }
}

#[test]
fn join_errors_and_strict_reconfiguration_refusals() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide("reconfig-errors", subnet::RECONFIG_ERRORS, 3, TOKEN, &[]);
    let eps = c.client_urls();
    let all_peers: Vec<String> = (0..3)
        .map(|i| format!("infra{i}=http://{}:{PEER_PORT}", ip(c.subnet, i)))
        .collect();
    let me = ip(c.subnet, 3);
    // `label` names the attempt's logs and data dir; the member is infra3 in both.
    let join = |c: &mut Cluster, label: &str, initial_cluster: String| -> usize {
        let dir = c.dir().join(format!("{label}.etcd"));
        let mut args = detcd_tests::guide_args(c.dir(), c.subnet, 3, 4, TOKEN);
        detcd_tests::set_flag(&mut args, "--initial-cluster", &initial_cluster);
        detcd_tests::set_flag(&mut args, "--initial-cluster-state", "existing");
        detcd_tests::set_flag(&mut args, "--data-dir", &dir.to_string_lossy());
        let i = c.add(label, me.clone(), args, vec![]);
        c.members[i].start();
        let status = c.members[i].wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{}", c.members[i].log_tail(20));
        i
    };
    // Not added first: the running cluster has three members, --initial-cluster four.
    let four = format!("{},infra3=http://{me}:{PEER_PORT}", all_peers.join(","));
    let i = join(&mut c, "join-four", four);
    assert!(
        c.members[i].stderr().contains("member count is unequal"),
        "{}",
        c.members[i].log_tail(20)
    );
    // Three entries, one of them not a running member's peer URLs.
    let wrong = format!(
        "{},infra3=http://{me}:{PEER_PORT}",
        all_peers[..2].join(",")
    );
    let i = join(&mut c, "join-wrong", wrong);
    let stderr = c.members[i].stderr();
    assert!(
        stderr.contains("PeerURLs: no match found for existing member (")
            && stderr.contains(&format!("http://{}:{PEER_PORT}", ip(c.subnet, 2))),
        "{}",
        c.members[i].log_tail(20)
    );

    // Strict reconfiguration: with a follower down, no change that needs it is allowed.
    let leader = (0..3)
        .find(|i| role(&eps[*i]).is_some_and(|(l, _)| l))
        .expect("a leader");
    let (up, down) = ((leader + 1) % 3, (leader + 2) % 3);
    c.members[down].kill();
    let live = vec![eps[leader].clone(), eps[up].clone()];
    let peer3 = format!("http://{me}:{PEER_PORT}");
    let up_id = id_of(&live, &c.members[up].name);
    let leader_id = id_of(&live, &c.members[leader].name);
    for args in [
        vec!["member", "add", "x", "--peer-urls", peer3.as_str()],
        vec!["member", "remove", up_id.as_str()],
        // Removing the leader is checked before leadership is handed anywhere.
        vec!["member", "remove", leader_id.as_str()],
    ] {
        // Until the leader has seen the connection drop.
        let deadline = Deadline::new(Duration::from_secs(15), format!("{args:?} to be refused"));
        loop {
            let out = etcdctl(&live, &args);
            assert!(!out.success(), "allowed with a member down: {out}");
            if out.stderr.contains("etcdserver: unhealthy cluster") {
                break;
            }
            deadline.check(&out);
            deadline.pause();
        }
    }

    assert_eq!(
        role(&eps[leader]),
        Some((true, false)),
        "a refused removal of the leader moved leadership"
    );

    // One learner at most (--max-learners 1), and a learner that never caught up stays one.
    c.members[down].last_exit = None;
    c.members[down].start();
    c.members[down].wait_healthy(HEALTHY_TIMEOUT);
    ctl_until_ok(
        &eps,
        &["member", "add", "l1", "--learner", "--peer-urls", &peer3],
    );
    let peer4 = format!("http://{}:{PEER_PORT}", ip(c.subnet, 4));
    let out = etcdctl(
        &eps,
        &["member", "add", "l2", "--learner", "--peer-urls", &peer4],
    );
    assert!(
        out.stderr
            .contains("etcdserver: too many learner members in cluster"),
        "{out}"
    );
    let l1 = member_list(&eps)
        .into_iter()
        .find(|r| r.learner)
        .expect("the learner")
        .id;
    let out = etcdctl(&eps, &["member", "promote", &l1]);
    assert!(
        out.stderr
            .contains("etcdserver: can only promote a learner member which is in sync with leader"),
        "{out}"
    );
    let out = etcdctl(&eps, &["member", "promote", &id_of(&eps, "infra0")]);
    assert!(
        out.stderr
            .contains("etcdserver: can only promote a learner member"),
        "{out}"
    );
    // (Within the second l1 was added in, the new ID is l1's own: the same URLs and time are
    // hashed, and etcd checks the ID first, as here.)
    let out = etcdctl(&eps, &["member", "add", "dup", "--peer-urls", &peer3]);
    assert!(
        out.stderr.contains("etcdserver: Peer URLs already exists")
            || out.stderr.contains("etcdserver: member ID already exist"),
        "{out}"
    );
    let out = etcdctl(&eps, &["member", "remove", "1234"]);
    assert!(out.stderr.contains("etcdserver: member not found"), "{out}");
    ctl_until_ok(&eps, &["member", "remove", &l1]);
    let out = etcdctl(&eps, &["member", "remove", &l1]);
    assert!(
        out.stderr.contains("etcdserver: member not found"),
        "removed twice: {out}"
    );
}

#[test]
fn a_one_member_cluster_refuses_a_second_unstarted_voter() {
    // A long election timeout: once the second voter is in, the member has no quorum and
    // steps down after a few election timeouts; the refusal must come before that.
    let c = Cluster::start_guide(
        "reconfig-one",
        subnet::RECONFIG_ONE,
        1,
        TOKEN,
        &["--election-timeout", "5000"],
    );
    let peer = |i| format!("http://{}:{PEER_PORT}", ip(c.subnet, i));
    let (second, third) = runtime().block_on(async {
        let mut client = detcd_tests::connect(&c.client_urls()).await;
        let deadline = Deadline::new(Duration::from_secs(30), "the first member add");
        // Growing a one-member cluster is allowed (etcd's exception for restoring data) ...
        let second = loop {
            match client.member_add([peer(1)], None).await {
                Ok(r) => break r,
                Err(e) => deadline.check(&detcd_tests::grpc_message(&e)),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // ... but a third voter while the second has not started would leave no started quorum.
        let third = client.member_add([peer(2)], None).await;
        (second, third)
    });
    assert_eq!(second.member_list().len(), 2);
    let e = third.expect_err("a third voter was added with one of two started");
    assert_eq!(
        detcd_tests::grpc_message(&e),
        "etcdserver: re-configuration failed due to not enough started members"
    );
}

#[test]
fn force_new_cluster_recovers_from_lost_quorum_without_losing_acknowledged_writes() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide("force-new", subnet::FORCE_NEW_CLUSTER, 3, TOKEN, &[]);
    let eps = c.client_urls();
    let load = Load::start(eps.clone());
    let deadline = Deadline::new(Duration::from_secs(20), "the load to get going");
    while etcdctl(&eps[..1], &["get", "load/", "--prefix", "--limit=1"])
        .stdout
        .is_empty()
    {
        deadline.check(&"no load keys yet");
        deadline.pause();
    }
    // Two of three members are lost for good: no quorum, nothing can be written.
    c.members[1].kill();
    c.members[2].kill();
    // The survivor restarts as a one-member cluster with everything it had.
    c.members[0].kill();
    c.members[0].last_exit = None;
    c.members[0].args.push("--force-new-cluster".into());
    c.members[0].start();
    c.members[0].wait_healthy(HEALTHY_TIMEOUT);
    assert!(
        c.members[0].stderr().contains("forcing restart member"),
        "{}",
        c.members[0].log_tail(20)
    );
    let one = vec![eps[0].clone()];
    load.set_endpoints(one.clone());
    let rows = member_list(&one);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].name, "infra0");

    // Re-grow: infra1, its data dir gone, is added again and joins.
    std::fs::remove_dir_all(&c.members[1].data_dir).unwrap();
    let peer1 = c.members[1].peer_url();
    let out = ctl_until_ok(&one, &["member", "add", "infra1", "--peer-urls", &peer1]);
    c.members[1].env = printed_env(&out.stdout);
    c.members[1].args = joining_args(&c.members[1].ip, &c.members[1].data_dir);
    c.members[1].last_exit = None;
    c.members[1].start();
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    wait_started(&one, "infra1");
    load.set_endpoints(eps[..2].to_vec());

    // infra2 comes back with its old data: it was removed, and it stops.
    c.members[2].last_exit = None;
    c.members[2].start();
    let status = c.members[2].wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", c.members[2].log_tail(20));
    assert!(c.members[2].stderr().contains("permanently removed"));

    let acked = load.finish();
    assert!(
        acked.len() > 5,
        "the load made too little progress: {}",
        acked.len()
    );
    check_acked(&eps[0], &acked);
    check_acked(&eps[1], &acked);
}

#[test]
fn auto_promote_learners_promotes_a_learner_once_in_sync() {
    if !have_etcdctl() {
        return;
    }
    let gate = ["--feature-gates", "AutoPromoteLearners=true"];
    let mut c = Cluster::start_guide("auto-promote", subnet::AUTO_PROMOTE, 1, TOKEN, &gate);
    let eps = c.client_urls();
    let peer = format!("http://{}:{PEER_PORT}", ip(c.subnet, 1));
    let out = ctl_until_ok(
        &eps,
        &["member", "add", "infra1", "--learner", "--peer-urls", &peer],
    );
    // The gate matters on the leader, which decides promotions.
    let i = start_added(&mut c, "infra1", 1, &out.stdout);
    let deadline = Deadline::new(Duration::from_secs(30), "the learner to be promoted");
    loop {
        let rows = member_list(&eps);
        if rows
            .iter()
            .any(|r| r.name == "infra1" && r.started && !r.learner)
        {
            break;
        }
        deadline.check(&format!("{rows:?}"));
        deadline.pause();
    }
    assert!(
        c.members[0].stderr().contains("AutoPromoteLearners"),
        "{}",
        c.members[0].log_tail(20)
    );
    assert_eq!(role(&c.members[i].client_url()), Some((false, false)));
}
