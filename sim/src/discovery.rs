//! etcd discovery under simulation: a discovery host (detcd members serving the v2 keys API,
//! `--enable-v2`) and members bootstrapping through it with `--discovery`, all run by the
//! production `run_member_with_dns` on madsim hosts, with the host restarted or cut off while
//! members register.
//!
//! The `[discovery]` checker reads the token's registrations from the host (the first `size`
//! by createdIndex are the cluster etcd's protocol forms) and requires:
//! - every running member whose ID is among them serves one cluster whose member list is
//!   exactly those IDs, each ID etcd's for the member's peer URL and the discovery URL;
//! - no member outside them runs a cluster;
//! - every stopped member names its cause (a full cluster, a duplicate ID or name, a failed
//!   request), and the ones a scenario expects to fail a particular way do;
//! - a running member that serves nothing is one still waiting for registrations (fewer than
//!   `size`), never one hung after the cluster formed.

use crate::srv::{outcomes, Outcome, SimDns, SrvMember};
use detcd_core::config::{parse_urls, Config, InitialMember};
use detcd_core::discovery::{HttpRequest, Method, Transport};
use madsim::runtime::{Handle, NodeHandle};
use std::time::Duration;

/// The discovery host's address (one member, or the first of three).
pub const HOST_IP: &str = "10.0.1.100";

/// The discovery URL of `token` on the host.
pub fn discovery_url(token: &str) -> String {
    format!("http://{HOST_IP}:2379/v2/keys/discovery/{token}")
}

/// The errors a member may stop with in a discovery scenario: each names its cause.
pub const CLEAR_ERRORS: &[&str] = &[
    "failed to join discovery cluster",
    "the cluster doesn't have a size configuration value",
];

/// A member named `name` on `ip` (peer port 2380, client port 2379, plain http).
fn config_at(name: &str, ip: &str) -> Config {
    let mut cfg = Config::default();
    cfg.name = name.to_string();
    cfg.data_dir = format!("{name}.etcd");
    cfg.initial_advertise_peer_urls = parse_urls(&format!("http://{ip}:2380")).unwrap();
    cfg.listen_peer_urls = cfg.initial_advertise_peer_urls.clone();
    cfg.listen_client_urls = parse_urls(&format!("http://{ip}:2379")).unwrap();
    cfg.advertise_client_urls = cfg.listen_client_urls.clone();
    cfg
}

/// A discovery host member at `ip` of the static cluster `hosts` (`(name, ip)`), v2 enabled.
pub fn host_config(name: &str, ip: &str, hosts: &[(&str, &str)]) -> Config {
    let mut cfg = config_at(name, ip);
    cfg.initial_cluster_token = "discovery-host".into();
    cfg.initial_cluster = hosts
        .iter()
        .map(|(n, i)| InitialMember {
            name: n.to_string(),
            peer_urls: parse_urls(&format!("http://{i}:2380")).unwrap(),
        })
        .collect();
    cfg.enable_v2 = true;
    cfg
}

/// A member bootstrapping through `durl` (the guide's discovery example), exiting when the
/// cluster is full (the proxy fallback needs the gateway, which the simulator lacks).
pub fn member_config(name: &str, ip: &str, durl: &str) -> Config {
    let mut cfg = config_at(name, ip);
    cfg.initial_cluster = Vec::new();
    cfg.discovery.url = durl.to_string();
    cfg.discovery.fallback_proxy = false;
    cfg
}

/// etcd's member ID for a member at `ip` bootstrapped through `durl`.
pub fn member_id(ip: &str, durl: &str) -> u64 {
    detcd_core::discovery::member_id_v2(&parse_urls(&format!("http://{ip}:2380")).unwrap(), durl)
}

/// Starts a member (or host member) on its own madsim host.
pub fn start(cfg: Config, ip: &str) -> SrvMember {
    crate::srv::start_srv_member(cfg, ip, SimDns::default())
}

/// An HTTP request from `from` to the host, through detcd's own discovery HTTP client.
pub async fn http(
    from: &NodeHandle,
    method: Method,
    url: String,
    form: Option<String>,
) -> Transport {
    from.spawn(async move {
        let req = HttpRequest {
            method,
            url,
            form_body: form,
            timeout_ms: Some(2_000),
            connect_timeout_ms: 2_000,
        };
        detcd_net::discovery::send(&req, None).await
    })
    .await
    .unwrap_or_else(|e| Transport::Failed(format!("{e:?}")))
}

