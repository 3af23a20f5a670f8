//! Crash tolerance with real processes: kill -9 a follower, then the leader, then everyone,
//! and check that every acknowledged write survives.

use detcd_tests::etcd_client::{Client, GetOptions};
use detcd_tests::{connect, runtime, set_flag, subnet, within, Cluster, Deadline, HEALTHY_TIMEOUT};
use std::collections::BTreeMap;
use std::time::Duration;

const TOKEN: &str = "kill-test-cluster";

/// One put with a 5 s bound; records the key if acknowledged.
async fn put(
    client: &mut Client,
    key: &str,
    value: &str,
    acked: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), client.put(key, value, None)).await {
        Ok(Ok(_)) => {
            acked.insert(key.to_string(), value.to_string());
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Puts, retrying until `timeout` (for the moments right after a leader is lost).
async fn put_eventually(
    client: &mut Client,
    key: &str,
    value: &str,
    acked: &mut BTreeMap<String, String>,
    timeout: Duration,
) {
    let deadline = Deadline::new(timeout, format!("put {key}={value} to succeed"));
    loop {
        match put(client, key, value, acked).await {
            Ok(()) => return,
            Err(e) => deadline.check(&e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (member_id, leader) as reported by a member's Status, or an error text.
async fn status(client: &mut Client) -> Result<(u64, u64), String> {
    match tokio::time::timeout(Duration::from_secs(5), client.status()).await {
        Ok(Ok(s)) => Ok((s.header().map(|h| h.member_id()).unwrap_or(0), s.leader())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Polls the members in `live` until all of them name the same leader, which is one of them and
/// not `not`; returns its index.
async fn agreed_leader(
    clients: &mut [Client],
    ids: &[u64],
    live: &[usize],
    not: Option<u64>,
) -> usize {
    let deadline = Deadline::new(
        Duration::from_secs(30),
        format!("members {live:?} to agree on a leader among themselves"),
    );
    loop {
        let mut seen = Vec::new();
        for &i in live {
            seen.push(status(&mut clients[i]).await.map(|(_, l)| l));
        }
        if let Ok(l) = &seen[0] {
            let agree = seen.iter().all(|s| s.as_ref() == Ok(l));
            if let Some(idx) = ids.iter().position(|id| id == l) {
                if agree && live.contains(&idx) && Some(*l) != not {
                    return idx;
                }
            }
        }
        deadline.check(&format!("{seen:?} (ids {ids:x?})"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a serializable (member-local) get until it returns `value`.
async fn wait_local_value(client: &mut Client, who: &str, key: &str, value: &str) {
    let deadline = Deadline::new(
        Duration::from_secs(20),
        format!("{who} to catch up: serializable get {key} == {value}"),
    );
    loop {
        let got = match tokio::time::timeout(
            Duration::from_secs(5),
            client.get(key, Some(GetOptions::new().with_serializable())),
        )
        .await
        {
            Ok(Ok(r)) => match r.kvs().first() {
                Some(kv) if kv.value() == value.as_bytes() => return,
                Some(kv) => format!("value {:?}", kv.value_str()),
                None => "no such key".to_string(),
            },
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        deadline.check(&got);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn kill_leader_and_follower() {
    let mut c = Cluster::start_guide("kill", subnet::KILL_LEADER_AND_FOLLOWER, 3, TOKEN, &[]);
    let original_args: Vec<Vec<String>> = c.members.iter().map(|m| m.args.clone()).collect();
    let rt = runtime();
    let urls = c.client_urls();
    let mut clients: Vec<Client> =
        rt.block_on(async { futures_join(urls.iter().map(|u| vec![u.clone()]).collect()).await });
    let mut acked = BTreeMap::new();
    let mut seq = 0;
    let mut next_key = || {
        seq += 1;
        format!("k/{seq:04}")
    };

    // IDs and the first leader.
    let ids: Vec<u64> = rt.block_on(within(30, "status of every member", async {
        member_ids(&mut clients).await
    }));
    let leader = rt.block_on(agreed_leader(&mut clients, &ids, &[0, 1, 2], None));
    let follower = (leader + 1) % 3;
    rt.block_on(within(60, "writes with all members up", async {
        for _ in 0..10 {
            let k = next_key();
            put(&mut clients[leader], &k, &format!("v-{k}"), &mut acked)
                .await
                .expect("put with all members up");
        }
    }));

    // 1. kill -9 a follower: writes still succeed.
    c.members[follower].kill();
    rt.block_on(within(60, "writes with a follower down", async {
        for _ in 0..20 {
            let k = next_key();
            put(&mut clients[leader], &k, &format!("v-{k}"), &mut acked)
                .await
                .unwrap_or_else(|e| panic!("put {k} with one follower down: {e}"));
        }
    }));

    // Restart it with a different token and state `existing`: ignored, because its data dir
    // holds a raft log. It keeps its ID and catches up.
    {
        let m = &mut c.members[follower];
        set_flag(&mut m.args, "--initial-cluster-token", "some-other-token");
        set_flag(&mut m.args, "--initial-cluster-state", "existing");
        m.start();
        m.wait_healthy(HEALTHY_TIMEOUT);
    }
    rt.block_on(within(60, "the restarted follower catching up", async {
        put(
            &mut clients[leader],
            "latest",
            "after-follower-restart",
            &mut acked,
        )
        .await
        .expect("put latest");
        wait_local_value(
            &mut clients[follower],
            "the restarted follower",
            "latest",
            "after-follower-restart",
        )
        .await;
        let (id, _) = status(&mut clients[follower])
            .await
            .expect("status of the restarted follower");
        assert_eq!(
            id, ids[follower],
            "the restarted follower's member ID changed"
        );
    }));

    // 2. kill -9 the leader (as endpoint status reports it): the other two elect a new one and
    // serve writes.
    let leader = rt.block_on(agreed_leader(&mut clients, &ids, &[0, 1, 2], None));
    c.members[leader].kill();
    let rest: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = rt.block_on(agreed_leader(&mut clients, &ids, &rest, Some(ids[leader])));
    rt.block_on(within(90, "writes after the leader was killed", async {
        let k = next_key();
        put_eventually(
            &mut clients[new_leader],
            &k,
            &format!("v-{k}"),
            &mut acked,
            Duration::from_secs(20),
        )
        .await;
        for i in 0..20 {
            // alternate between the new leader and the remaining follower (which forwards)
            let via = rest[i % 2];
            let k = next_key();
            put(&mut clients[via], &k, &format!("v-{k}"), &mut acked)
                .await
                .unwrap_or_else(|e| {
                    panic!("put {k} via member {via} after the leader was killed: {e}")
                });
        }
        put(
            &mut clients[rest[0]],
            "latest",
            "after-leader-kill",
            &mut acked,
        )
        .await
        .expect("put latest");
    }));

    // Restart the old leader: it rejoins and catches up.
    c.members[leader].args = original_args[leader].clone();
    c.members[leader].start();
    c.members[leader].wait_healthy(HEALTHY_TIMEOUT);
    rt.block_on(within(60, "the old leader catching up", async {
        wait_local_value(
            &mut clients[leader],
            "the restarted old leader",
            "latest",
            "after-leader-kill",
        )
        .await;
        for i in 0..9 {
            let k = next_key();
            put(&mut clients[i % 3], &k, &format!("v-{k}"), &mut acked)
                .await
                .unwrap_or_else(|e| {
                    panic!("put {k} via member {} with all members back: {e}", i % 3)
                });
        }
    }));

    // 3. kill -9 all three, restart all: every acknowledged write is there, on every member.
    for m in &mut c.members {
        m.kill();
    }
    for (m, args) in c.members.iter_mut().zip(&original_args) {
        m.args = args.clone();
        m.start();
    }
    c.wait_healthy(HEALTHY_TIMEOUT);
    rt.block_on(within(
        60,
        "checking acknowledged writes after a full restart",
        async {
            let after = member_ids(&mut clients).await;
            assert_eq!(after, ids, "member IDs changed across the full restart");
            for (i, cl) in clients.iter_mut().enumerate() {
                let deadline = Deadline::new(
                    Duration::from_secs(20),
                    format!("a linearizable read via member {i}"),
                );
                let got: BTreeMap<String, String> = loop {
                    match cl.get("", Some(GetOptions::new().with_all_keys())).await {
                        Ok(r) => {
                            break r
                                .kvs()
                                .iter()
                                .map(|kv| {
                                    (
                                        kv.key_str().unwrap().to_string(),
                                        kv.value_str().unwrap().to_string(),
                                    )
                                })
                                .collect()
                        }
                        Err(e) => deadline.check(&e),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                for (k, v) in &acked {
                    assert_eq!(
                        got.get(k),
                        Some(v),
                        "acknowledged write {k}={v} missing or wrong via member {i}"
                    );
                }
            }
        },
    ));
    assert!(
        acked.len() >= 60,
        "only {} writes acknowledged",
        acked.len()
    );
}

async fn member_ids(clients: &mut [Client]) -> Vec<u64> {
    let mut ids = Vec::new();
    for (i, cl) in clients.iter_mut().enumerate() {
        let deadline = Deadline::new(
            Duration::from_secs(20),
            format!("status of member {i} after the restart"),
        );
        loop {
            match status(cl).await {
                Ok((id, _)) => {
                    ids.push(id);
                    break;
                }
                Err(e) => deadline.check(&e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ids
}

async fn futures_join(endpoint_sets: Vec<Vec<String>>) -> Vec<Client> {
    let mut out = Vec::new();
    for eps in endpoint_sets {
        out.push(connect(&eps).await);
    }
    out
}
