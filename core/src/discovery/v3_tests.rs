//! Tests of the v3 discovery machine against a small in-memory v3 KV with watches.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::proto::mvccpb::{Event, KeyValue};

const TOKEN: &str = "8A591FAB-1D72-41FA-BDF2-A27162FDA1E0";

#[derive(Default)]
struct Kv {
    rev: i64,
    /// key -> (value, create revision, mod revision)
    data: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>,
    /// (revision, key) of each put
    history: Vec<(i64, Vec<u8>)>,
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

impl Kv {
    fn with_size(size: &str) -> Kv {
        let mut kv = Kv::default();
        kv.put(
            format!("/_etcd/registry/{TOKEN}/_config/size").as_bytes(),
            size.as_bytes(),
        );
        kv
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> PutResponse {
        self.rev += 1;
        let rev = self.rev;
        let create = self.data.get(key).map_or(rev, |e| e.1);
        self.data
            .insert(key.to_vec(), (value.to_vec(), create, rev));
        self.history.push((rev, key.to_vec()));
        PutResponse {
            header: Some(self.header()),
            prev_kv: None,
        }
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.rev,
            ..Default::default()
        }
    }

    fn kv(&self, key: &[u8]) -> KeyValue {
        let (v, c, m) = &self.data[key];
        KeyValue {
            key: key.to_vec(),
            value: v.clone(),
            create_revision: *c,
            mod_revision: *m,
            version: 1,
            lease: 0,
        }
    }

    fn range(&self, r: &RangeRequest) -> RangeResponse {
        let kvs: Vec<KeyValue> = self
            .data
            .keys()
            .filter(|k| in_range(k, &r.key, &r.range_end))
            .map(|k| self.kv(k))
            .collect();
        RangeResponse {
            header: Some(self.header()),
            count: kvs.len() as i64,
            kvs,
            more: false,
        }
    }

    fn serve(&mut self, req: &KvRequest) -> KvReply {
        match req {
            KvRequest::Range(r) => KvReply::Range(self.range(r)),
            KvRequest::Put(p) => KvReply::Put(self.put(&p.key, &p.value)),
        }
    }

