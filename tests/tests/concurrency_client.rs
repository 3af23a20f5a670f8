//! The etcd-client crate's Watch, Lease, Lock and Election APIs against a three-member
//! cluster. Unlike etcdctl's lock and elect, its Lock and Election calls use etcd's
//! v3lock and v3election gRPC services, so this is where the server-side recipes are tried.

use detcd_tests::etcd_client::{
    Client, EventType, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, Txn, TxnOp,
    WatchOptions,
};
use detcd_tests::{connect, runtime, subnet, within, Cluster};
use std::time::Duration;

const TOKEN: &str = "concurrency-client-cluster";

/// gRPC's code Unknown, which etcd's v3lock and v3election errors carry.
const UNKNOWN: i32 = 2;

/// The gRPC code and message of a failed call.
fn status_of(e: detcd_tests::etcd_client::Error) -> (i32, String) {
    match e {
        detcd_tests::etcd_client::Error::GRpcStatus(s) => {
            (s.code() as i32, s.message().to_string())
        }
        other => panic!("not a gRPC status: {other}"),
    }
}

/// How many keys `prefix` holds.
async fn count(client: &mut Client, prefix: &str) -> usize {
    client
        .get(
            prefix,
            Some(detcd_tests::etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get")
        .kvs()
        .len()
}

/// Polls until `prefix` holds `n` keys.
async fn wait_count(client: &mut Client, prefix: &str, n: usize) {
    loop {
        if count(client, prefix).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn watch_lease_lock_election_with_the_etcd_client_crate() {
    let c = Cluster::start_guide("concurrency", subnet::CONCURRENCY_CLIENT, 3, TOKEN, &[]);
    let urls = c.client_urls();
    runtime().block_on(within(120, "the etcd-client concurrency scenario", async {
        let mut m0 = connect(&urls[..1]).await;
        let mut m1 = connect(&urls[1..2]).await;
        let mut m2 = connect(&urls[2..]).await;

        // Watch on one member, a txn's two writes through another: one response, one
        // revision; prev_kv filled; a progress request answered with watch ID -1 at the
        // latest revision; cancel answered.
        let first = m0.put("x/a", "0", None).await.expect("put");
        let base = first.header().unwrap().revision();
        let mut watch = m2
            .watch(
                "x/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(base + 1),
                ),
            )
            .await
            .expect("watch");
        let created = watch.message().await.expect("created").expect("created");
        assert!(created.created());
        let watch_id = created.watch_id();
        let txn = Txn::new().and_then(vec![
            TxnOp::put("x/a", "1", None),
            TxnOp::put("x/b", "1", None),
        ]);
        let rev = m1.txn(txn).await.expect("txn").header().unwrap().revision();
        let resp = watch.message().await.expect("events").expect("events");
        assert_eq!(resp.watch_id(), watch_id);
        let evs = resp.events();
        assert_eq!(evs.len(), 2, "both writes of the txn in one response");
        assert!(evs
            .iter()
            .all(|e| e.kv().unwrap().mod_revision() == rev && e.event_type() == EventType::Put));
        assert_eq!(evs[0].prev_kv().expect("prev_kv").value(), b"0");
        assert!(
            evs[1].prev_kv().is_none(),
            "a create has no previous version"
        );
        watch.request_progress().await.expect("progress");
        let progress = watch.message().await.expect("progress").expect("progress");
        assert_eq!(progress.watch_id(), -1);
        assert!(progress.events().is_empty());
        assert_eq!(progress.header().unwrap().revision(), rev);
        watch.cancel(watch_id).await.expect("cancel");
        let canceled = watch.message().await.expect("canceled").expect("canceled");
        assert!(canceled.canceled() && canceled.watch_id() == watch_id);

        // A watch from a compacted revision is canceled with the compaction's revision.
        m0.compact(rev, None).await.expect("compact");
        let mut old = m1
            .watch("x/a", Some(WatchOptions::new().with_start_revision(base)))
            .await
            .expect("watch");
        let created = old.message().await.expect("created").expect("created");
        assert!(created.created());
        let canceled = old.message().await.expect("cancel").expect("cancel");
        assert!(canceled.canceled(), "{canceled:?}");
        assert_eq!(canceled.compact_revision(), rev);

        // Lease keep-alive through a follower, TimeToLive with keys.
        let lease = m1.lease_grant(30, None).await.expect("grant").id();
        m0.put(
            "leased",
            "v",
            Some(detcd_tests::etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");
        let (mut keeper, mut acks) = m2.lease_keep_alive(lease).await.expect("keep-alive");
        keeper.keep_alive().await.expect("keep-alive request");
        let ack = acks.message().await.expect("ack").expect("ack");
        assert_eq!((ack.id(), ack.ttl()), (lease, 30));
        let ttl = m2
            .lease_time_to_live(
                lease,
                Some(detcd_tests::etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("time to live");
        assert_eq!(ttl.granted_ttl(), 30);
        assert!(ttl.ttl() > 25 && ttl.ttl() <= 30, "{}", ttl.ttl());
        assert_eq!(ttl.keys(), &[b"leased".to_vec()]);
        let missing = m0.lease_time_to_live(0x1234, None).await.expect("ttl");
        assert_eq!(missing.ttl(), -1);

        // Lock (the v3lock service): a second locker queues behind the first and gets the
        // lock when it is unlocked.
        let la = m0.lease_grant(30, None).await.expect("grant").id();
        let lb = m1.lease_grant(30, None).await.expect("grant").id();
        let held = m0
            .lock("mylock", Some(LockOptions::new().with_lease(la)))
            .await
            .expect("lock");
        assert_eq!(held.key(), format!("mylock/{la:x}").as_bytes());
        // A locker that gives up while waiting leaves no key behind to block the next ones.
        let lc = m2.lease_grant(30, None).await.expect("grant").id();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(500),
            m2.lock("mylock", Some(LockOptions::new().with_lease(lc))),
        )
        .await;
        assert!(abandoned.is_err(), "got a held lock: {abandoned:?}");
        wait_count(&mut m0, "mylock/", 1).await;
        let mut m1b = m1.clone();
        let waiting = tokio::spawn(async move {
            m1b.lock("mylock", Some(LockOptions::new().with_lease(lb)))
                .await
                .map(|r| r.key().to_vec())
        });
        wait_count(&mut m2, "mylock/", 2).await;
        assert!(!waiting.is_finished(), "the second locker got a held lock");
        m2.unlock(held.key()).await.expect("unlock");
        let key = waiting.await.expect("task").expect("second lock");
        assert_eq!(key, format!("mylock/{lb:x}").as_bytes());
        m0.unlock(key).await.expect("unlock");
        // Lease 0: a session of 60 s of the server's own.
        let orphan = m2.lock("other", None).await.expect("lock with lease 0");
        let id = i64::from_str_radix(
            std::str::from_utf8(&orphan.key()[b"other/".len()..]).unwrap(),
            16,
        )
        .expect("lease in the key");
        let ttl = m2.lease_time_to_live(id, None).await.expect("ttl");
        assert_eq!(ttl.granted_ttl(), 60);

        // Election (the v3election service).
        let none = m0.leader("myelection").await.unwrap_err();
        assert_eq!(
            status_of(none),
            (UNKNOWN, "election: no leader".to_string())
        );
        let e1 = m0.lease_grant(30, None).await.expect("grant").id();
        let e2 = m1.lease_grant(30, None).await.expect("grant").id();
        let won = m0
            .campaign("myelection", "one", e1)
            .await
            .expect("campaign");
        let leader: LeaderKey = won.leader().expect("leader key").clone();
        assert_eq!(leader.key(), format!("myelection/{e1:x}").as_bytes());
        let mut observe = m2.observe("myelection").await.expect("observe");
        let seen = observe.message().await.expect("observe").expect("observe");
        assert_eq!(seen.kv().unwrap().value(), b"one");
        m1.proclaim(
            "two",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .expect("proclaim");
        let seen = observe.message().await.expect("observe").expect("observe");
        assert_eq!(seen.kv().unwrap().value(), b"two");
        let got = m2.leader("myelection").await.expect("leader");
        assert_eq!(got.kv().unwrap().value(), b"two");
        let mut m1c = m1.clone();
        let challenger = tokio::spawn(async move { m1c.campaign("myelection", "three", e2).await });
        wait_count(&mut m2, "myelection/", 2).await;
        assert!(!challenger.is_finished(), "two leaders at once");
        m0.resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await
            .expect("resign");
        let second = challenger.await.expect("task").expect("campaign");
        let second = second.leader().expect("leader key").clone();
        assert_eq!(second.key(), format!("myelection/{e2:x}").as_bytes());
        let seen = observe.message().await.expect("observe").expect("observe");
        assert_eq!(seen.kv().unwrap().value(), b"three");
        let stale = m0
            .proclaim("four", Some(ProclaimOptions::new().with_leader(leader)))
            .await
            .unwrap_err();
        assert_eq!(
            status_of(stale),
            (UNKNOWN, "election: not leader".to_string())
        );
    }));
}
