//! What every fuzz target checks, one function per target. Shared with detcd-core's
//! `tests/fuzz_corpus.rs` (which includes this file by path), so `cargo test` replays the
//! committed corpora through exactly the checks the fuzzer runs.
//!
//! Beyond "no panic", each check asserts the parser's own contract: what parses prints back to
//! a string that parses to the same value (member IDs are hashed from those strings, and peers
//! re-parse them), and a peer batch that is accepted only carries messages from a member to us.

use detcd_core::bootstrap::{check_new_member, plan_join, BootstrapMember, RemoteCluster};
use detcd_core::config::{
    format_initial_cluster, format_urls, parse_initial_cluster, parse_urls, Url,
};
use detcd_core::peer::{decode_batch, open_snapshot};
use detcd_core::proto::detcdpb::SnapshotChunk;
use detcd_core::state::snapshot::{SnapshotReader, SnapshotWriter};
use detcd_core::wal::{new_file, scan, Record};

/// The receiving member in `check_peer_batch`: cluster 0x1000, member 1 of members {1, 2, 3}.
pub const CLUSTER: u64 = 0x1000;
pub const MEMBER: u64 = 1;
pub fn is_member(id: u64) -> bool {
    (1..=3).contains(&id)
}

/// `url_parse`: `Url::parse` and `parse_urls` on arbitrary UTF-8.
pub fn check_url(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(u) = Url::parse(s) {
        let printed = u.to_string();
        let again = Url::parse(&printed).unwrap_or_else(|e| {
            panic!("{s:?} parsed to {u:?}, whose string {printed:?} does not parse: {e}")
        });
        assert_eq!(again, u, "{s:?} -> {printed:?} parses to something else");
    }
    if let Ok(urls) = parse_urls(s) {
        assert!(
            !urls.is_empty(),
            "{s:?}: parse_urls gave no URL and no error"
        );
        let printed = format_urls(&urls);
        assert_eq!(
            parse_urls(&printed).as_ref(),
            Ok(&urls),
            "{s:?} -> {printed:?}"
        );
    }
}

/// `initial_cluster`: `parse_initial_cluster` on arbitrary UTF-8.
pub fn check_initial_cluster(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(members) = parse_initial_cluster(s) else {
        return;
    };
    let pairs = |ms: &[detcd_core::config::InitialMember]| {
        let mut v: Vec<(String, String)> = ms
            .iter()
            .flat_map(|m| {
                m.peer_urls
                    .iter()
                    .map(move |u| (m.name.clone(), u.to_string()))
            })
            .collect();
        v.sort();
        v
    };
    for (i, m) in members.iter().enumerate() {
        assert!(!m.name.is_empty(), "{s:?}: empty member name");
        assert!(
            !m.peer_urls.is_empty(),
            "{s:?}: member {:?} without URLs",
            m.name
        );
        assert!(
            members[..i].iter().all(|o| o.name != m.name),
            "{s:?}: member {:?} listed twice",
            m.name
        );
    }
    let printed = format_initial_cluster(&members);
    let again = parse_initial_cluster(&printed)
        .unwrap_or_else(|e| panic!("{s:?} -> {printed:?} does not parse: {e}"));
    assert_eq!(pairs(&again), pairs(&members), "{s:?} -> {printed:?}");
}

/// `peer_batch`: `decode_batch` on arbitrary bytes, as member 1 of cluster 0x1000.
pub fn check_peer_batch(data: &[u8]) {
    if let Ok(msgs) = decode_batch(data, CLUSTER, MEMBER, is_member) {
        if let Some(first) = msgs.first() {
            assert!(
                is_member(first.from),
                "accepted a message from stranger {}",
                first.from
            );
        }
        for m in &msgs {
            assert_eq!(m.to, MEMBER, "accepted a message addressed to {}", m.to);
            assert_eq!(
                m.from, msgs[0].from,
                "accepted messages from two senders in one batch"
            );
        }
    }
}

/// `wal_records`: `wal::scan` (the raft log file read at start-up) on arbitrary bytes. What it
/// accepts starts with a base record, ends within the input, and is what the member keeps: the
/// file cut at `valid_len` scans to the same records, and the records written anew scan back
/// to themselves.
pub fn check_wal_records(data: &[u8]) {
    let Ok(s) = scan(data) else {
        return;
    };
    assert!(
        s.valid_len <= data.len() as u64,
        "valid_len {} past the end",
        s.valid_len
    );
    if data.is_empty() {
        assert!(s.records.is_empty(), "records from an empty file");
        return;
    }
    assert!(
        matches!(s.records.first(), Some(Record::Base { .. })),
        "accepted a log without a base record"
    );
    let cut = scan(&data[..s.valid_len as usize])
        .unwrap_or_else(|e| panic!("the file cut at {} is refused: {e}", s.valid_len));
    assert_eq!(
        cut.records, s.records,
        "cutting the tail changed the records"
    );
    assert_eq!(cut.valid_len, s.valid_len);
    let rewritten = new_file(&s.records);
    let again = scan(&rewritten).unwrap_or_else(|e| panic!("re-encoded records refused: {e}"));
    assert_eq!(
        again.records, s.records,
        "records do not survive re-encoding"
    );
}