    /// Events of `w` from revision `from` on, and the next revision to deliver from.
    fn events(&self, w: &WatchCreateRequest, from: i64) -> (Vec<Event>, i64) {
        let evs: Vec<Event> = self
            .history
            .iter()
            .filter(|(rev, k)| *rev >= from && in_range(k, &w.key, &w.range_end))
            .map(|(rev, k)| {
                let mut kv = self.kv(k);
                kv.mod_revision = *rev;
                Event {
                    r#type: 0,
                    kv: Some(kv),
                    prev_kv: None,
                }
            })
            .collect();
        (evs, self.rev + 1)
    }
}

struct M {
    d: V3Discovery,
    /// the open watch and the next revision it delivers
    watch: Option<(WatchCreateRequest, i64)>,
    result: Option<Result<String, V3DiscoveryError>>,
    logs: Vec<Log>,
    sleeps: Vec<u64>,
    sent: Vec<KvRequest>,
    watches: Vec<WatchCreateRequest>,
}

impl M {
    fn join(id: u64, value: &str) -> M {
        M::of(V3Discovery::join(TOKEN, id, value, DEFAULT_REQUEST_TIMEOUT_MS).unwrap())
    }
    fn of(d: V3Discovery) -> M {
        M {
            d,
            watch: None,
            result: None,
            logs: vec![],
            sleeps: vec![],
            sent: vec![],
            watches: vec![],
        }
    }
    fn msgs(&self) -> Vec<String> {
        self.logs.iter().map(|l| l.msg.clone()).collect()
    }
}

type Fault<'a> = &'a mut dyn FnMut(usize, &KvRequest) -> Option<KvReply>;

fn drive(kv: &mut Kv, ms: &mut [M], seed: u64, fault: Fault) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..100_000 {
        // a machine is runnable when it is not finished, and its watch (if any) has news
        let runnable: Vec<usize> = (0..ms.len())
            .filter(|&i| {
                ms[i].result.is_none()
                    && match &ms[i].watch {
                        None => true,
                        Some((w, from)) => !kv.events(w, *from).0.is_empty(),
                    }
            })
            .collect();
        if runnable.is_empty() {
            return;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = runnable[(rng % runnable.len() as u64) as usize];
        let m = &mut ms[i];
        if let Some((w, from)) = m.watch.clone() {
            let (events, next) = kv.events(&w, from);
            m.watch = Some((w, next));
            m.d.handle_watch(WatchUpdate::Response(WatchResponse {
                events,
                ..Default::default()
            }));
        }
        // this member's steps up to its next request, watch or end (logs and sleeps do not
        // end a turn), so that members interleave at every request
        while let Some(step) = m.d.poll_step() {
            match step {
                V3Step::Send {
                    request,
                    timeout_ms,
                } => {
                    assert_eq!(timeout_ms, DEFAULT_REQUEST_TIMEOUT_MS);
                    m.sent.push(request.clone());
                    let reply = fault(i, &request).unwrap_or_else(|| kv.serve(&request));
                    m.d.handle_reply(reply);
                    break;
                }
                V3Step::Watch(w) => {
                    m.watches.push(w.clone());
                    let from = w.start_revision;
                    m.watch = Some((w, from));
                    m.d.handle_watch(WatchUpdate::Response(WatchResponse {
                        created: true,
                        ..Default::default()
                    }));
                    break;
                }
                V3Step::Sleep { ms: t, log } => {
                    m.sleeps.push(t);
                    m.logs.push(log);
                    m.d.handle_slept();
                }
                V3Step::Log(l) => m.logs.push(l),
                V3Step::Done(r) => {
                    m.result = Some(r);
                    m.watch = None;
                    break;
                }
            }
        }
    }
    panic!("no progress");
}

fn none() -> impl FnMut(usize, &KvRequest) -> Option<KvReply> {
    |_, _| None
}

fn three() -> Vec<M> {
    vec![
        M::join(0x11, "infra0=http://10.0.1.10:2380"),
        M::join(0x22, "infra1=http://10.0.1.11:2380"),
        M::join(0x33, "infra2=http://10.0.1.12:2380"),
    ]
}

#[test]
fn keys_and_requests_are_etcds() {
    let d = V3Discovery::join(TOKEN, 0xe649a9c81f668aa5, "x=http://a:1", 5000).unwrap();
    assert_eq!(
        d.size_key(),
        format!("/_etcd/registry/{TOKEN}/_config/size")
    );
    assert_eq!(
        d.self_key(),
        format!("/_etcd/registry/{TOKEN}/members/e649a9c81f668aa5")
    );
    assert_eq!(prefix_range_end(b"/a/members"), b"/a/membert".to_vec());
    assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    assert_eq!(prefix_range_end(b""), vec![0]);
    assert_eq!(
        V3Discovery::join("", 1, "x=http://a:1", 5000).unwrap_err(),
        V3DiscoveryError::EmptyToken
    );

    let mut kv = Kv::with_size("1");
    let mut ms = vec![M::join(0x11, "infra0=http://10.0.1.10:2380")];
    drive(&mut kv, &mut ms, 1, &mut none());
    assert_eq!(
        ms[0].result,
        Some(Ok("infra0=http://10.0.1.10:2380".into()))
    );
    let prefix = format!("/_etcd/registry/{TOKEN}/members");
    let range_end = prefix_range_end(prefix.as_bytes());
    let size = RangeRequest {
        key: format!("/_etcd/registry/{TOKEN}/_config/size").into_bytes(),
        ..Default::default()
    };
    let members = RangeRequest {
        key: prefix.clone().into_bytes(),
        range_end,
        ..Default::default()
    };
    assert_eq!(
        ms[0].sent,
        vec![
            KvRequest::Range(size.clone()),
            KvRequest::Range(members.clone()),
            KvRequest::Put(PutRequest {
                key: format!("{prefix}/11").into_bytes(),
                value: b"infra0=http://10.0.1.10:2380".to_vec(),
                ..Default::default()
            }),
            KvRequest::Range(size),
            KvRequest::Range(members),
        ]
    );
    assert!(ms[0].watches.is_empty());
    assert_eq!(
        ms[0].msgs(),
        vec![
            "register member itself successfully",
            "found peer from discovery service",
            "discovery joined cluster successfully"
        ]
    );
}

#[test]
fn three_members_join_in_any_order_and_agree() {
    for seed in 0..200 {
        let mut kv = Kv::with_size("3");
        let mut ms = three();
        drive(&mut kv, &mut ms, seed, &mut none());
        let mut order: Vec<(i64, Vec<u8>)> = kv
            .data
            .iter()
            .filter(|(k, _)| k.windows(9).any(|w| w == b"/members/"))
            .map(|(_, (v, c, _))| (*c, v.clone()))
            .collect();
        order.sort();
        let want = order
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect::<Vec<_>>()
            .join(",");
        for m in &ms {
            assert_eq!(m.result, Some(Ok(want.clone())), "seed {seed}");
        }
    }
}

#[test]
fn a_waiter_watches_from_the_listing_revision_and_completes() {
    let mut kv = Kv::with_size("2");
    let mut first = vec![M::join(0x11, "a=http://10.0.0.1:2380")];
    drive(&mut kv, &mut first, 1, &mut none());
    assert!(first[0].result.is_none());
    // size at rev 1, its registration at rev 2: the watch starts at 3
    let w = &first[0].watches[0];
    assert_eq!(w.start_revision, 3);
    assert_eq!(
        w.key,
        format!("/_etcd/registry/{TOKEN}/members").into_bytes()
    );
    let mut all = vec![
        first.pop().unwrap(),
        M::join(0x22, "b=http://10.0.0.2:2380"),
    ];
    drive(&mut kv, &mut all, 2, &mut none());
    for m in &all {
        assert_eq!(
            m.result,
            Some(Ok("a=http://10.0.0.1:2380,b=http://10.0.0.2:2380".into()))
        );
    }
    assert!(all[0]
        .msgs()
        .contains(&"found all needed peers from discovery service".to_string()));
}

#[test]
fn a_fourth_member_finds_the_cluster_full_and_get_cluster_lists_the_first_three() {
    for seed in 0..100 {
        let mut kv = Kv::with_size("3");
        let mut ms = three();
        ms.push(M::join(0x44, "infra3=http://10.0.1.13:2380"));
        drive(&mut kv, &mut ms, seed, &mut none());
        let full = ms
            .iter()
            .filter(|m| m.result == Some(Err(V3DiscoveryError::FullCluster)))
            .count();
        assert_eq!(full, 1, "seed {seed}");
        let ok = ms.iter().find_map(|m| m.result.clone()?.ok()).unwrap();
        let mut g = vec![M::of(V3Discovery::get_cluster(TOKEN, 5000).unwrap())];
        drive(&mut kv, &mut g, seed, &mut none());
        assert_eq!(g[0].result, Some(Ok(ok)));
    }
    assert_eq!(
        V3DiscoveryError::FullCluster.to_string(),
        "discovery: cluster is full"
    );
}

#[test]
fn size_errors_are_not_retried() {
    let mut kv = Kv::default();
    let mut ms = vec![M::join(0x11, "a=http://10.0.0.1:2380")];
    drive(&mut kv, &mut ms, 1, &mut none());
    let err = ms[0].result.clone().unwrap().unwrap_err();
    assert!(matches!(err, V3DiscoveryError::SizeNotFound { .. }));
    assert_eq!(err.to_string(), "discovery: size key not found");
    for bad in ["0", "-3", "x", "", "3.0", "99999999999999999999"] {
        let mut kv = Kv::with_size(bad);
        let mut ms = vec![M::join(0x11, "a=http://10.0.0.1:2380")];
        drive(&mut kv, &mut ms, 1, &mut none());
        assert_eq!(
            ms[0].result,
            Some(Err(V3DiscoveryError::BadSizeKey {
                value: bad.to_string()
            }))
        );
        assert!(ms[0].sleeps.is_empty());
    }
    // Go's ParseInt takes a sign
    let mut kv = Kv::with_size("+1");
    let mut ms = vec![M::join(0x11, "a=http://10.0.0.1:2380")];
    drive(&mut kv, &mut ms, 1, &mut none());
    assert_eq!(ms[0].result, Some(Ok("a=http://10.0.0.1:2380".into())));
}

#[test]
fn failures_back_off_and_successes_reset_the_counter() {
    let mut kv = Kv::with_size("1");
    let mut ms = vec![M::join(0x11, "a=http://10.0.0.1:2380")];
    let mut n = 0;
    let mut fault = |_: usize, r: &KvRequest| {
        n += 1;
        match (n, r) {
            (1 | 2, _) => Some(KvReply::Failed("etcdserver: request timed out".into())),
            (_, KvRequest::Put(_)) if n < 7 => Some(KvReply::Failed("unavailable".into())),
            _ => None,
        }
    };
    drive(&mut kv, &mut ms, 1, &mut fault);
    let m = &ms[0];
    assert_eq!(m.result, Some(Ok("a=http://10.0.0.1:2380".into())));
    // two failed size reads (2 s, 4 s); the successful check resets the counter, so the two
    // failed registrations back off 2 s and 4 s again
    assert_eq!(m.sleeps, vec![2000, 4000, 2000, 4000]);
    let retry: Vec<&Log> = m
        .logs
        .iter()
        .filter(|l| l.msg == "retry connecting to discovery service")
        .collect();
    assert_eq!(
        retry[0].fields,
        vec![
            ("reason", "cluster status check".to_string()),
            ("backoff", "2s".to_string())
        ]
    );
    assert_eq!(retry[2].fields[0].1, "register member itself");
    assert_eq!(retry[0].level, LogLevel::Warn);
    assert!(m
        .msgs()
        .contains(&"failed to get cluster size from discovery service".to_string()));
    assert!(m
        .msgs()
        .contains(&"failed to register members itself to the discovery service".to_string()));

    let mut kv = Kv::with_size("1");
    let d = V3Discovery::join(TOKEN, 1, "a=http://10.0.0.1:2380", 5000)
        .unwrap()
        .with_max_retries(2);
    let mut ms = vec![M::of(d)];
    let mut fault = |_: usize, _: &KvRequest| Some(KvReply::Failed("down".into()));
    drive(&mut kv, &mut ms, 1, &mut fault);
    assert_eq!(ms[0].result, Some(Err(V3DiscoveryError::TooManyRetries)));
    assert_eq!(
        ms[0].msgs().last().unwrap(),
        "discovery failed to join cluster"
    );
}

#[test]
fn a_closed_or_canceled_watch_is_opened_again_from_the_same_revision() {
    let mut d = V3Discovery::join(TOKEN, 0x11, "a=http://10.0.0.1:2380", 5000).unwrap();
    let mut kv = Kv::with_size("2");
    let mut watches = vec![];
    fn feed(d: &mut V3Discovery, kv: &mut Kv, watches: &mut Vec<WatchCreateRequest>) {
        while let Some(s) = d.poll_step() {
            match s {
                V3Step::Send { request, .. } => d.handle_reply(kv.serve(&request)),
                V3Step::Watch(w) => {
                    watches.push(w);
                    return;
                }
                V3Step::Done(_) => return,
                _ => {}
            }
        }
    }
    feed(&mut d, &mut kv, &mut watches);
    assert_eq!(watches.len(), 1);
    d.handle_watch(WatchUpdate::Closed("stream closed".into()));
    feed(&mut d, &mut kv, &mut watches);
    d.handle_watch(WatchUpdate::Response(WatchResponse {
        canceled: true,
        compact_revision: 2,
        ..Default::default()
    }));
    feed(&mut d, &mut kv, &mut watches);
    assert_eq!(watches.len(), 3);
    assert!(watches.iter().all(|w| w == &watches[0]));
    // a non-member event, a bad value, then the peer
    kv.put(b"/_etcd/registry/other", b"x=http://z:1");
    kv.put(
        format!("/_etcd/registry/{TOKEN}/members/99").as_bytes(),
        b"novalue",
    );
    kv.put(
        format!("/_etcd/registry/{TOKEN}/members/22").as_bytes(),
        b"b=http://10.0.0.2:2380",
    );
    let all_events: Vec<Event> = std::iter::once(Event::default())
        .chain(kv.history.iter().skip(2).map(|(_, k)| Event {
            r#type: 0,
            kv: Some(kv.kv(k)),
            prev_kv: None,
        }))
        .collect();
    d.handle_watch(WatchUpdate::Response(WatchResponse {
        events: all_events,
        ..Default::default()
    }));
    let mut got = None;
    let mut warns = vec![];
    while let Some(s) = d.poll_step() {
        match s {
            V3Step::Done(r) => got = Some(r),
            V3Step::Log(l) if l.level == LogLevel::Warn => warns.push(l.msg),
            _ => {}
        }
    }
    assert_eq!(
        got,
        Some(Ok("a=http://10.0.0.1:2380,b=http://10.0.0.2:2380".into()))
    );
    assert_eq!(
        warns,
        vec![
            "invalid peer registry key",
            "invalid peer registry key",
            "invalid peer info returned from discovery service"
        ]
    );
}

#[test]
fn too_many_closed_watches_end_the_run() {
    let mut kv = Kv::with_size("2");
    let mut d = V3Discovery::join(TOKEN, 0x11, "a=http://10.0.0.1:2380", 5000).unwrap();
    let mut done = None;
    for _ in 0..(MAX_REWATCHES as usize + 10) * 4 {
        match d.poll_step() {
            Some(V3Step::Send { request, .. }) => d.handle_reply(kv.serve(&request)),
            Some(V3Step::Watch(_)) => d.handle_watch(WatchUpdate::Closed("gone".into())),
            Some(V3Step::Done(r)) => {
                done = Some(r);
                break;
            }
            Some(_) => {}
            None => unreachable!(),
        }
    }
    assert_eq!(
        done,
        Some(Err(V3DiscoveryError::WatchFailed {
            reason: "gone".into()
        }))
    );
}

#[test]
fn duplicate_names_and_bad_urls() {
    let mut kv = Kv::with_size("2");
    let mut ms = vec![
        M::join(0x11, "default=http://10.0.0.1:2380"),
        M::join(0x22, "default=http://10.0.0.2:2380"),
    ];
    drive(&mut kv, &mut ms, 3, &mut none());
    for m in &ms {
        let err = m.result.clone().unwrap().unwrap_err();
        assert!(
            matches!(err, V3DiscoveryError::DuplicateName { .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains("each member needs a unique --name"));
    }
    let mut kv = Kv::with_size("1");
    let mut ms = vec![M::join(0x11, "a=notaurl")];
    drive(&mut kv, &mut ms, 3, &mut none());
    let err = ms[0].result.clone().unwrap().unwrap_err();
    assert!(err.to_string().starts_with("discovery: invalid peer URL ("));
}

// ---------------------------------------------------------------------------------------------
// Random replies: no panic, and every run ends.
// ---------------------------------------------------------------------------------------------

fn arb_kv() -> impl Strategy<Value = KeyValue> {
    (
        prop::sample::select(vec![
            format!("/_etcd/registry/{TOKEN}/members/11"),
            format!("/_etcd/registry/{TOKEN}/members/22"),
            format!(" /_etcd/registry/{TOKEN}/members/33 "),
            "/elsewhere".to_string(),
            String::new(),
        ]),
        prop_oneof![
            prop::sample::select(vec![
                "a=http://10.0.0.1:2380",
                "b=http://10.0.0.2:2380",
                "a=http://x:1",
                "=",
                "1",
                "3",
                "-1",
                "0",
                ""
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            prop::collection::vec(any::<u8>(), 0..12),
        ],
        any::<i64>(),
    )
        .prop_map(|(k, v, c)| KeyValue {
            key: k.into_bytes(),
            value: v,
            create_revision: c,
            ..Default::default()
        })
}

fn arb_reply() -> impl Strategy<Value = KvReply> {
    prop_oneof![
        1 => ".{0,6}".prop_map(KvReply::Failed),
        1 => Just(KvReply::Put(PutResponse::default())),
        4 => (prop::collection::vec(arb_kv(), 0..5), prop::option::of(any::<i64>())).prop_map(|(kvs, rev)| {
            KvReply::Range(RangeResponse {
                header: rev.map(|revision| ResponseHeader { revision, ..Default::default() }),
                kvs,
                ..Default::default()
            })
        }),
    ]
}

fn arb_watch() -> impl Strategy<Value = WatchUpdate> {
    prop_oneof![
        1 => ".{0,6}".prop_map(WatchUpdate::Closed),
        4 => (prop::collection::vec(prop::option::of(arb_kv()), 0..4), any::<bool>()).prop_map(|(kvs, canceled)| {
            WatchUpdate::Response(WatchResponse {
                canceled,
                events: kvs.into_iter().map(|kv| Event { kv, ..Default::default() }).collect(),
                ..Default::default()
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_replies_never_panic_and_every_run_ends(
        replies in prop::collection::vec(arb_reply(), 0..30),
        watch in prop::collection::vec(arb_watch(), 0..30),
        max_retries in 0u32..4,
        get in any::<bool>(),
    ) {
        let d = if get {
            V3Discovery::get_cluster(TOKEN, 5000).unwrap()
        } else {
            V3Discovery::join(TOKEN, 0x11, "a=http://10.0.0.1:2380", 5000).unwrap()
        };
        let mut d = d.with_max_retries(max_retries);
        let mut replies = replies.into_iter();
        let mut watch = watch.into_iter();
        let mut steps = 0usize;
        loop {
            steps += 1;
            // after the random inputs run out, every request fails and every watch closes:
            // retries (bounded) and rewatches (bounded) must end the run
            prop_assert!(steps < 50_000, "no end");
            match d.poll_step() {
                Some(V3Step::Send { .. }) => {
                    d.handle_reply(replies.next().unwrap_or(KvReply::Failed("down".into())))
                }
                Some(V3Step::Watch(w)) => {
                    prop_assert!(!w.key.is_empty());
                    d.handle_watch(watch.next().unwrap_or(WatchUpdate::Closed("down".into())))
                }
                Some(V3Step::Sleep { .. }) => d.handle_slept(),
                Some(V3Step::Log(_)) => {}
                Some(V3Step::Done(r)) => {
                    if let Err(e) = r { let _ = e.to_string(); }
                    break;
                }
                None => {
                    // a watch is open and wants more news
                    d.handle_watch(watch.next().unwrap_or(WatchUpdate::Closed("down".into())))
                }
            }
        }
        prop_assert!(d.poll_step().is_none());
    }
}
