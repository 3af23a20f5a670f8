//! The calls kube-apiserver makes (etcd's client/v3/kubernetes package; etcd-facts.md §12),
//! through the etcd-client crate against three members: paged lists with a continue key,
//! counts, optimistic updates on mod_revision with a shared lease, a watch from rev+1 with
//! prev_kv and progress requests, compaction guarded by the version of compact_rev_key, and a
//! server version that lets Kubernetes trust progress notifications.

use detcd_tests::etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use detcd_tests::{connect, http_get, runtime, subnet, within, Cluster};
use std::time::Duration;

const TOKEN: &str = "kubernetes-traffic-cluster";

/// kube-apiserver's key for the last compaction (storage/etcd3/compact.go).
const COMPACT_REV_KEY: &str = "compact_rev_key";

/// True when the harness runs detcd (not `DETCD_BIN=etcd`, used to check the test itself).
fn is_detcd() -> bool {
    detcd_tests::detcd_bin()
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("detcd"))
}

/// Kubernetes' rule (storage/etcd3 feature support): consistent reads from the watch cache
/// need etcd at least 3.4.31, 3.5.13, or any 3.6 or later.
fn progress_notify_trusted(version: &str) -> bool {
    let v: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    matches!(v.as_slice(), [3, 4, p] if *p >= 31)
        || matches!(v.as_slice(), [3, 5, p] if *p >= 13)
        || matches!(v.as_slice(), [3, m, _] if *m >= 6)
        || v.first().is_some_and(|m| *m > 3)
}

#[test]
fn kubernetes_shaped_traffic() {
    let c = Cluster::start_guide("kubernetes", subnet::KUBERNETES_TRAFFIC, 3, TOKEN, &[]);
    let urls = c.client_urls();
    let addrs: Vec<String> = c.members.iter().map(|m| m.client_addr()).collect();
    runtime().block_on(within(120, "the Kubernetes-shaped scenario", async {
        let mut client = connect(&urls).await;
        let mut watcher_client = connect(&urls[2..]).await;

        // A shared lease (Kubernetes' events share one per minute).
        let lease = client.lease_grant(60, None).await.expect("grant").id();
        let mut last = 0;
        for i in 0..25 {
            let r = client
                .put(
                    format!("/registry/pods/ns/p{i:02}"),
                    format!("pod {i}"),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .expect("create");
            last = r.header().unwrap().revision();
        }

        // Paged list: limit 10, continue from the last key + "\x00", at the first page's
        // revision; a count alone.
        let prefix = "/registry/pods/";
        let end = "/registry/pods0";
        let mut seen = Vec::new();
        let mut from = prefix.to_string();
        let mut at = 0;
        loop {
            let mut opts = GetOptions::new().with_range(end).with_limit(10);
            if at != 0 {
                opts = opts.with_revision(at);
            }
            let page = client.get(from.as_str(), Some(opts)).await.expect("page");
            if at == 0 {
                at = page.header().unwrap().revision();
                assert_eq!(page.count(), 25);
            }
            seen.extend(
                page.kvs()
                    .iter()
                    .map(|kv| kv.key_str().unwrap().to_string()),
            );
            if !page.more() {
                break;
            }
            from = format!("{}\u{0}", page.kvs().last().unwrap().key_str().unwrap());
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let count = client
            .get(
                prefix,
                Some(GetOptions::new().with_range(end).with_count_only()),
            )
            .await
            .expect("count");
        assert_eq!((count.count(), count.kvs().len()), (25, 0));

        // Watch from rev+1 with prev_kv and progress notifications, on another member.
        let mut watch = watcher_client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_range(end)
                        .with_start_revision(last + 1)
                        .with_prev_key()
                        .with_progress_notify(),
                ),
            )
            .await
            .expect("watch");
        assert!(watch.message().await.unwrap().unwrap().created());

        // Optimistic update: If mod_revision == rev Then Put (with the lease) Else Get.
        let key = "/registry/pods/ns/p03";
        let cur = client.get(key, None).await.expect("get").kvs()[0].mod_revision();
        let update = |rev: i64, value: &str| {
            Txn::new()
                .when(vec![Compare::mod_revision(key, CompareOp::Equal, rev)])
                .and_then(vec![TxnOp::put(
                    key,
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else(vec![TxnOp::get(key, None)])
        };
        let won = client.txn(update(cur, "pod 3 v2")).await.expect("txn");
        assert!(won.succeeded());
        let updated_at = won.header().unwrap().revision();
        let lost = client.txn(update(cur, "pod 3 stale")).await.expect("txn");
        assert!(!lost.succeeded());
        match &lost.op_responses()[0] {
            TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"pod 3 v2"),
            other => panic!("{other:?}"),
        }
        let ev = watch.message().await.unwrap().unwrap();
        assert_eq!(ev.events().len(), 1);
        let e = &ev.events()[0];
        assert_eq!(e.event_type(), EventType::Put);
        assert_eq!(e.kv().unwrap().mod_revision(), updated_at);
        assert_eq!(e.prev_kv().unwrap().value(), b"pod 3");
        watch.request_progress().await.expect("progress");
        let p = watch.message().await.unwrap().unwrap();
        assert!(p.events().is_empty() && p.watch_id() == -1);
        assert!(p.header().unwrap().revision() >= updated_at);

        // Compaction as kube-apiserver does it: bump compact_rev_key guarded by its version,
        // then Compact at the revision seen before.
        let version = client
            .get(COMPACT_REV_KEY, None)
            .await
            .expect("get")
            .kvs()
            .first()
            .map_or(0, |kv| kv.version());
        let guarded = Txn::new()
            .when(vec![Compare::version(
                COMPACT_REV_KEY,
                CompareOp::Equal,
                version,
            )])
            .and_then(vec![TxnOp::put(
                COMPACT_REV_KEY,
                updated_at.to_string(),
                None,
            )])
            .or_else(vec![TxnOp::get(COMPACT_REV_KEY, None)]);
        assert!(client.txn(guarded).await.expect("txn").succeeded());
        client.compact(updated_at, None).await.expect("compact");

        // The shared lease ends: every pod goes in one revision, as one watch response.
        client.lease_revoke(lease).await.expect("revoke");
        let gone = watch.message().await.unwrap().unwrap();
        assert_eq!(gone.events().len(), 25, "one response for the revoke");
        let rev = gone.events()[0].kv().unwrap().mod_revision();
        assert!(gone
            .events()
            .iter()
            .all(|e| e.event_type() == EventType::Delete && e.kv().unwrap().mod_revision() == rev));

        // Status and /version agree on the version, on every member.
        for (i, addr) in addrs.iter().enumerate() {
            let mut one = connect(&urls[i..i + 1]).await;
            let status = one.status().await.expect("status");
            let (code, body) =
                http_get(addr, "/version", Duration::from_secs(5)).expect("GET /version");
            assert_eq!(code, 200);
            assert!(
                body.contains(&format!("\"etcdserver\":\"{}\"", status.version())),
                "Status says {} but /version says {body}",
                status.version()
            );
            if is_detcd() {
                assert!(
                    progress_notify_trusted(status.version()),
                    "version {} does not tell Kubernetes that progress notifications wait \
                     for synced watchers",
                    status.version()
                );
            }
        }
    }));
}

#[test]
fn kubernetes_version_rule() {
    assert!(progress_notify_trusted("3.4.31"));
    assert!(progress_notify_trusted("3.5.13"));
    assert!(progress_notify_trusted("3.6.0"));
    assert!(!progress_notify_trusted("3.4.23"));
    assert!(!progress_notify_trusted("3.5.12"));
}
