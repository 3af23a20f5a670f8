//! Leases survive a restart of the whole cluster (kill -9 of every member): their TTLs, their
//! keys, and their expiry, which the new leader counts afresh.

use detcd_tests::etcd_client::{LeaseTimeToLiveOptions, PutOptions};
use detcd_tests::{connect, runtime, subnet, within, Cluster, HEALTHY_TIMEOUT};
use std::time::Duration;

#[test]
fn leases_survive_a_full_restart() {
    let mut c = Cluster::start_guide(
        "lease_restart",
        subnet::LEASE_RESTART,
        3,
        "lease-restart",
        &[],
    );
    let urls = c.client_urls();
    let rt = runtime();
    let (long, short) = rt.block_on(within(60, "leases before the restart", async {
        let mut client = connect(&urls).await;
        let long = client.lease_grant(120, None).await.expect("grant").id();
        let short = client.lease_grant(3, None).await.expect("grant").id();
        for (key, lease) in [("long/1", long), ("long/2", long), ("short", short)] {
            client
                .put(key, "v", Some(PutOptions::new().with_lease(lease)))
                .await
                .expect("put with lease");
        }
        (long, short)
    }));
    for m in &mut c.members {
        m.kill();
    }
    for m in &mut c.members {
        m.start();
    }
    c.wait_healthy(HEALTHY_TIMEOUT);
    rt.block_on(within(60, "leases after the restart", async {
        let mut client = connect(&urls).await;
        let ttl = client
            .lease_time_to_live(long, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(ttl.granted_ttl(), 120);
        assert!(ttl.ttl() > 100, "remaining {}", ttl.ttl());
        assert_eq!(ttl.keys(), &[b"long/1".to_vec(), b"long/2".to_vec()]);
        let (mut keeper, mut acks) = client.lease_keep_alive(long).await.expect("keep-alive");
        keeper.keep_alive().await.expect("keep-alive");
        assert_eq!(acks.message().await.unwrap().unwrap().ttl(), 120);
        // The short lease ends on its own, its key with it.
        loop {
            let left = client.get("short", None).await.expect("get").kvs().len();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone = client.lease_time_to_live(short, None).await.expect("ttl");
        assert_eq!(gone.ttl(), -1);
        client.lease_revoke(long).await.expect("revoke");
        assert!(client.get("long/1", None).await.unwrap().kvs().is_empty());
    }));
}