/// `snapshot_file`: the snapshot file reader (what a follower installs from a leader) on
/// arbitrary bytes. What it accepts, written anew, reads back to the same head and rows.
pub fn check_snapshot_file(data: &[u8]) {
    let Some((head, rows)) = read_snapshot(data) else {
        return;
    };
    let mut w = SnapshotWriter::new(Vec::new(), &head).expect("writing to memory");
    for r in &rows {
        w.push_row(&r.revision, &r.value)
            .expect("writing to memory");
    }
    let (bytes, _) = w.finish().expect("writing to memory");
    let again = read_snapshot(&bytes).expect("a rewritten snapshot file is refused");
    assert_eq!(
        again,
        (head, rows),
        "the snapshot does not survive rewriting"
    );
}

/// Head and rows of a snapshot file, or None if it is refused.
pub fn read_snapshot(
    data: &[u8],
) -> Option<(
    detcd_core::proto::detcdpb::SnapshotData,
    Vec<detcd_core::proto::detcdpb::MvccRow>,
)> {
    let (reader, head) = SnapshotReader::open(data).ok()?;
    let rows = reader.rows().collect::<Result<Vec<_>, _>>().ok()?;
    Some((head, rows))
}

/// `peer_snapshot`: the first chunk of a Peer.Snapshot call, decoded and opened as member 1 of
/// cluster 0x1000. What is accepted is a MsgSnapshot from a member to us.
pub fn check_peer_snapshot(data: &[u8]) {
    let Ok(chunk) = <SnapshotChunk as prost::Message>::decode(data) else {
        return;
    };
    if let Ok((m, _)) = open_snapshot(&chunk, CLUSTER, MEMBER, is_member) {
        assert!(
            is_member(m.from),
            "accepted a snapshot from stranger {}",
            m.from
        );
        assert_eq!(m.to, MEMBER, "accepted a snapshot addressed to {}", m.to);
        assert_eq!(
            m.get_msg_type(),
            raft::prelude::MessageType::MsgSnapshot,
            "accepted a message that is not a snapshot"
        );
    }
}

/// The joining member in `check_remote_cluster`: infra3 of a four-member --initial-cluster.
pub fn joining_members() -> Vec<BootstrapMember> {
    (0..4)
        .map(|i| BootstrapMember {
            id: 100 + i,
            name: format!("infra{i}"),
            peer_urls: parse_urls(&format!("http://10.0.1.1{i}:2380")).unwrap(),
        })
        .collect()
}

/// What a peer's Members answer (network input) decodes to, if it decodes.
pub fn remote_cluster(data: &[u8]) -> Option<RemoteCluster> {
    let r = <detcd_core::proto::detcdpb::MembersResponse as prost::Message>::decode(data).ok()?;
    Some(RemoteCluster {
        cluster_id: r.cluster_id,
        members: r.members,
        removed: r.removed,
    })
}

/// `remote_cluster`: a peer's Members answer, as a joining member (`plan_join`) and a new
/// member (`check_new_member`) take it. A join that is accepted takes the ID of the running
/// member whose peer URLs are exactly its own, one that never started, and the cluster's ID.
pub fn check_remote_cluster(data: &[u8]) {
    let Some(remote) = remote_cluster(data) else {
        return;
    };
    let local = joining_members();
    if let Ok(plan) = plan_join("infra3", &local, &remote) {
        assert_eq!(plan.cluster_id, remote.cluster_id);
        let me = remote
            .members
            .iter()
            .find(|m| m.id == plan.local_id)
            .expect("joined as a member the cluster does not list");
        let mut urls = me.peer_urls.clone();
        urls.sort();
        urls.dedup();
        assert_eq!(
            urls,
            vec!["http://10.0.1.13:2380".to_string()],
            "joined as {me:?}"
        );
        assert!(
            me.client_urls.is_empty(),
            "joined as a member that already started"
        );
        assert_eq!(remote.members.len(), local.len());
    }
    let _ = check_new_member(100, 0x1000, std::slice::from_ref(&remote));
}

/// `watch_request`: a Watch stream message from a client, and the response fragmenting that
/// may follow. A create is accepted exactly when its range is not empty, and then watches its
/// own key when the range holds it; fragments of any response carry every event once, in
/// order, each at least one event, all but the last marked.
pub fn check_watch_request(data: &[u8]) {
    use detcd_core::proto::etcdserverpb::{watch_request::RequestUnion, WatchResponse};
    use detcd_core::watch::{fragment, WatchSpec};
    if let Some(RequestUnion::CreateRequest(c)) = watch_create(data) {
        let spec = WatchSpec::from_request(&c);
        let key = if c.key.is_empty() {
            vec![0]
        } else {
            c.key.clone()
        };
        let empty = !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end;
        assert_eq!(spec.is_err(), empty, "range [{key:?}, {:?})", c.range_end);
        if let Ok(spec) = spec {
            assert!(spec.covers(&key), "a watch does not cover its own key");
        }
    }
    let Ok(resp) = <WatchResponse as prost::Message>::decode(data) else {
        return;
    };
    let limit = data.first().map_or(1, |b| usize::from(*b) * 4 + 1);
    let parts = fragment(resp.clone(), limit);
    let joined: Vec<_> = parts.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(joined, resp.events, "fragments lost or reordered events");
    if parts.len() > 1 {
        assert!(
            parts.iter().all(|p| !p.events.is_empty()),
            "an empty fragment"
        );
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
    }
}

