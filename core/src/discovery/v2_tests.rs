//! Tests of the v2 discovery machine against a small in-memory v2 keys server.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const DURL: &str = "http://disc.example:2379/v2/keys/d/tok";
const ENDPOINT: &str = "http://disc.example:2379";

// ---------------------------------------------------------------------------------------------
// A fake v2 keys server: files and directories with created/modified indexes, prevExist=false
// (105 on conflict), GET of files and directory listings, and waits (wait=true&waitIndex=N,
// recursive or not) answered from the event history or parked until a later write.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct FakeNode {
    /// `None` for a directory.
    value: Option<String>,
    created: u64,
    modified: u64,
}

#[derive(Default)]
struct Fake {
    index: u64,
    nodes: BTreeMap<String, FakeNode>,
    /// (index, key) of each write.
    history: Vec<(u64, String)>,
    /// Every request served or parked, in order.
    requests: Vec<HttpRequest>,
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl Fake {
    fn with_size(size: &str) -> Fake {
        let mut f = Fake::default();
        f.write("/d/tok/_config/size", size);
        f
    }

    fn write(&mut self, key: &str, value: &str) -> FakeNode {
        self.index += 1;
        let idx = self.index;
        // implicit parent directories
        let mut parent = String::new();
        for seg in key
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            parent.push('/');
            parent.push_str(seg);
            self.nodes.entry(parent.clone()).or_insert(FakeNode {
                value: None,
                created: idx,
                modified: idx,
            });
        }
        let n = FakeNode {
            value: Some(value.to_string()),
            created: idx,
            modified: idx,
        };
        self.nodes.insert(key.to_string(), n.clone());
        self.history.push((idx, key.to_string()));
        n
    }

    fn node_json(key: &str, n: &FakeNode) -> serde_json::Value {
        let mut v =
            serde_json::json!({"key": key, "modifiedIndex": n.modified, "createdIndex": n.created});
        match &n.value {
            Some(val) => v["value"] = serde_json::json!(val),
            None => v["dir"] = serde_json::json!(true),
        }
        v
    }

    fn ok(&self, status: u16, index: u64, body: serde_json::Value) -> Transport {
        Transport::Response(HttpResponse {
            status,
            etcd_index: Some(index.to_string()),
            location: None,
            body: serde_json::to_vec(&body).unwrap(),
        })
    }

    fn error(&self, status: u16, code: i64, message: &str, cause: &str) -> Transport {
        Transport::Response(HttpResponse {
            status,
            etcd_index: Some(self.index.to_string()),
            location: None,
            body: serde_json::to_vec(&serde_json::json!({
                "errorCode": code, "message": message, "cause": cause, "index": self.index
            }))
            .unwrap(),
        })
    }

