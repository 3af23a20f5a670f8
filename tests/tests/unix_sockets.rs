//! etcd's `unix://` listen URLs: a three-member cluster whose members talk to each other over
//! unix sockets only, and serve clients on a unix socket as well as TCP. etcdctl reaches a
//! member through its socket file, the member list shows the unix peer URLs, and a member
//! restarted over its own leftover socket file rejoins.

use std::time::Duration;

use detcd_tests::*;

const SUBNET: u8 = subnet::UNIX_SOCKETS;

/// `unix://<host:port>` as the member sees it: a socket file in its working directory.
fn peer_url(i: usize) -> String {
    format!("unix://infra{i}.peer:1")
}

fn client_socket(i: usize) -> String {
    format!("infra{i}.client:1")
}

#[test]
fn a_cluster_over_unix_sockets_serves_etcdctl_and_survives_a_restart() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::empty("unix-sockets", SUBNET);
    let initial = (0..3)
        .map(|i| format!("infra{i}={}", peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..3 {
        let name = format!("infra{i}");
        let ip = ip(SUBNET, i);
        let data_dir = c.dir().join(format!("{name}.etcd"));
        let args = vec![
            "--name".to_string(),
            name.clone(),
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen-peer-urls".to_string(),
            peer_url(i),
            "--initial-advertise-peer-urls".to_string(),
            peer_url(i),
            "--listen-client-urls".to_string(),
            format!("http://{ip}:2379,unix://{}", client_socket(i)),
            "--advertise-client-urls".to_string(),
            format!("http://{ip}:2379"),
            "--initial-cluster".to_string(),
            initial.clone(),
            "--initial-cluster-token".to_string(),
            "unix-sockets".to_string(),
        ];
        let idx = c.add(&name, ip, args, vec![]);
        c.members[idx].cwd = Some(c.dir().to_path_buf());
    }
    c.start_all();
    c.wait_healthy(HEALTHY_TIMEOUT);

    // etcdctl over the socket file (an absolute path: `unix://` + path, as clientv3 parses it).
    let dir = c.dir().to_path_buf();
    let socket = |i: usize| format!("unix://{}/{}", dir.display(), client_socket(i));
    etcdctl_ok(&[socket(0)], &["put", "over-unix", "v1"]);
    let got = etcdctl_ok(&[socket(2)], &["get", "over-unix", "--print-value-only"]);
    assert_eq!(got.stdout.trim(), "v1", "{got}");
    let list = etcdctl_ok(&[socket(1)], &["member", "list"]);
    for i in 0..3 {
        assert!(list.stdout.contains(&peer_url(i)), "{list}");
    }

    // A member killed leaves its socket files behind; restarted, it replaces them and rejoins.
    c.members[1].kill();
    assert!(dir.join(client_socket(1)).exists());
    // infra1 may have been the leader: the put waits out the election.
    let deadline = Deadline::new(Duration::from_secs(20), "a put while infra1 is down");
    loop {
        let put = etcdctl(&[socket(0)], &["put", "while-down", "v2"]);
        if put.success() {
            break;
        }
        deadline.check(&put);
        deadline.pause();
    }
    c.members[1].start();
    c.members[1].wait_healthy(HEALTHY_TIMEOUT);
    let deadline = Deadline::new(
        Duration::from_secs(20),
        "infra1 to catch up over unix sockets",
    );
    loop {
        let got = etcdctl(
            &[socket(1)],
            &["get", "while-down", "--print-value-only", "--consistency=s"],
        );
        if got.success() && got.stdout.trim() == "v2" {
            break;
        }
        deadline.check(&got);
        deadline.pause();
    }
}