/// The request of a Watch stream message, if it decodes.
pub fn watch_create(
    data: &[u8],
) -> Option<detcd_core::proto::etcdserverpb::watch_request::RequestUnion> {
    <detcd_core::proto::etcdserverpb::WatchRequest as prost::Message>::decode(data)
        .ok()?
        .request_union
}

/// The request messages the JSON gateway (`net/src/json_api.rs`) parses from a client's body.
macro_rules! json_round_trip {
    ($data:expr, $($t:ty),*) => {{
        let mut parsed = false;
        $(
            if let Ok(req) = serde_json::from_slice::<$t>($data) {
                parsed = true;
                let text = serde_json::to_string(&req).expect("a parsed request serializes");
                let again: $t = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{} does not parse back ({e}): {text}", stringify!($t)));
                assert_eq!(again, req, "{} changed in a JSON round trip: {text}", stringify!($t));
            }
        )*
        parsed
    }};
}

/// `json_request`: a JSON gateway request body, as each of the request messages it may be
/// (grpc-gateway's mapping, generated with pbjson): no panic; whatever parses serializes to
/// JSON that parses back to the same message. Returns whether any of them parsed.
pub fn check_json_request(data: &[u8]) -> bool {
    use detcd_core::proto::etcdserverpb as pb;
    use detcd_core::proto::v3electionpb as epb;
    json_round_trip!(
        data,
        pb::RangeRequest,
        pb::PutRequest,
        pb::DeleteRangeRequest,
        pb::TxnRequest,
        pb::CompactionRequest,
        pb::WatchRequest,
        pb::LeaseGrantRequest,
        pb::LeaseKeepAliveRequest,
        pb::MemberAddRequest,
        pb::AlarmRequest,
        epb::CampaignRequest,
        epb::ProclaimRequest
    )
}

/// `v2_discovery_answer`: etcd discovery's client (core's `V2Discovery`) fed the same
/// arbitrary answer to every request: the first byte picks the status (200, 201, 404, 412,
/// 500, 307 with the rest as Location, or a failed connection), the rest is the body and the
/// `X-Etcd-Index`. It must never panic, and every run must end (retries are bounded here)
/// within a bounded number of steps. Returns whether discovery succeeded.
pub fn check_v2_discovery_answer(data: &[u8]) -> bool {
    use detcd_core::discovery::{HttpResponse, Step, Transport, V2Discovery};
    let (first, rest) = data.split_first().unwrap_or((&0, &[]));
    let body = rest.to_vec();
    let answer = || -> Transport {
        let status = match first % 7 {
            0 => 200,
            1 => 201,
            2 => 404,
            3 => 412,
            4 => 500,
            5 => 307,
            _ => return Transport::Failed("connection refused".into()),
        };
        Transport::Response(HttpResponse {
            status,
            etcd_index: Some(String::from_utf8_lossy(&body[..body.len().min(8)]).into_owned()),
            location: (status == 307).then(|| String::from_utf8_lossy(&body).into_owned()),
            body: body.clone(),
        })
    };
    let mut m = V2Discovery::join(
        "http://10.0.0.1:2379/v2/keys/d/tok",
        0x1234,
        "a=http://10.0.0.2:2380",
    )
    .expect("a valid URL")
    .with_max_retries(3);
    for _ in 0..10_000 {
        match m.poll_step() {
            Some(Step::Send(_)) => m.handle_response(answer()),
            Some(Step::Sleep { .. }) => m.handle_slept(),
            Some(Step::Log(_)) => {}
            Some(Step::Done(r)) => return r.is_ok(),
            None => panic!("the machine stopped without an outcome"),
        }
    }
    // The same non-empty answer forever may keep a wait going (etcd re-sends it): bounded.
    false
}

/// `v2_store_rows`: a v2 keys store snapshot (JSON, as a leader sends it and as the data file
/// holds it) loaded by `V2Store::import`. Whatever loads must answer reads without panicking
/// and export to what it loaded; damage must be refused, not cut. Returns whether it loaded.
pub fn check_v2_store_rows(data: &[u8]) -> bool {
    use detcd_core::v2store::{Exported, V2Store};
    let Ok(exported) = serde_json::from_slice::<Exported>(data) else {
        return false;
    };
    let mut store = V2Store::new();
    if store.import(exported).is_err() {
        return false;
    }
    let _ = store.get("/", true, 0);
    let again = serde_json::to_vec(&store.export()).expect("a loaded store exports");
    let reread: Exported = serde_json::from_slice(&again).expect("an export reads back");
    let mut copy = V2Store::new();
    copy.import(reread).expect("an export loads");
    assert_eq!(copy.get("/", true, 0), store.get("/", true, 0));
    true
}
