//! A follower that was down while the others compacted their logs catches up from a snapshot
//! file the leader streams to it on its own call (Peer.Snapshot), in chunks, with real
//! processes: afterwards it serves every key, both sides logged the transfer, and the
//! follower kept no copy of the file once installed.

use detcd_tests::etcd_client::{Client, GetOptions};
use detcd_tests::{connect, runtime, subnet, within, Cluster, Deadline, HEALTHY_TIMEOUT};
use std::time::Duration;

const KEYS: usize = 1500;

/// Serializable (member-local) count of the keys under `k/`.
async fn local_count(client: &mut Client) -> Result<i64, String> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    match tokio::time::timeout(Duration::from_secs(5), client.get("k/", Some(opts))).await {
        Ok(Ok(r)) => Ok(r.count()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_from_a_streamed_snapshot() {
    // A small --snapshot-count: the log is compacted every 100 entries, keeping 100.
    let mut c = Cluster::start_guide(
        "snapshot_catch_up",
        subnet::SNAPSHOT_CATCH_UP,
        3,
        "snapshot-catch-up",
        &["--snapshot-count", "100"],
    );
    let urls = c.client_urls();
    let rt = runtime();
    // Member 2 may be the leader: the others elect a new one, and the first puts retry.
    c.members[2].kill();
    // 1.5 MB of values: the snapshot file takes more than one 1 MiB chunk.
    let value = "v".repeat(1000);
    rt.block_on(within(120, "writes with one member down", async {
        let mut client = connect(&urls[..2]).await;
        for i in 0..KEYS {
            let key = format!("k/{i:05}");
            let deadline = Deadline::new(Duration::from_secs(20), format!("put {key}"));
            loop {
                match client.put(key.as_str(), value.as_str(), None).await {
                    Ok(_) => break,
                    Err(e) => deadline.check(&e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }));

    c.members[2].start();
    c.members[2].wait_healthy(HEALTHY_TIMEOUT);
    rt.block_on(within(60, "the restarted member catching up", async {
        let mut client = connect(&urls[2..]).await;
        let deadline = Deadline::new(
            Duration::from_secs(50),
            format!("member 2 to serve all {KEYS} keys locally"),
        );
        loop {
            match local_count(&mut client).await {
                Ok(n) if n == KEYS as i64 => break,
                other => deadline.check(&format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    let received = c.members[2].stderr();
    assert!(
        received.contains("received snapshot"),
        "member 2 should have caught up from a snapshot:\n{}",
        c.members[2].log_tail(40)
    );
    let sender = c.members[..2]
        .iter()
        .find(|m| m.stderr().contains("sent snapshot"))
        .unwrap_or_else(|| panic!("a member should have sent a snapshot:\n{}", c.logs(30)));
    let snap_files = |m: &detcd_tests::Member| -> Vec<String> {
        let dir = m.data_dir.join("member").join("snap");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    };
    // The sender keeps the file it built (for other followers); the receiver, once the data
    // file holds the snapshot, keeps nothing (no copy doubling its data dir, no leftovers).
    let built = snap_files(sender);
    assert!(built.iter().any(|f| f.ends_with(".snap")), "{built:?}");
    let received = snap_files(&c.members[2]);
    assert!(received.is_empty(), "{received:?}");
}