    /// Answers a request, or `None` for a wait that has nothing to return yet.
    fn serve(&mut self, req: &HttpRequest) -> Option<Transport> {
        let rest = req
            .url
            .strip_prefix(ENDPOINT)
            .expect("request to the endpoint");
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let key = path.strip_prefix("/v2/keys").expect("a keys API path");
        let key = key.trim_end_matches('/').to_string();
        let q: BTreeMap<&str, &str> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        match req.method {
            Method::Put => {
                assert_eq!(q.get("prevExist"), Some(&"false"));
                let body = req.form_body.as_deref().unwrap();
                let value = form_decode(body.strip_prefix("value=").unwrap());
                if self.nodes.contains_key(&key) {
                    return Some(self.error(412, 105, "Key already exists", &key));
                }
                let n = self.write(&key, &value);
                Some(self.ok(
                    201,
                    self.index,
                    serde_json::json!({"action": "create", "node": Fake::node_json(&key, &n)}),
                ))
            }
            Method::Get if q.get("wait") == Some(&"true") => {
                let wait_index: u64 = q["waitIndex"].parse().unwrap();
                let recursive = q.get("recursive") == Some(&"true");
                let from = if wait_index == 0 {
                    self.index + 1
                } else {
                    wait_index
                };
                let hit = self.history.iter().find(|(i, k)| {
                    *i >= from
                        && (*k == key
                            || (recursive
                                && k.starts_with(&format!("{key}/"))
                                && !super::path_base(k).starts_with('_')))
                })?;
                let (idx, k) = hit.clone();
                let n = self.nodes[&k].clone();
                Some(self.ok(
                    200,
                    idx,
                    serde_json::json!({"action": "create", "node": Fake::node_json(&k, &n)}),
                ))
            }
            Method::Get => {
                let Some(n) = self.nodes.get(&key) else {
                    // etcd names the deepest missing path
                    return Some(self.error(404, 100, "Key not found", &key));
                };
                let mut body = Fake::node_json(&key, n);
                if n.value.is_none() {
                    let prefix = format!("{key}/");
                    let children: Vec<serde_json::Value> = self
                        .nodes
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(k, c)| Fake::node_json(k, c))
                        .collect();
                    body["nodes"] = serde_json::json!(children);
                }
                Some(self.ok(
                    200,
                    self.index,
                    serde_json::json!({"action": "get", "node": body}),
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driving several members against the fake.
// ---------------------------------------------------------------------------------------------

struct Member {
    d: V2Discovery,
    parked: Option<HttpRequest>,
    result: Option<Result<String, DiscoveryError>>,
    logs: Vec<Log>,
    sleeps: Vec<u64>,
    sent: Vec<HttpRequest>,
}

impl Member {
    fn join(id: u64, value: &str) -> Member {
        Member::of(V2Discovery::join(DURL, id, value).unwrap())
    }
    fn of(d: V2Discovery) -> Member {
        Member {
            d,
            parked: None,
            result: None,
            logs: vec![],
            sleeps: vec![],
            sent: vec![],
        }
    }
    fn texts(&self) -> Vec<String> {
        self.logs.iter().map(|l| l.text.clone()).collect()
    }
}

type Fault<'a> = &'a mut dyn FnMut(usize, &HttpRequest) -> Option<Transport>;

/// Runs the members against `fake`, picking the next member to step with a xorshift seeded by
/// `seed`; `fault` may answer a request instead of the fake. Returns the number of steps.
fn drive(fake: &mut Fake, members: &mut [Member], seed: u64, fault: Fault) -> usize {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100_000, "no progress");
        // answer parked waits that can be answered now
        for m in members.iter_mut() {
            if let Some(req) = m.parked.clone() {
                if let Some(t) = fake.serve(&req) {
                    m.parked = None;
                    m.d.handle_response(t);
                }
            }
        }
        let runnable: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].result.is_none() && members[i].parked.is_none())
            .collect();
        if runnable.is_empty() {
            return steps;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = runnable[(rng % runnable.len() as u64) as usize];
        let m = &mut members[i];
        match m
            .d
            .poll_step()
            .expect("a step whenever nothing is outstanding")
        {
            Step::Send(req) => {
                m.sent.push(req.clone());
                fake.requests.push(req.clone());
                if let Some(t) = fault(i, &req) {
                    m.d.handle_response(t);
                } else if let Some(t) = fake.serve(&req) {
                    m.d.handle_response(t);
                } else {
                    m.parked = Some(req);
                }
            }
            Step::Sleep { ms, log } => {
                m.sleeps.push(ms);
                m.logs.push(log);
                m.d.handle_slept();
            }
            Step::Log(l) => m.logs.push(l),
            Step::Done(r) => {
                m.result = Some(r);
                assert_eq!(m.d.poll_step(), None, "nothing after Done");
            }
        }
    }
}

fn no_fault() -> impl FnMut(usize, &HttpRequest) -> Option<Transport> {
    |_, _| None
}

fn three() -> Vec<Member> {
    vec![
        Member::join(0x2029998aabe7a1e, "infra0=http://10.0.1.10:2380"),
        Member::join(0xe649a9c81f668aa5, "infra1=http://10.0.1.11:2380"),
        Member::join(0x3a557c8ef1cd433d, "infra2=http://10.0.1.12:2380"),
    ]
}

fn status(status: u16, body: &str) -> Transport {
    Transport::Response(HttpResponse {
        status,
        etcd_index: Some("1".into()),
        location: None,
        body: body.as_bytes().to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn three_members_join_in_any_order_and_agree() {
    for seed in 0..200 {
        let mut fake = Fake::with_size("3");
        let mut ms = three();
        drive(&mut fake, &mut ms, seed, &mut no_fault());
        // the cluster lists the values in registration (createdIndex) order
        let mut order: Vec<(u64, String)> = fake
            .nodes
            .iter()
            .filter(|(k, n)| {
                k.starts_with("/d/tok/") && !k.contains("_config") && n.value.is_some()
            })
            .map(|(_, n)| (n.created, n.value.clone().unwrap()))
            .collect();
        order.sort();
        let want = order
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>()
            .join(",");
        for m in &ms {
            assert_eq!(m.result, Some(Ok(want.clone())), "seed {seed}");
            assert!(m.sleeps.is_empty());
        }
    }
}

#[test]
fn requests_are_etcds() {
    let mut fake = Fake::with_size("1");
    let mut ms = vec![Member::join(
        0x1a,
        "n1=http://10.0.0.1:2380,n1=http://10.0.0.2:2380",
    )];
    drive(&mut fake, &mut ms, 1, &mut no_fault());
    assert_eq!(
        ms[0].result,
        Some(Ok("n1=http://10.0.0.1:2380,n1=http://10.0.0.2:2380".into()))
    );
    let urls: Vec<(Method, &str, Option<&str>, Option<u64>)> = ms[0]
        .sent
        .iter()
        .map(|r| {
            (
                r.method,
                r.url.as_str(),
                r.form_body.as_deref(),
                r.timeout_ms,
            )
        })
        .collect();
    let get = "?quorum=false&recursive=false&sorted=false";
    assert_eq!(
        urls,
        vec![
            (
                Method::Get,
                &*format!("{DURL}/_config/size{get}"),
                None,
                Some(5000)
            ),
            (Method::Get, &*format!("{DURL}{get}"), None, Some(5000)),
            (
                Method::Put,
                &*format!("{DURL}/1a?prevExist=false"),
                Some("value=n1%3Dhttp%3A%2F%2F10.0.0.1%3A2380%2Cn1%3Dhttp%3A%2F%2F10.0.0.2%3A2380"),
                Some(5000)
            ),
            // the wait on its own key, from its createdIndex (2: the size key was 1)
            (
                Method::Get,
                &*format!("{DURL}/1a?recursive=false&wait=true&waitIndex=2"),
                None,
                None
            ),
            (
                Method::Get,
                &*format!("{DURL}/_config/size{get}"),
                None,
                Some(5000)
            ),
            (Method::Get, &*format!("{DURL}{get}"), None, Some(5000)),
        ]
    );
    assert!(ms[0].sent.iter().all(|r| r.connect_timeout_ms == 30_000));
    assert_eq!(
        ms[0].texts(),
        vec!["found self 1a in the cluster", "found 1 needed peer(s)"]
    );
}

#[test]
fn a_waiter_completes_when_later_members_register() {
    let mut fake = Fake::with_size("3");
    let mut first = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    drive(&mut fake, &mut first, 7, &mut no_fault());
    // alone, it waits: recursive wait from the directory's X-Etcd-Index + 1
    let parked = first[0].parked.clone().expect("waiting");
    assert_eq!(
        parked.url,
        format!("{DURL}?recursive=true&wait=true&waitIndex=3")
    );
    assert_eq!(parked.timeout_ms, None);
    assert_eq!(
        first[0].texts(),
        vec![
            "found self 1 in the cluster",
            "found 1 peer(s), waiting for 2 more"
        ]
    );
    // b registers (and waits too), then c
    let mut all = vec![
        first.pop().unwrap(),
        Member::join(0x2, "b=http://10.0.0.2:2380"),
    ];
    drive(&mut fake, &mut all, 3, &mut no_fault());
    assert!(all.iter().all(|m| m.result.is_none() && m.parked.is_some()));
    all.push(Member::join(0x3, "c=http://10.0.0.3:2380"));
    drive(&mut fake, &mut all, 3, &mut no_fault());
    let want = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380";
    for m in &all {
        assert_eq!(m.result, Some(Ok(want.to_string())));
    }
    assert_eq!(
        all[0].texts(),
        vec![
            "found self 1 in the cluster",
            "found 1 peer(s), waiting for 2 more",
            "found peer 2 in the cluster",
            "found 2 peer(s), waiting for 1 more",
            "found peer 3 in the cluster",
            "found 3 needed peer(s)",
        ]
    );
    // the zap form of the same events
    let l = &all[0].logs[1];
    assert_eq!(l.msg, "found peers from discovery server; waiting for more");
    assert_eq!(
        l.fields,
        vec![
            ("discovery-url", ENDPOINT.to_string()),
            ("found-peers", "1".into()),
            ("needed-peers", "2".into())
        ]
    );
}

#[test]
fn a_fourth_member_finds_the_cluster_full() {
    // after the three: the fast path refuses it before it registers
    let mut fake = Fake::with_size("3");
    let mut ms = three();
    drive(&mut fake, &mut ms, 5, &mut no_fault());
    let mut late = vec![Member::join(0x4, "infra3=http://10.0.1.13:2380")];
    drive(&mut fake, &mut late, 5, &mut no_fault());
    assert_eq!(late[0].result, Some(Err(DiscoveryError::FullCluster)));
    assert!(late[0].sent.iter().all(|r| r.method == Method::Get));
    let e = DiscoveryError::FullCluster;
    assert!(e.is_full_cluster());
    assert_eq!(
        format!("failed to join discovery cluster ({e})"),
        "failed to join discovery cluster (discovery: cluster is full)"
    );

    // four at once: exactly one loses, the others agree on the first three registrations
    for seed in 0..200 {
        let mut fake = Fake::with_size("3");
        let mut ms = three();
        ms.push(Member::join(0x4, "infra3=http://10.0.1.13:2380"));
        drive(&mut fake, &mut ms, seed, &mut no_fault());
        let full = ms
            .iter()
            .filter(|m| m.result == Some(Err(DiscoveryError::FullCluster)))
            .count();
        assert_eq!(full, 1, "seed {seed}");
        let oks: Vec<_> = ms.iter().filter_map(|m| m.result.clone()?.ok()).collect();
        assert_eq!(oks.len(), 3);
        assert!(oks
            .iter()
            .all(|o| o == &oks[0] && o.split(',').count() == 3));
    }
}

#[test]
fn get_cluster_returns_the_first_size_members_of_a_full_cluster() {
    let mut fake = Fake::with_size("3");
    let mut ms = three();
    ms.push(Member::join(0x4, "infra3=http://10.0.1.13:2380"));
    drive(&mut fake, &mut ms, 11, &mut no_fault());
    let want = ms.iter().find_map(|m| m.result.clone()?.ok()).unwrap();
    let mut g = vec![Member::of(V2Discovery::get_cluster(DURL).unwrap())];
    drive(&mut fake, &mut g, 1, &mut no_fault());
    assert_eq!(g[0].result, Some(Ok(want)));
    assert!(g[0].sent.iter().all(|r| r.method == Method::Get));
}

#[test]
fn missing_size_is_the_guides_sentence() {
    let mut fake = Fake::default();
    fake.write("/d/other", "x");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    drive(&mut fake, &mut ms, 1, &mut no_fault());
    let err = ms[0].result.clone().unwrap().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the cluster doesn't have a size configuration value in http://disc.example:2379/v2/keys/d/tok/_config"
    );
    // and the public service's URL form
    let e = DiscoveryError::SizeNotFound {
        url: "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de".into(),
    };
    assert_eq!(
        e.to_string(),
        "the cluster doesn't have a size configuration value in https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de/_config"
    );
}

#[test]
fn invalid_size_values() {
    for bad in ["abc", "-1", "+3", "", " 3", "3.0", "18446744073709551616"] {
        let mut fake = Fake::with_size(bad);
        let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
        drive(&mut fake, &mut ms, 1, &mut no_fault());
        let err = ms[0].result.clone().unwrap().unwrap_err();
        assert_eq!(
            err,
            DiscoveryError::BadSizeKey {
                value: bad.to_string()
            }
        );
        assert_eq!(err.to_string(), "discovery: size key is bad");
    }
}

#[test]
fn size_zero_gives_an_empty_cluster_as_etcd() {
    let mut fake = Fake::with_size("0");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    drive(&mut fake, &mut ms, 1, &mut no_fault());
    assert_eq!(ms[0].result, Some(Ok(String::new())));
}

#[test]
fn duplicate_id() {
    let mut fake = Fake::with_size("3");
    fake.write("/d/tok/1a", "a=http://10.0.0.1:2380");
    let mut ms = vec![Member::join(0x1a, "a=http://10.0.0.1:2380")];
    drive(&mut fake, &mut ms, 1, &mut no_fault());
    let err = ms[0].result.clone().unwrap().unwrap_err();
    assert_eq!(err, DiscoveryError::DuplicateId);
    assert_eq!(err.to_string(), "discovery: found duplicate id");
    let advice = err.etcd_exit_advice("infra0", DURL, "infra0.etcd");
    assert_eq!(
        advice[0].text,
        format!(
            "member \"infra0\" has previously registered with discovery service token ({DURL})."
        )
    );
}

#[test]
fn duplicate_names_say_each_member_needs_its_own_name() {
    let mut fake = Fake::with_size("3");
    let mut ms = vec![
        Member::join(0x1, "default=http://10.0.0.1:2380"),
        Member::join(0x2, "default=http://10.0.0.2:2380"),
        Member::join(0x3, "default=http://10.0.0.3:2380"),
    ];
    drive(&mut fake, &mut ms, 9, &mut no_fault());
    for m in &ms {
        let err = m.result.clone().unwrap().unwrap_err();
        let DiscoveryError::DuplicateName { duplicated, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(duplicated, &vec!["default".to_string()]);
        let text = err.to_string();
        assert!(
            text.starts_with("discovery: found duplicate name: "),
            "{text}"
        );
        assert!(text.contains("each member needs a unique --name"), "{text}");
        assert!(text.contains("named \"default\""), "{text}");
    }
}

#[test]
fn invalid_registered_urls() {
    let mut fake = Fake::with_size("2");
    fake.write("/d/tok/99", "x=notaurl");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    drive(&mut fake, &mut ms, 1, &mut no_fault());
    let err = ms[0].result.clone().unwrap().unwrap_err();
    assert!(matches!(err, DiscoveryError::InvalidUrl { .. }), "{err:?}");
    assert!(err.to_string().starts_with("discovery: invalid URL ("));
}

#[test]
fn server_errors_and_connection_failures_back_off_and_retry() {
    let mut fake = Fake::with_size("1");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    let mut n = 0;
    let mut fault = |_: usize, _: &HttpRequest| {
        n += 1;
        match n {
            1 => Some(status(503, "")),
            2 => Some(Transport::Failed(
                "dial tcp 10.0.0.9:2379: connect: connection refused".into(),
            )),
            3 => Some(status(502, "<html>")),
            _ => None,
        }
    };
    drive(&mut fake, &mut ms, 1, &mut fault);
    let m = &ms[0];
    assert_eq!(m.result, Some(Ok("a=http://10.0.0.1:2380".into())));
    assert_eq!(m.sleeps, vec![2000, 4000, 8000]);
    assert_eq!(m.d.retries(), 3);
    let texts = m.texts();
    assert_eq!(
        &texts[..6],
        &[
            format!("error #0: client: etcd member {ENDPOINT} has no leader"),
            format!("cluster status check: error connecting to {ENDPOINT}, retrying in 2s"),
            "error #0: dial tcp 10.0.0.9:2379: connect: connection refused".to_string(),
            format!("cluster status check: error connecting to {ENDPOINT}, retrying in 4s"),
            format!("error #0: client: etcd member {ENDPOINT} returns server error [Bad Gateway]"),
            format!("cluster status check: error connecting to {ENDPOINT}, retrying in 8s"),
        ]
    );
    let retry = &m.logs[1];
    assert_eq!(retry.msg, "retry connecting to discovery service");
    assert_eq!(
        retry.fields,
        vec![
            ("url", ENDPOINT.to_string()),
            ("reason", "cluster status check".to_string()),
            ("backoff", "2s".to_string())
        ]
    );
    assert_eq!(m.logs[0].msg, "failed to get from discovery server");
}

#[test]
fn backoff_grows_to_its_cap_and_the_retry_limit_ends_the_run() {
    let mut fake = Fake::with_size("1");
    let d = V2Discovery::join(DURL, 1, "a=http://10.0.0.1:2380")
        .unwrap()
        .with_max_retries(11);
    let mut ms = vec![Member::of(d)];
    let mut fault = |_: usize, _: &HttpRequest| Some(Transport::Failed("refused".into()));
    drive(&mut fake, &mut ms, 1, &mut fault);
    assert_eq!(
        ms[0].sleeps,
        vec![2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 256000, 256000, 256000]
    );
    assert!(ms[0].texts().contains(&format!(
        "cluster status check: error connecting to {ENDPOINT}, retrying in 4m16s"
    )));
    assert_eq!(ms[0].result, Some(Err(DiscoveryError::TooManyRetries)));
    assert_eq!(
        DiscoveryError::TooManyRetries.to_string(),
        "discovery: too many retries"
    );
}

#[test]
fn a_failed_wait_retries_the_whole_check() {
    let mut fake = Fake::with_size("2");
    let mut ms = vec![
        Member::join(0x1, "a=http://10.0.0.1:2380"),
        Member::join(0x2, "b=http://10.0.0.2:2380"),
    ];
    let mut failed_once = false;
    let mut fault = |i: usize, r: &HttpRequest| {
        if i == 0 && r.url.contains("recursive=true&wait=true") && !failed_once {
            failed_once = true;
            return Some(Transport::Failed("connection reset by peer".into()));
        }
        None
    };
    // member 0 alone first, so that its wait is what fails
    drive(&mut fake, &mut ms[..1], 1, &mut fault);
    drive(&mut fake, &mut ms, 2, &mut fault);
    assert!(failed_once);
    let want = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380";
    assert_eq!(ms[0].result, Some(Ok(want.into())));
    assert_eq!(ms[1].result, Some(Ok(want.into())));
    let texts = ms[0].texts();
    assert!(texts.contains(&"error #0: connection reset by peer".to_string()));
    assert!(texts.contains(&format!(
        "waiting for other nodes: error connecting to {ENDPOINT}, retrying in 2s"
    )));
    assert_eq!(ms[0].sleeps, vec![2000]);
}

/// An answer for some requests (`None`: the fake answers).
type Answer = Box<dyn Fn(&HttpRequest) -> Option<Transport>>;

#[test]
fn what_etcd_does_not_retry() {
    let cases: Vec<(Answer, DiscoveryError)> = vec![
        // a GET past its deadline
        (
            Box::new(|r: &HttpRequest| r.url.contains("_config").then_some(Transport::TimedOut)),
            DiscoveryError::DeadlineExceeded,
        ),
        // the registration PUT failing at the transport: the raw error
        (
            Box::new(|r: &HttpRequest| {
                (r.method == Method::Put).then(|| Transport::Failed("connection refused".into()))
            }),
            DiscoveryError::Request("connection refused".into()),
        ),
        // ... or with a 5xx
        (
            Box::new(|r: &HttpRequest| (r.method == Method::Put).then(|| status(503, ""))),
            DiscoveryError::Request(format!("client: etcd member {ENDPOINT} has no leader")),
        ),
        // the wait on its own key failing
        (
            Box::new(|r: &HttpRequest| {
                r.url
                    .contains("recursive=false&wait=true")
                    .then(|| Transport::Failed("reset".into()))
            }),
            DiscoveryError::ClusterUnavailable("reset".into()),
        ),
        // an etcd error on the directory
        (
            Box::new(|r: &HttpRequest| {
                r.url.starts_with(&format!("{DURL}?quorum")).then(|| {
                    status(400, r#"{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"x","index":9}"#)
                })
            }),
            DiscoveryError::Etcd {
                code: 401,
                message: "The event in requested index is outdated and cleared".into(),
                cause: "x".into(),
                index: 9,
            },
        ),
    ];
    for (f, want) in cases {
        let mut fake = Fake::with_size("1");
        let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
        let mut fault = |_: usize, r: &HttpRequest| f(r);
        drive(&mut fake, &mut ms, 1, &mut fault);
        assert_eq!(ms[0].result, Some(Err(want.clone())));
        assert!(ms[0].sleeps.is_empty());
    }
    assert_eq!(
        DiscoveryError::Etcd {
            code: 100,
            message: "Key not found".into(),
            cause: "/discovery/nosizetoken".into(),
            index: 7
        }
        .to_string(),
        "100: Key not found (/discovery/nosizetoken) [7]"
    );
    assert_eq!(
        DiscoveryError::ClusterUnavailable("x".into()).to_string(),
        "client: etcd cluster is unavailable or misconfigured; error #0: x"
    );
}

#[test]
fn malformed_answers_are_clear_errors() {
    let cases: Vec<(&str, Transport, DiscoveryError)> = vec![
        (
            "_config",
            status(200, "not json"),
            DiscoveryError::BadDiscoveryEndpoint,
        ),
        (
            "_config",
            status(404, "<html>not found</html>"),
            DiscoveryError::BadDiscoveryEndpoint,
        ),
        (
            "_config",
            status(200, "{}"),
            DiscoveryError::BadDiscoveryEndpoint,
        ),
        ("_config", status(200, ""), DiscoveryError::EmptyBody),
        (
            "_config",
            status(200, r#"{"node":{"value":3}}"#),
            DiscoveryError::BadDiscoveryEndpoint,
        ),
        (
            "_config",
            Transport::Response(HttpResponse {
                status: 200,
                etcd_index: Some("x1".into()),
                location: None,
                body: br#"{"node":{"value":"1"}}"#.to_vec(),
            }),
            DiscoveryError::BadIndexHeader {
                value: "x1".into(),
                reason: "invalid syntax",
            },
        ),
        (
            "tok?quorum",
            status(200, "[1,2"),
            DiscoveryError::InvalidJson,
        ),
        (
            "tok?quorum",
            status(200, r#"{"node":{"nodes":"x"}}"#),
            DiscoveryError::InvalidJson,
        ),
        (
            "tok?quorum",
            status(200, "null"),
            DiscoveryError::InvalidJson,
        ),
        (
            "tok?quorum",
            status(404, "null"),
            DiscoveryError::Etcd {
                code: 0,
                message: String::new(),
                cause: String::new(),
                index: 0,
            },
        ),
    ];
    for (target, answer, want) in cases {
        let mut fake = Fake::with_size("1");
        let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
        let mut fault = |_: usize, r: &HttpRequest| r.url.contains(target).then(|| answer.clone());
        drive(&mut fake, &mut ms, 1, &mut fault);
        assert_eq!(ms[0].result, Some(Err(want.clone())), "{target} {answer:?}");
    }
    assert_eq!(
        DiscoveryError::InvalidJson.to_string(),
        "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint"
    );
    assert_eq!(
        DiscoveryError::BadDiscoveryEndpoint.to_string(),
        "discovery: bad discovery endpoint"
    );
}

#[test]
fn redirects_are_followed_up_to_ten() {
    let mut fake = Fake::with_size("1");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    let mut hops = 0;
    let mut fault = |_: usize, r: &HttpRequest| {
        if r.url.contains("_config") && hops < 3 {
            hops += 1;
            // the fake serves the redirected URL again: same endpoint, same request
            return Some(Transport::Response(HttpResponse {
                status: 307,
                etcd_index: None,
                location: Some(r.url.clone()),
                body: vec![],
            }));
        }
        None
    };
    drive(&mut fake, &mut ms, 1, &mut fault);
    assert_eq!(ms[0].result, Some(Ok("a=http://10.0.0.1:2380".into())));
    assert!(ms[0].sleeps.is_empty());

    // an 11th redirect is "too many": a ClusterError, so a retry
    let mut fake = Fake::with_size("1");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    let mut hops = 0;
    let mut fault = |_: usize, r: &HttpRequest| {
        if hops < 11 {
            hops += 1;
            return Some(Transport::Response(HttpResponse {
                status: 302,
                etcd_index: None,
                location: Some(r.url.clone()),
                body: vec![],
            }));
        }
        None
    };
    drive(&mut fake, &mut ms, 1, &mut fault);
    assert_eq!(ms[0].sleeps, vec![2000]);
    assert_eq!(ms[0].texts()[0], "error #0: client: too many redirects");
    assert_eq!(ms[0].result, Some(Ok("a=http://10.0.0.1:2380".into())));

    // a redirect without a Location
    let mut fake = Fake::with_size("1");
    let mut ms = vec![Member::join(0x1, "a=http://10.0.0.1:2380")];
    let mut once = false;
    let mut fault =
        |_: usize, _: &HttpRequest| (!std::mem::replace(&mut once, true)).then(|| status(301, ""));
    drive(&mut fake, &mut ms, 1, &mut fault);
    assert_eq!(ms[0].texts()[0], "error #0: location header not set");
}

#[test]
fn empty_wait_answers_are_resent() {
    let mut fake = Fake::with_size("2");
    let mut ms = vec![
        Member::join(0x1, "a=http://10.0.0.1:2380"),
        Member::join(0x2, "b=http://10.0.0.2:2380"),
    ];
    let mut empties = 0;
    let mut fault = |_: usize, r: &HttpRequest| {
        if r.url.contains("wait=true") && empties < 5 {
            empties += 1;
            return Some(status(200, ""));
        }
        None
    };
    drive(&mut fake, &mut ms, 4, &mut fault);
    assert_eq!(empties, 5);
    for m in &ms {
        assert!(m.result.clone().unwrap().is_ok());
        assert!(m.sleeps.is_empty());
    }
}

#[test]
fn bad_discovery_urls() {
    for bad in [
        "",
        "discovery.etcd.io/abc",
        "ftp://host/abc",
        "http://host",
        "http://host/",
        "http:///abc",
        "http://host:port/abc",
        "http://host:99999/abc",
        "http://user:pw@host/abc",
        "http://host/abc?x=1",
        "http://host/abc#f",
        "http://host/a bc",
        "http://host/a%zz",
        "http://[::1/abc",
        "http://h\u{e9}/abc",
    ] {
        let err = V2Discovery::join(bad, 1, "a=http://10.0.0.1:2380").unwrap_err();
        assert!(matches!(err, DiscoveryError::BadUrl { .. }), "{bad}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    for good in [
        "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de",
        "HTTP://10.0.0.1:2379/v2/keys/d/x/",
        "http://[::1]:2379/t",
        "http://[fe80::1%25eth0]/t",
    ] {
        let d = V2Discovery::join(good, 1, "a=http://10.0.0.1:2380").unwrap();
        assert!(d.endpoint().starts_with("http"), "{good}");
    }
    let mut d =
        V2Discovery::join("HTTPS://Disc.Example/x//tok/", 0xab, "a=http://1.2.3.4:5").unwrap();
    assert_eq!(d.endpoint(), "https://Disc.Example");
    assert_eq!(d.token_path(), "/x//tok/");
    let Some(Step::Send(r)) = d.poll_step() else {
        panic!()
    };
    assert_eq!(
        r.url,
        "https://Disc.Example/x/tok/_config/size?quorum=false&recursive=false&sorted=false"
    );
}

#[test]
fn inputs_without_an_outstanding_request_are_ignored() {
    let mut d = V2Discovery::join(DURL, 1, "a=http://10.0.0.1:2380").unwrap();
    d.handle_response(Transport::TimedOut);
    d.handle_slept();
    let Some(Step::Send(r)) = d.poll_step() else {
        panic!()
    };
    assert!(r.url.contains("_config/size"));
    assert_eq!(d.poll_step(), None);
    d.handle_slept(); // not sleeping: ignored
    assert_eq!(d.poll_step(), None);
    d.handle_response(Transport::TimedOut);
    assert_eq!(
        d.poll_step(),
        Some(Step::Done(Err(DiscoveryError::DeadlineExceeded)))
    );
    d.handle_response(Transport::TimedOut);
    assert_eq!(d.poll_step(), None);
}

// ---------------------------------------------------------------------------------------------
// Random answers: no panic, and every run ends.
// ---------------------------------------------------------------------------------------------

fn arb_node() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::sample::select(vec!["/d/tok/1", "/d/tok/2", "/d/tok/_config", "/d/tok/x/", "", "/"]),
        prop::sample::select(vec![
            "a=http://10.0.0.1:2380",
            "b=http://10.0.0.2:2380",
            "a=http://10.0.0.3:2380",
            "garbage",
            "",
            "1",
            "3",
        ]),
        0u64..5,
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(k, v, c, m)| {
            serde_json::json!({"key": k, "value": v, "createdIndex": c, "modifiedIndex": m})
        })
}

fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        Just(Vec::new()),
        Just(b"null".to_vec()),
        Just(b"{}".to_vec()),
        prop::sample::select(vec!["0", "1", "2", "3", "x", "18446744073709551615"]).prop_map(|v| {
            serde_json::to_vec(
                &serde_json::json!({"action":"get","node":{"key":"/d/tok/_config/size","value":v}}),
            )
            .unwrap()
        }),
        prop::collection::vec(arb_node(), 0..6).prop_map(|nodes| serde_json::to_vec(
            &serde_json::json!({"action":"get","node":{"key":"/d/tok","dir":true,"nodes":nodes}})
        )
        .unwrap()),
        arb_node()
            .prop_map(
                |n| serde_json::to_vec(&serde_json::json!({"action":"create","node":n})).unwrap()
            ),
        (
            prop::sample::select(vec![100i64, 105, 401, 0, -1]),
            any::<u64>()
        )
            .prop_map(|(c, i)| {
                serde_json::to_vec(
                    &serde_json::json!({"errorCode":c,"message":"m","cause":"c","index":i}),
                )
                .unwrap()
            }),
    ]
}

fn arb_transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        1 => Just(Transport::TimedOut),
        2 => ".{0,8}".prop_map(Transport::Failed),
        12 => (
            prop::sample::select(vec![200u16, 201, 200, 201, 204, 301, 307, 400, 404, 412, 500, 502, 503, 599, 0, 65535]),
            prop::option::of(prop_oneof![Just("5".to_string()), Just(String::new()), "[0-9a-z+-]{0,21}"]),
            prop::option::of(prop_oneof![Just(format!("{DURL}/x")), ".{0,10}"]),
            arb_body(),
        )
            .prop_map(|(status, etcd_index, location, body)| {
                Transport::Response(HttpResponse { status, etcd_index, location, body })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_answers_never_panic_and_every_run_ends(
        answers in prop::collection::vec(arb_transport(), 0..60),
        max_retries in 0u32..4,
        get in any::<bool>(),
    ) {
        let d = if get {
            V2Discovery::get_cluster(DURL).unwrap()
        } else {
            V2Discovery::join(DURL, 1, "a=http://10.0.0.1:2380").unwrap()
        };
        let mut d = d.with_max_retries(max_retries);
        let mut answers = answers.into_iter();
        let mut sends = 0usize;
        let mut steps = 0usize;
        let budget = answers.len() + max_retries as usize + 8;
        let result = loop {
            steps += 1;
            prop_assert!(steps < 200_000);
            match d.poll_step() {
                Some(Step::Send(_)) => {
                    sends += 1;
                    prop_assert!(sends <= budget, "{} sends for {} answers", sends, budget);
                    // when the random answers run out, the server is gone
                    d.handle_response(answers.next().unwrap_or(Transport::Failed("down".into())));
                }
                Some(Step::Sleep { ms, .. }) => {
                    prop_assert!((2000..=256_000).contains(&ms));
                    d.handle_slept();
                }
                Some(Step::Log(_)) => {}
                Some(Step::Done(r)) => break r,
                None => prop_assert!(false, "stalled"),
            }
        };
        prop_assert!(d.poll_step().is_none());
        if let Err(e) = result {
            let _ = e.to_string();
        }
    }
}
