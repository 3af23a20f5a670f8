//! Watch, Lease, lock and elect with unmodified etcdctl 3.4 against a three-member cluster,
//! including across the loss of the raft leader. Outputs are etcdctl's exact text, as it
//! prints them against etcd 3.4.23 (run with `DETCD_BIN=$(command -v etcd)` to check the
//! test itself against etcd).

use detcd_tests::{
    etcdctl, etcdctl_ok, have_etcdctl, json_u64s, subnet, Cluster, CtlProcess, Deadline,
};
use std::time::Duration;

const TOKEN: &str = "watch-lease-cluster";

/// The revision in a `put -w json` answer.
fn put_revision(eps: &[String], key: &str, value: &str) -> u64 {
    let out = etcdctl_ok(eps, &["put", key, value, "-w", "json"]);
    json_u64s(&out.stdout, "revision")[0]
}

/// The index of the member that leads (as the live members report it).
fn leader_index(c: &Cluster, live: &[usize]) -> usize {
    let deadline = Deadline::new(Duration::from_secs(30), "the members to agree on a leader");
    loop {
        let mut leaders = Vec::new();
        let mut ids = Vec::new();
        for &i in live {
            let out = etcdctl(
                &[c.members[i].client_url()],
                &["endpoint", "status", "-w", "json"],
            );
            leaders.push(json_u64s(&out.stdout, "leader").first().copied());
            ids.push(json_u64s(&out.stdout, "member_id").first().copied());
        }
        if let Some(Some(l)) = leaders.first() {
            if leaders.iter().all(|x| *x == Some(*l)) {
                if let Some(pos) = ids.iter().position(|id| *id == Some(*l)) {
                    return live[pos];
                }
            }
        }
        deadline.check(&format!("leaders {leaders:?}, ids {ids:?}"));
        deadline.pause();
    }
}

/// The lease ID etcdctl printed in `lease <hex> granted with TTL(..)`.
fn granted_id(out: &str) -> String {
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease ID in {out:?}"))
        .to_string()
}