/// Creates `<durl>/_config/size` = `size`, retrying until the host answers.
pub async fn put_size(from: &NodeHandle, durl: &str, size: usize) {
    for _ in 0..120 {
        let got = http(
            from,
            Method::Put,
            format!("{durl}/_config/size"),
            Some(format!("value={size}")),
        )
        .await;
        if let Transport::Response(r) = &got {
            if r.status == 200 || r.status == 201 {
                return;
            }
        }
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the discovery host never took the size");
}

/// The member IDs registered under `durl`, in createdIndex order (None: no answer).
pub async fn registered(from: &NodeHandle, durl: &str) -> Option<Vec<u64>> {
    let got = http(from, Method::Get, durl.to_string(), None).await;
    let Transport::Response(r) = got else {
        return None;
    };
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let mut nodes: Vec<(u64, u64)> = v["node"]["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    let key = n["key"].as_str()?;
                    let id = u64::from_str_radix(key.rsplit('/').next()?, 16).ok()?;
                    Some((n["createdIndex"].as_u64()?, id))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    Some(nodes.into_iter().map(|(_, id)| id).collect())
}

/// What a scenario expects of the members outside the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    pub size: usize,
    /// Members that must stop with this text (and must not run).
    pub stopped_with: &'a [(&'a str, &'a str)],
    /// The cluster must have formed (every one of its members registered and running,
    /// except those expected to stop).
    pub formed: bool,
    /// Once `size` members registered, every member outside them must stop with this.
    pub extra_stop: Option<&'a str>,
}

/// `[discovery]` over the members' outcomes and the host's registrations. Returns a
/// violation (or why the run is not settled yet, as `Err`): see the module docs.
pub fn check(
    names: &[String],
    ids: &[u64],
    got: &[Outcome],
    registered: &[u64],
    expect: Expect<'_>,
) -> Result<(), String> {
    let chosen: Vec<u64> = registered.iter().take(expect.size).copied().collect();
    let mut sorted_chosen = chosen.clone();
    sorted_chosen.sort();
    let complete = chosen.len() == expect.size;
    let mut cluster: Option<u64> = None;
    for ((name, id), o) in names.iter().zip(ids).zip(got) {
        if let Some((_, want)) = expect.stopped_with.iter().find(|(n, _)| *n == name) {
            match o {
                Outcome::Stopped(e) if e.contains(want) => continue,
                Outcome::Stopped(e) => {
                    return Err(format!(
                        "[discovery] {name} stopped with {e:?}, not with {want:?}"
                    ))
                }
                Outcome::Silent(_) => return Err(format!("unsettled: {name} has not stopped yet")),
                other => {
                    return Err(format!(
                        "[discovery] {name} should stop with {want:?}: {other:?}"
                    ))
                }
            }
        }
        match o {
            Outcome::Stopped(e) => {
                if !CLEAR_ERRORS.iter().any(|c| e.contains(c)) {
                    return Err(format!(
                        "[discovery] {name} stopped without a clear cause: {e}"
                    ));
                }
                if e.contains("cluster is full") && chosen.contains(id) {
                    return Err(format!("[discovery] {name} was told the cluster is full, but it is among the first {} registered", expect.size));
                }
                if expect.formed && chosen.contains(id) {
                    return Err(format!(
                        "[discovery] {name} is among the first {} registered but stopped: {e}",
                        expect.size
                    ));
                }
                if let (true, false, Some(want)) =
                    (complete, chosen.contains(id), expect.extra_stop)
                {
                    if !e.contains(want) {
                        return Err(format!("[discovery] {name} registered after the cluster was full and stopped with {e:?}, not {want:?}"));
                    }
                }
            }
            Outcome::Running {
                cluster_id,
                member_id,
                members: list,
            } => {
                if member_id != id {
                    return Err(format!("[discovery] {name} runs as {member_id:x}, not etcd's ID {id:x} for its URL and the discovery URL"));
                }
                if !complete || !chosen.contains(id) {
                    return Err(format!(
                        "[discovery] {name} ({id:x}) runs a cluster but is not among the first {} registered ({chosen:x?}); members {list:x?}",
                        expect.size
                    ));
                }
                if list != &sorted_chosen {
                    return Err(format!("[discovery] {name}'s member list {list:x?} is not the registered cluster {sorted_chosen:x?}"));
                }
                match cluster {
                    None => cluster = Some(*cluster_id),
                    Some(c) if c == *cluster_id => {}
                    Some(c) => {
                        return Err(format!(
                            "[discovery] two clusters: {c:x} and {cluster_id:x} ({name})"
                        ))
                    }
                }
            }
            Outcome::Silent(_)
                if complete && !chosen.contains(id) && expect.extra_stop.is_some() =>
            {
                return Err(format!("unsettled: {name} registered after the cluster was full and has not stopped yet"));
            }
            Outcome::Silent(why) => {
                // Waiting for registrations is legitimate only while fewer than `size`
                // members have registered; otherwise a member in the cluster must serve, and
                // one outside it must have stopped.
                if complete {
                    return Err(format!(
                        "unsettled: {name} serves nothing ({why}) though {} members registered",
                        chosen.len()
                    ));
                }
            }
        }
    }
    if expect.formed && cluster.is_none() {
        return Err(format!(
            "unsettled: no cluster formed yet (registered {registered:x?})"
        ));
    }
    Ok(())
}

/// Polls the `[discovery]` checker until it holds (or `bound` passes: the last violation is
/// the failure). A violation that is not "unsettled" fails at once.
pub async fn settle(
    checker: &NodeHandle,
    members: &[SrvMember],
    durl: &str,
    expect: Expect<'_>,
    bound: Duration,
) {
    let ids: Vec<u64> = members.iter().map(|m| member_id(&m.ip, durl)).collect();
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let deadline = madsim::time::Instant::now() + bound;
    loop {
        let got = outcomes(checker, members).await;
        let reg = registered(checker, durl).await;
        let verdict = match &reg {
            Some(r) => check(&names, &ids, &got, r, expect),
            None => Err("unsettled: the discovery host does not answer".to_string()),
        };
        match verdict {
            Ok(()) => return,
            Err(e) if !e.starts_with("unsettled") => {
                panic!("{e}\noutcomes: {got:?}\nregistered: {reg:x?}")
            }
            Err(e) if madsim::time::Instant::now() > deadline => {
                panic!("[discovery] did not settle within {bound:?}: {e}\noutcomes: {got:?}")
            }
            Err(_) => madsim::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The host the checker asks from.
pub fn checker_host() -> NodeHandle {
    Handle::current()
        .create_node()
        .name("discovery-checker")
        .ip("10.0.1.250".parse().unwrap())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(c: u64, m: u64, ms: &[u64]) -> Outcome {
        Outcome::Running {
            cluster_id: c,
            member_id: m,
            members: ms.to_vec(),
        }
    }

    /// Every rule of `[discovery]` refuses what it should.
    #[test]
    fn the_checker_bites() {
        let ms: Vec<String> = ["a", "b", "c", "d"].iter().map(|n| n.to_string()).collect();
        let ids = [1, 2, 3, 4];
        let reg = [2, 1, 3, 4];
        let e = Expect {
            size: 3,
            stopped_with: &[],
            formed: true,
            extra_stop: Some("cluster is full"),
        };
        let full = Outcome::Stopped(
            "failed to join discovery cluster (discovery: cluster is full)".into(),
        );
        let ok = [
            running(9, 1, &[1, 2, 3]),
            running(9, 2, &[1, 2, 3]),
            running(9, 3, &[1, 2, 3]),
            full.clone(),
        ];
        assert_eq!(check(&ms, &ids, &ok, &reg, e), Ok(()));
        // The fourth registrant running its own cluster (a size+1-th member joined).
        let mut bad = ok.clone();
        bad[3] = running(8, 4, &[1, 2, 3, 4]);
        assert!(check(&ms, &ids, &bad, &reg, e)
            .unwrap_err()
            .starts_with("[discovery]"));
        // A member of the cluster told it is full.
        let mut bad = ok.clone();
        bad[0] = full.clone();
        assert!(check(&ms, &ids, &bad, &reg, e)
            .unwrap_err()
            .contains("among the first"));
        // A wrong member ID, a wrong list, two clusters, an unclear stop.
        let mut bad = ok.clone();
        bad[0] = running(9, 7, &[1, 2, 3]);
        assert!(check(&ms, &ids, &bad, &reg, e).is_err());
        let mut bad = ok.clone();
        bad[1] = running(9, 2, &[1, 2]);
        assert!(check(&ms, &ids, &bad, &reg, e).is_err());
        let mut bad = ok.clone();
        bad[2] = running(7, 3, &[1, 2, 3]);
        assert!(check(&ms, &ids, &bad, &reg, e)
            .unwrap_err()
            .contains("two clusters"));
        let mut bad = ok.clone();
        bad[3] = Outcome::Stopped("panicked".into());
        assert!(check(&ms, &ids, &bad, &reg, e).is_err());
        // The extra member stopping for another reason than a full cluster.
        let mut bad = ok.clone();
        bad[3] = Outcome::Stopped(
            "failed to join discovery cluster (discovery: found duplicate name)".into(),
        );
        assert!(check(&ms, &ids, &bad, &reg, e)
            .unwrap_err()
            .contains("not \"cluster is full\""));
        // A member of the cluster that stopped.
        let mut bad = ok.clone();
        bad[1] = Outcome::Stopped(
            "failed to join discovery cluster (discovery: found duplicate name)".into(),
        );
        assert!(check(&ms, &ids, &bad, &reg, e)
            .unwrap_err()
            .contains("but stopped"));
        // A member expected to stop a particular way.
        let e2 = Expect {
            size: 3,
            stopped_with: &[("d", "found duplicate id")],
            formed: true,
            extra_stop: None,
        };
        assert!(check(&ms, &ids, &ok, &reg, e2)
            .unwrap_err()
            .contains("not with"));
        // Silence is only waiting while registrations are missing.
        let mut waiting = ok.clone();
        waiting[0] = Outcome::Silent("cannot connect".into());
        assert!(check(&ms, &ids, &waiting, &reg, e)
            .unwrap_err()
            .starts_with("unsettled"));
        let e3 = Expect {
            size: 3,
            stopped_with: &[],
            formed: false,
            extra_stop: None,
        };
        let all_wait = vec![Outcome::Silent("x".into()); 4];
        assert_eq!(check(&ms, &ids, &all_wait, &reg[..2], e3), Ok(()));
    }
}
