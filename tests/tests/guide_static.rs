//! The guide's static example, with its exact flags on 127.0.1.10-12, driven by etcdctl against
//! each member in turn.

use detcd_tests::{
    etcdctl, etcdctl_ok, etcdctl_stdin, have_etcdctl, json_u64s, subnet, Cluster, Deadline,
    GUIDE_TOKEN,
};
use std::time::Duration;

/// etcd 3.4.23's IDs for this exact configuration (etcd-facts.md §1).
const IDS: [&str; 3] = ["2029998aabe7a1e", "e649a9c81f668aa5", "3a557c8ef1cd433d"];
const CLUSTER_ID_DECIMAL: u64 = 0xc8f9219ce82804b2; // = 14481643034580092082 in etcdctl's JSON

#[test]
fn guide_static() {
    if !have_etcdctl() {
        return;
    }
    let c = Cluster::start_guide("guide_static", subnet::GUIDE_STATIC, 3, GUIDE_TOKEN, &[]);
    let all = c.client_urls();

    // member list: IDs, names and both URLs (names and client URLs appear once each member has
    // published itself, so poll).
    let want: Vec<String> = c
        .members
        .iter()
        .zip(IDS)
        .map(|(m, id)| {
            format!(
                "{id}, started, {}, {}, {}, false",
                m.name,
                m.peer_url(),
                m.client_url()
            )
        })
        .collect();
    for m in &c.members {
        let ep = vec![m.client_url()];
        let deadline = Deadline::new(
            Duration::from_secs(20),
            format!("member list via {} to show all three members", m.name),
        );
        loop {
            let out = etcdctl(&ep, &["member", "list"]);
            let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
            if out.success() && lines.len() == 3 && want.iter().all(|w| lines.contains(&w.as_str()))
            {
                break;
            }
            deadline.check(&format!("want lines {want:?}; got {out}"));
            deadline.pause();
        }
        let json = etcdctl_ok(&ep, &["member", "list", "--write-out=json"]);
        assert_eq!(
            json_u64s(&json.stdout, "cluster_id"),
            vec![CLUSTER_ID_DECIMAL],
            "cluster_id in member list JSON via {}: {json}",
            m.name
        );
        let mut ids: Vec<u64> = json_u64s(&json.stdout, "ID");
        ids.sort();
        let mut want_ids: Vec<u64> = IDS
            .iter()
            .map(|h| u64::from_str_radix(h, 16).unwrap())
            .collect();
        want_ids.sort();
        assert_eq!(ids, want_ids, "member IDs in JSON via {}: {json}", m.name);
    }

    // KV operations through each member.
    for (i, m) in c.members.iter().enumerate() {
        let ep = vec![m.client_url()];
        let put = etcdctl_ok(&ep, &["put", "foo", "bar"]);
        assert_eq!(put.stdout.trim(), "OK", "{put}");
        let get = etcdctl_ok(&ep, &["get", "foo"]);
        assert_eq!(get.stdout, "foo\nbar\n", "{get}");

        // txn from stdin: compares, blank line, success ops, blank line, failure ops.
        let key = format!("txn{i}");
        let txn = format!("value(\"foo\") = \"bar\"\n\nput {key} \"yes\"\n\nput {key} \"no\"\n\n");
        let out = etcdctl_stdin(&ep, &["txn"], &txn);
        assert!(out.success(), "{out}");
        assert_eq!(out.stdout, "SUCCESS\n\nOK\n", "{out}");
        assert_eq!(
            etcdctl_ok(&ep, &["get", &key, "--print-value-only"]).stdout,
            "yes\n"
        );
        let txn =
            format!("value(\"foo\") = \"other\"\n\nput {key} \"yes2\"\n\nput {key} \"no2\"\n\n");
        let out = etcdctl_stdin(&ep, &["txn"], &txn);
        assert!(out.success(), "{out}");
        assert_eq!(out.stdout, "FAILURE\n\nOK\n", "{out}");
        assert_eq!(
            etcdctl_ok(&ep, &["get", &key, "--print-value-only"]).stdout,
            "no2\n"
        );

        let del = etcdctl_ok(&ep, &["del", "foo"]);
        assert_eq!(del.stdout.trim(), "1", "{del}");
        let get = etcdctl_ok(&ep, &["get", "foo"]);
        assert_eq!(get.stdout, "", "{get}");
        // Another member sees the deletion and the txn result (linearizable reads).
        let other = vec![c.members[(i + 1) % 3].client_url()];
        assert_eq!(etcdctl_ok(&other, &["get", "foo"]).stdout, "");
        assert_eq!(
            etcdctl_ok(&other, &["get", &key, "--print-value-only"]).stdout,
            "no2\n"
        );
    }

    // endpoint status: every member names the same leader, one of the three, and exactly one
    // row says "is leader: true".
    let mut leaders = Vec::new();
    let mut leader_rows = Vec::new();
    for (m, id) in c.members.iter().zip(IDS) {
        let ep = vec![m.client_url()];
        let json = etcdctl_ok(&ep, &["endpoint", "status", "--write-out=json"]);
        let leader = json_u64s(&json.stdout, "leader");
        assert_eq!(leader.len(), 1, "{json}");
        leaders.push(leader[0]);
        assert_eq!(
            json_u64s(&json.stdout, "cluster_id"),
            vec![CLUSTER_ID_DECIMAL],
            "{json}"
        );
        assert_eq!(
            json_u64s(&json.stdout, "member_id"),
            vec![u64::from_str_radix(id, 16).unwrap()],
            "{json}"
        );
        // Simple format: endpoint, ID, version, db size, is leader, is learner, raft term, raft index, applied, errors
        let simple = etcdctl_ok(&ep, &["endpoint", "status"]);
        let cols: Vec<&str> = simple.stdout.trim().split(", ").collect();
        assert!(cols.len() >= 9, "{simple}");
        assert_eq!(cols[0], m.client_url(), "{simple}");
        assert_eq!(cols[1], id, "{simple}");
        if cols[4] == "true" {
            leader_rows.push(id);
        } else {
            assert_eq!(cols[4], "false", "{simple}");
        }
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "members disagree on the leader: {leaders:?}"
    );
    let leader_hex = format!("{:x}", leaders[0]);
    assert!(
        IDS.contains(&leader_hex.as_str()),
        "leader {leader_hex} is not a member"
    );
    assert_eq!(
        leader_rows,
        vec![leader_hex.as_str()],
        "the 'is leader' column"
    );

    // endpoint health, one member at a time and all at once.
    for m in &c.members {
        let out = etcdctl_ok(&[m.client_url()], &["endpoint", "health"]);
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains(&format!("{} is healthy", m.client_url())),
            "{out}"
        );
    }
    let out = etcdctl_ok(&all, &["endpoint", "health"]);
    assert_eq!(
        format!("{}{}", out.stdout, out.stderr)
            .matches("is healthy")
            .count(),
        3,
        "{out}"
    );
}
