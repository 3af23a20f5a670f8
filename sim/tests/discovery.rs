#![cfg(madsim)]
//! etcd discovery's races under simulation (`sim/src/discovery.rs`): members starting
//! together with random delays, `size+1` members racing, two members with the same name, the
//! discovery host restarted or cut off while members register, a member crashing after it
//! registered. Each ends with `[discovery]`: exactly one cluster, of the first `size`
//! registrants, with etcd's member IDs; every other member stopped with the right message or
//! still visibly waiting for registrations that never came.

use detcd_sim::discovery::{
    checker_host, discovery_url, host_config, member_config, put_size, registered, settle, start,
    Expect, HOST_IP,
};
use detcd_sim::srv::SrvMember;
use madsim::rand::{thread_rng, Rng};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(120);

fn member_ip(i: usize) -> String {
    format!("10.0.1.{}", 10 + i)
}

/// A one-member discovery host with a token of `size`: (host, checker, discovery URL).
async fn host_with_token(
    token: &str,
    size: usize,
) -> (SrvMember, madsim::runtime::NodeHandle, String) {
    let host = start(host_config("host", HOST_IP, &[("host", HOST_IP)]), HOST_IP);
    let checker = checker_host();
    let durl = discovery_url(token);
    put_size(&checker, &durl, size).await;
    (host, checker, durl)
}

/// Starts members `0..n` (named infra<i>, or `name` for all), each after a random delay of up
/// to `max_delay_ms`.
async fn start_members(
    n: usize,
    durl: &str,
    max_delay_ms: u64,
    name: Option<&str>,
) -> Vec<SrvMember> {
    let mut delays: Vec<u64> = (0..n)
        .map(|_| thread_rng().gen_range(0..=max_delay_ms))
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| delays[i]);
    let mut started: Vec<Option<SrvMember>> = (0..n).map(|_| None).collect();
    let mut at = 0;
    for i in order {
        madsim::time::sleep(Duration::from_millis(delays[i] - at)).await;
        at = delays[i];
        let n = name
            .map(str::to_string)
            .unwrap_or_else(|| format!("infra{i}"));
        let ip = member_ip(i);
        let mut m = start(member_config(&n, &ip, durl), &ip);
        // Distinct names for the checker's messages even when the members share one.
        m.name = format!("{n}@{ip}");
        started[i] = Some(m);
    }
    delays.clear();
    started.into_iter().map(Option::unwrap).collect()
}

#[madsim::test]
async fn members_start_together_with_random_delays() {
    let (_host, checker, durl) = host_with_token("together", 3).await;
    let members = start_members(3, &durl, 3_000, None).await;
    let expect = Expect {
        size: 3,
        stopped_with: &[],
        formed: true,
        extra_stop: Some("cluster is full"),
    };
    settle(&checker, &members, &durl, expect, BOUND).await;
}

#[madsim::test]
async fn size_plus_one_members_race() {
    let (_host, checker, durl) = host_with_token("race", 3).await;
    let members = start_members(4, &durl, 1_500, None).await;
    let expect = Expect {
        size: 3,
        stopped_with: &[],
        formed: true,
        extra_stop: Some("cluster is full"),
    };
    settle(&checker, &members, &durl, expect, BOUND).await;
    let reg = registered(&checker, &durl).await.unwrap();
    assert!(reg.len() <= 4, "{reg:x?}");
}

#[madsim::test]
async fn two_members_with_the_same_name() {
    let (_host, checker, durl) = host_with_token("dupname", 2).await;
    let members = start_members(2, &durl, 1_000, Some("default")).await;
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let stopped: Vec<(&str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "found duplicate name"))
        .collect();
    let expect = Expect {
        size: 2,
        stopped_with: &stopped,
        formed: false,
        extra_stop: None,
    };
    settle(&checker, &members, &durl, expect, BOUND).await;
    for m in &members {
        let e = m.exit.lock().unwrap().clone().unwrap();
        assert!(e.contains("unique --name"), "{e}");
    }
}

/// The host goes down (restarted, or cut off from the network) at a random moment while
/// members register. etcd's client retries connection failures on its reads and gives up on
/// a failed registration: every member ends in the cluster, stopped with the failed request
/// named, or waiting for registrations that stopped coming; never in a second cluster.
#[madsim::test]
async fn the_discovery_host_fails_during_registration() {
    let (host, checker, durl) = host_with_token("host-fails", 3).await;
    let restart = thread_rng().gen_bool(0.5);
    let outage_at = thread_rng().gen_range(0..2_000);
    let outage_for = thread_rng().gen_range(500..4_000);
    let starting = {
        let durl = durl.clone();
        madsim::task::spawn(async move { start_members(3, &durl, 2_000, None).await })
    };
    madsim::time::sleep(Duration::from_millis(outage_at)).await;
    let net = madsim::net::NetSim::current();
    if restart {
        madsim::runtime::Handle::current().kill(host.node.id());
        madsim::time::sleep(Duration::from_millis(outage_for)).await;
        madsim::runtime::Handle::current().restart(host.node.id());
    } else {
        net.clog_node(host.node.id());
        madsim::time::sleep(Duration::from_millis(outage_for)).await;
        net.unclog_node(host.node.id());
    }
    let members = starting.await.unwrap();
    let expect = Expect {
        size: 3,
        stopped_with: &[],
        formed: false,
        extra_stop: Some("cluster is full"),
    };
    settle(&checker, &members, &durl, expect, BOUND).await;
}

/// A member crashes after it registered and restarts with its (still empty) data dir: etcd's
/// protocol finds its ID taken and it stops with "found duplicate id"; the others form the
/// cluster that counts it, and serve with two of three.
#[madsim::test]
async fn a_member_crashes_after_registering() {
    let (_host, checker, durl) = host_with_token("crash", 3).await;
    let first = start(member_config("infra0", &member_ip(0), &durl), &member_ip(0));
    let me = detcd_sim::discovery::member_id(&member_ip(0), &durl);
    for _ in 0..100 {
        if registered(&checker, &durl)
            .await
            .is_some_and(|r| r.contains(&me))
        {
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    madsim::runtime::Handle::current().restart(first.node.id());
    let mut members = vec![first];
    for i in 1..3 {
        members.push(start(
            member_config(&format!("infra{i}"), &member_ip(i), &durl),
            &member_ip(i),
        ));
    }
    let expect = Expect {
        size: 3,
        stopped_with: &[("infra0", "found duplicate id")],
        formed: true,
        extra_stop: None,
    };
    settle(&checker, &members, &durl, expect, BOUND).await;
}