#[test]
fn watch_lease_lock_elect_with_etcdctl() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide("watch_lease", subnet::WATCH_LEASE_ETCDCTL, 3, TOKEN, &[]);
    let all = c.client_urls();
    let one = |i: usize| vec![all[i].clone()];

    // Watch: a replay from a past revision, then live events, with prev_kv, on a member other
    // than the one written to.
    let rev = put_revision(&one(0), "w/a", "1");
    let mut watch = CtlProcess::start(
        &one(2),
        &[
            "watch",
            "--prefix",
            "--prev-kv",
            "--rev",
            &rev.to_string(),
            "w/",
        ],
    );
    etcdctl_ok(&one(0), &["put", "w/a", "2"]);
    etcdctl_ok(&one(1), &["del", "w/a"]);
    etcdctl_ok(&one(0), &["put", "w/b", "x"]);
    etcdctl_ok(&one(0), &["put", "other", "not watched"]);
    let want = "PUT\nw/a\n1\nPUT\nw/a\n1\nw/a\n2\nDELETE\nw/a\n2\nw/a\n\nPUT\nw/b\nx\n";
    watch.wait_stdout(Duration::from_secs(20), "the four events", |o| {
        o.len() >= want.len()
    });
    assert_eq!(watch.stdout(), want, "etcdctl watch output");

    // Lease: grant, attach, timetolive with keys, list, keep-alive once, revoke (the watcher
    // sees both deletes), and the answers for a lease that no longer exists.
    let mut lw = CtlProcess::start(&one(1), &["watch", "--prefix", "l/"]);
    let granted = etcdctl_ok(&one(0), &["lease", "grant", "100"]).stdout;
    assert!(granted.ends_with("granted with TTL(100s)\n"), "{granted}");
    let id = granted_id(&granted);
    etcdctl_ok(&one(0), &["put", "--lease", &id, "l/1", "a"]);
    etcdctl_ok(&one(1), &["put", "--lease", &id, "l/2", "b"]);
    let ttl = etcdctl_ok(&one(2), &["lease", "timetolive", "--keys", &id]).stdout;
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(9"))
            && ttl.ends_with("attached keys([l/1 l/2])\n"),
        "{ttl}"
    );
    let list = etcdctl_ok(&one(1), &["lease", "list"]).stdout;
    assert!(list.contains(&id), "{list}");
    let once = etcdctl_ok(&one(2), &["lease", "keep-alive", "--once", &id]).stdout;
    assert_eq!(once, format!("lease {id} keepalived with TTL(100)\n"));
    let revoked = etcdctl_ok(&one(2), &["lease", "revoke", &id]).stdout;
    assert_eq!(revoked, format!("lease {id} revoked\n"));
    let deletes = "PUT\nl/1\na\nPUT\nl/2\nb\nDELETE\nl/1\n\nDELETE\nl/2\n\n";
    lw.wait_stdout(
        Duration::from_secs(20),
        "the puts and the revoke's deletes",
        |o| o.len() >= deletes.len(),
    );
    assert_eq!(lw.stdout(), deletes);
    let gone = etcdctl_ok(&one(0), &["lease", "timetolive", &id]).stdout;
    assert_eq!(gone, format!("lease {id} already expired\n"));
    let once = etcdctl(&one(0), &["lease", "keep-alive", "--once", &id]);
    assert_eq!(once.status.code(), Some(2), "{once}");
    assert!(
        once.stderr
            .contains("Error: etcdserver: requested lease not found"),
        "{once}"
    );
    let put = etcdctl(&one(0), &["put", "--lease", &id, "l/3", "c"]);
    assert!(
        !put.success()
            && put
                .stderr
                .contains("Error: etcdserver: requested lease not found"),
        "{put}"
    );

    // Expiry: a 2 s lease without keep-alives takes its key with it, on every member.
    let id2 = granted_id(&etcdctl_ok(&one(1), &["lease", "grant", "2"]).stdout);
    etcdctl_ok(&one(1), &["put", "--lease", &id2, "l/short", "x"]);
    lw.wait_stdout(Duration::from_secs(15), "the expired lease's delete", |o| {
        o.ends_with("DELETE\nl/short\n\n")
    });
    for i in 0..3 {
        let get = etcdctl_ok(&one(i), &["get", "l/short", "--consistency=s"]).stdout;
        assert_eq!(get, "", "member {i} still has the expired key");
    }

    // Lock: the second locker waits until the first one's session (TTL 3 s) expires after it
    // was killed without unlocking.
    let mut holder = CtlProcess::start(&all, &["lock", "--ttl", "3", "mylock"]);
    holder.wait_stdout(Duration::from_secs(20), "the lock key", |o| {
        o.starts_with("mylock/") && o.ends_with("\n\n")
    });
    let mut waiter = CtlProcess::start(&all, &["lock", "mylock"]);
    // The waiter must not get the lock while the holder lives: check it has its place in
    // line (two keys under the lock) and printed nothing.
    let deadline = Deadline::new(Duration::from_secs(20), "the waiter to queue for the lock");
    loop {
        let keys = etcdctl_ok(&one(0), &["get", "--prefix", "--keys-only", "mylock/"]).stdout;
        if keys.lines().filter(|l| !l.is_empty()).count() == 2 {
            break;
        }
        deadline.check(&keys);
        deadline.pause();
    }
    assert_eq!(waiter.stdout(), "", "the waiter got a held lock");
    holder.kill();
    waiter.wait_stdout(
        Duration::from_secs(20),
        "the lock after the holder's lease expired",
        |o| o.starts_with("mylock/") && o.ends_with("\n\n"),
    );
    assert_ne!(waiter.stdout(), holder.stdout(), "same lock key twice");
    assert!(waiter.terminate().success());

    // Elect, with a lease kept alive across the loss of the raft leader: the observer and
    // the second campaigner see the first campaigner lead until it resigns.
    let mut a = CtlProcess::start(&all, &["elect", "myelection", "alpha"]);
    a.wait_stdout(Duration::from_secs(20), "alpha leading", |o| {
        o.starts_with("myelection/") && o.ends_with("\nalpha\n")
    });
    let mut b = CtlProcess::start(&all, &["elect", "myelection", "beta"]);
    let mut observer = CtlProcess::start(&all, &["elect", "-l", "myelection"]);
    observer.wait_stdout(Duration::from_secs(20), "alpha as the leader", |o| {
        o.ends_with("\nalpha\n")
    });
    let mut keeper = CtlProcess::start(
        &all,
        &["lease", "keep-alive", &{
            let id = granted_id(&etcdctl_ok(&one(0), &["lease", "grant", "4"]).stdout);
            etcdctl_ok(&one(0), &["put", "--lease", &id, "kept", "alive"]);
            id
        }],
    );
    keeper.wait_stdout(Duration::from_secs(10), "a keep-alive", |o| {
        o.contains("keepalived with TTL(4)")
    });
    // A watch on every endpoint, across the loss of the leader: no event lost or repeated
    // (the client resumes from its last revision on another member if its own dies).
    let mut across = CtlProcess::start(&all, &["watch", "--prefix", "z/"]);
    let deadline = Deadline::new(
        Duration::from_secs(20),
        "the watch across the kill to start",
    );
    loop {
        etcdctl_ok(&one(0), &["put", "z/0", "before"]);
        if across.stdout().contains("z/0") {
            break;
        }
        deadline.check(&across.stderr());
        deadline.pause();
    }
    etcdctl_ok(&all, &["put", "z/1", "before the kill"]);
    let leader = leader_index(&c, &[0, 1, 2]);
    c.members[leader].kill();
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    leader_index(&c, &live);
    let survivors: Vec<String> = live.iter().map(|i| all[*i].clone()).collect();
    // For longer than the lease's TTL after the kill, its key stays: the keep-alives reach
    // the new leader.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let got = etcdctl(&survivors, &["get", "kept", "--print-value-only"]);
        assert!(
            !got.success() || got.stdout == "alive\n",
            "the kept-alive lease expired after the leader was killed: {got}\nkeep-alive: {}",
            keeper.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.stdout(), "", "beta leads while alpha has not resigned");
    let deadline = Deadline::new(Duration::from_secs(20), "a put after the kill");
    while !etcdctl(&survivors, &["put", "z/2", "after the kill"]).success() {
        deadline.check(&"put z/2 failed");
        deadline.pause();
    }
    across.wait_stdout(Duration::from_secs(30), "the put after the kill", |o| {
        o.ends_with("PUT\nz/2\nafter the kill\n")
    });
    let tail = across.stdout();
    let tail = &tail[tail.rfind("PUT\nz/0\nbefore\n").expect("z/0 seen")..];
    assert_eq!(
        tail, "PUT\nz/0\nbefore\nPUT\nz/1\nbefore the kill\nPUT\nz/2\nafter the kill\n",
        "events across the leader kill"
    );
    assert!(a.terminate().success(), "alpha resigning: {}", a.stderr());
    b.wait_stdout(
        Duration::from_secs(30),
        "beta leading after alpha resigned",
        |o| o.starts_with("myelection/") && o.ends_with("\nbeta\n"),
    );
    observer.wait_stdout(Duration::from_secs(30), "beta as the new leader", |o| {
        o.ends_with("\nbeta\n")
    });
    assert!(b.terminate().success());
    keeper.kill();
}
