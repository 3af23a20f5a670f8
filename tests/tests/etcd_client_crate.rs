//! The etcd-client crate (a real gRPC client, independent of etcdctl) against a 3-member cluster.

use detcd_tests::etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use detcd_tests::{connect, runtime, subnet, within, Cluster, Deadline, GUIDE_TOKEN};
use std::collections::BTreeMap;
use std::time::Duration;

#[test]
fn etcd_client_crate() {
    let c = Cluster::start_guide(
        "etcd_client_crate",
        subnet::ETCD_CLIENT_CRATE,
        3,
        GUIDE_TOKEN,
        &[],
    );
    let urls = c.client_urls();
    runtime().block_on(within(120, "the etcd-client scenario", async {
        let mut all = connect(&urls).await;

        // put / get
        let put = all.put("greeting", "hello", None).await.expect("put");
        let rev = put.header().expect("put header").revision();
        assert!(rev > 1, "revision after the first put: {rev}");
        let put2 = all
            .put(
                "greeting",
                "hello again",
                Some(PutOptions::new().with_prev_key()),
            )
            .await
            .expect("put");
        assert_eq!(put2.header().unwrap().revision(), rev + 1);
        let prev = put2.prev_key().expect("prev_kv requested");
        assert_eq!(prev.value(), b"hello");
        let get = all.get("greeting", None).await.expect("get");
        assert_eq!(get.kvs().len(), 1);
        let kv = &get.kvs()[0];
        assert_eq!(
            (kv.key(), kv.value()),
            (&b"greeting"[..], &b"hello again"[..])
        );
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (rev, rev + 1, 2)
        );
        assert!(all
            .get("missing", None)
            .await
            .expect("get")
            .kvs()
            .is_empty());

        // prefix get, sorted by key, plus count and limit
        for i in [3, 1, 2] {
            all.put(format!("dir/{i}"), format!("v{i}"), None)
                .await
                .expect("put");
        }
        all.put("dir0", "outside the prefix", None)
            .await
            .expect("put");
        let list = all
            .get("dir/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("prefix get");
        let got: Vec<(String, String)> = list
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("dir/1".into(), "v1".into()),
                ("dir/2".into(), "v2".into()),
                ("dir/3".into(), "v3".into())
            ]
        );
        assert_eq!(list.count(), 3);
        let limited = all
            .get("dir/", Some(GetOptions::new().with_prefix().with_limit(2)))
            .await
            .expect("get");
        assert_eq!(
            (limited.kvs().len(), limited.count(), limited.more()),
            (2, 3, true)
        );

        // delete (single key, then the prefix)
        let del = all.delete("dir/2", None).await.expect("delete");
        assert_eq!(del.deleted(), 1);
        let del = all
            .delete(
                "dir/",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await
            .expect("delete");
        assert_eq!(del.deleted(), 2);
        assert_eq!(del.prev_kvs().len(), 2);
        assert!(all
            .get("dir/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .kvs()
            .is_empty());
        assert_eq!(all.get("dir0", None).await.unwrap().kvs().len(), 1);

        // txn: success and failure branches
        let txn = Txn::new()
            .when([Compare::value("greeting", CompareOp::Equal, "hello again")])
            .and_then([
                TxnOp::put("txn-result", "then", None),
                TxnOp::get("greeting", None),
            ])
            .or_else([TxnOp::put("txn-result", "else", None)]);
        let resp = all.txn(txn).await.expect("txn");
        assert!(resp.succeeded());
        let ops = resp.op_responses();
        assert_eq!(ops.len(), 2);
        match &ops[1] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"hello again"),
            other => panic!("expected a range response, got {other:?}"),
        }
        let txn = Txn::new()
            .when([Compare::version("greeting", CompareOp::Greater, 5)])
            .and_then([TxnOp::put("txn-result", "then2", None)])
            .or_else([TxnOp::put("txn-result", "else2", None)]);
        assert!(!all.txn(txn).await.expect("txn").succeeded());
        assert_eq!(
            all.get("txn-result", None).await.unwrap().kvs()[0].value(),
            b"else2"
        );

        // member_list and status through each member: same cluster, same members, and each
        // member's status reports its own ID from the list and the common leader.
        let mut cluster_ids = Vec::new();
        let mut leaders = Vec::new();
        let mut member_sets = Vec::new();
        for m in &c.members {
            let mut one = connect(&[m.client_url()]).await;
            // Names and client URLs appear once every member has published itself: poll.
            let deadline = Deadline::new(
                Duration::from_secs(20),
                format!("member list via {} to be complete", m.name),
            );
            let list = loop {
                let list = one.member_list().await.expect("member_list");
                let complete = list.members().len() == 3
                    && list
                        .members()
                        .iter()
                        .all(|x| !x.name().is_empty() && !x.client_urls().is_empty());
                if complete {
                    break list;
                }
                deadline.check(&format!("{:?}", list.members()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let by_name: BTreeMap<String, (u64, Vec<String>, Vec<String>)> = list
                .members()
                .iter()
                .map(|x| {
                    (
                        x.name().to_string(),
                        (x.id(), x.peer_urls().to_vec(), x.client_urls().to_vec()),
                    )
                })
                .collect();
            for other in &c.members {
                let (_, peers, clients) = by_name
                    .get(&other.name)
                    .unwrap_or_else(|| panic!("{} missing: {by_name:?}", other.name));
                assert_eq!(peers, &vec![other.peer_url()]);
                assert_eq!(clients, &vec![other.client_url()]);
            }
            let status = one.status().await.expect("status");
            let header = status.header().expect("status header");
            assert_eq!(
                header.member_id(),
                by_name[&m.name].0,
                "status member_id vs member list for {}",
                m.name
            );
            assert!(status.raft_term() >= 1);
            assert!(!status.version().is_empty());
            cluster_ids.push(header.cluster_id());
            assert_eq!(list.header().unwrap().cluster_id(), header.cluster_id());
            leaders.push(status.leader());
            member_sets.push(by_name);
        }
        assert!(
            cluster_ids
                .iter()
                .all(|id| *id == cluster_ids[0] && *id != 0),
            "cluster IDs {cluster_ids:?}"
        );
        assert!(
            leaders.iter().all(|l| *l == leaders[0]),
            "leaders {leaders:?}"
        );
        assert!(
            member_sets.iter().all(|s| *s == member_sets[0]),
            "member lists differ: {member_sets:?}"
        );
        assert!(
            member_sets[0].values().any(|(id, _, _)| *id == leaders[0]),
            "leader {:x} not a member",
            leaders[0]
        );
    }));
    drop(c);
}
