use super::*;

const NOW: u64 = 1_764_000_000_000;

fn req(method: &str, path: &str) -> V2Request {
    V2Request {
        method: method.into(),
        path: path.into(),
        time_ms: NOW,
        ..Default::default()
    }
}

fn put(s: &mut V2Store, path: &str, value: &str) -> Result<Event, V2Error> {
    let mut r = req("PUT", path);
    r.value = value.into();
    s.apply(&r)
}

fn create(s: &mut V2Store, path: &str, value: &str) -> Result<Event, V2Error> {
    let mut r = req("PUT", path);
    r.value = value.into();
    r.prev_exist = Some(false);
    s.apply(&r)
}

#[test]
fn set_get_and_indexes() {
    let mut s = V2Store::new();
    let e = put(&mut s, "/foo", "bar").unwrap();
    assert_eq!(e.action, Action::Set);
    assert!(e.is_created());
    assert_eq!(
        e.to_json(false),
        r#"{"action":"set","node":{"key":"/foo","value":"bar","modifiedIndex":1,"createdIndex":1}}"#
    );
    let e = put(&mut s, "foo", "baz").unwrap();
    assert!(!e.is_created());
    assert_eq!(e.prev_node.as_ref().unwrap().value.as_deref(), Some("bar"));
    assert_eq!((e.node.created_index, e.node.modified_index), (2, 2));
    let g = s.get("/foo", false, NOW).unwrap();
    assert_eq!(g.node.value.as_deref(), Some("baz"));
    assert_eq!(g.etcd_index, 2);
    let err = s.get("/nope", false, NOW).unwrap_err();
    assert_eq!(
        err.to_json(),
        r#"{"errorCode":100,"message":"Key not found","cause":"/nope","index":2}"#
    );
    assert_eq!(err.http_status(), 404);
}

#[test]
fn create_only_once_and_parents_made() {
    let mut s = V2Store::new();
    let e = create(&mut s, "/d/t/1", "a=http://x:2380").unwrap();
    assert_eq!(e.action, Action::Create);
    let err = create(&mut s, "/d/t/1", "b").unwrap_err();
    assert_eq!(
        (err.code, err.cause.as_str(), err.index),
        (105, "/d/t/1", 1)
    );
    assert_eq!(err.http_status(), 412);
    // The parents were created with the file.
    let g = s.get("/d", true, NOW).unwrap();
    assert_eq!(
        g.to_json(false),
        r#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[{"key":"/d/t","dir":true,"nodes":[{"key":"/d/t/1","value":"a=http://x:2380","modifiedIndex":1,"createdIndex":1}],"modifiedIndex":1,"createdIndex":1}],"modifiedIndex":1,"createdIndex":1}}"#
    );
    // A file cannot be a directory on the way.
    let err = put(&mut s, "/d/t/1/x", "v").unwrap_err();
    assert_eq!((err.code, err.cause.as_str()), (104, "/d/t/1"));
    let err = s.get("/d/t/1/x", false, NOW).unwrap_err();
    assert_eq!(err.code, 104);
}

#[test]
fn hidden_nodes_are_not_listed() {
    let mut s = V2Store::new();
    put(&mut s, "/tok/_config/size", "3").unwrap();
    put(&mut s, "/tok/abc", "n=u").unwrap();
    let g = s.get("/tok", false, NOW).unwrap();
    let keys: Vec<_> = g.node.nodes.unwrap().into_iter().map(|n| n.key).collect();
    assert_eq!(keys, vec!["/tok/abc"]);
    // A hidden node is still readable by name.
    assert_eq!(
        s.get("/tok/_config/size", false, NOW)
            .unwrap()
            .node
            .value
            .as_deref(),
        Some("3")
    );
    // The root lists its children without a key of its own.
    let root = s.get("/", false, NOW).unwrap();
    assert!(root
        .to_json(false)
        .starts_with(r#"{"action":"get","node":{"dir":true,"nodes":[{"key":"/tok","dir":true"#));
}

#[test]
fn post_creates_in_order_keys() {
    let mut s = V2Store::new();
    let mut r = req("POST", "/queue");
    r.value = "one".into();
    let a = s.apply(&r).unwrap();
    let b = s.apply(&r).unwrap();
    assert_eq!(a.node.key, "/queue/00000000000000000001");
    assert_eq!(b.node.key, "/queue/00000000000000000002");
    assert_eq!(a.action, Action::Create);
}

#[test]
fn compare_and_swap_and_delete() {
    let mut s = V2Store::new();
    put(&mut s, "/k", "one").unwrap();
    let mut r = req("PUT", "/k");
    r.value = "two".into();
    r.prev_value = "nope".into();
    let err = s.apply(&r).unwrap_err();
    assert_eq!((err.code, err.cause.as_str()), (101, "[nope != one]"));
    r.prev_value = String::new();
    r.prev_index = 7;
    assert_eq!(s.apply(&r).unwrap_err().cause, "[7 != 1]");
    r.prev_value = "x".into();
    assert_eq!(s.apply(&r).unwrap_err().cause, "[x != one] [7 != 1]");
    r.prev_value = "one".into();
    r.prev_index = 1;
    let e = s.apply(&r).unwrap();
    assert_eq!(e.action, Action::CompareAndSwap);
    assert_eq!(e.node.value.as_deref(), Some("two"));
    // prevExist=true without a compare is an update.
    let mut u = req("PUT", "/k");
    u.value = "three".into();
    u.prev_exist = Some(true);
    assert_eq!(s.apply(&u).unwrap().action, Action::Update);
    u.path = "/missing".into();
    assert_eq!(s.apply(&u).unwrap_err().code, 100);
    let mut d = req("DELETE", "/k");
    d.prev_value = "two".into();
    assert_eq!(s.apply(&d).unwrap_err().code, 101);
    d.prev_value = "three".into();
    let e = s.apply(&d).unwrap();
    assert_eq!(e.action, Action::CompareAndDelete);
    assert_eq!(s.get("/k", false, NOW).unwrap_err().code, 100);
}

#[test]
fn directories_delete_only_when_asked() {
    let mut s = V2Store::new();
    put(&mut s, "/dir/a", "1").unwrap();
    let d = req("DELETE", "/dir");
    assert_eq!(s.apply(&d).unwrap_err().code, 102);
    let mut d2 = d.clone();
    d2.dir = true;
    let err = s.apply(&d2).unwrap_err();
    assert_eq!((err.code, err.http_status()), (108, 403));
    d2.recursive = true;
    let e = s.apply(&d2).unwrap();
    assert_eq!(e.action, Action::Delete);
    assert!(e.node.dir && e.prev_node.unwrap().dir);
    assert_eq!(s.get("/dir/a", false, NOW).unwrap_err().code, 100);
    assert_eq!(s.apply(&req("DELETE", "/")).unwrap_err().code, 107);
    // An empty directory goes with dir=true.
    let mut mk = req("PUT", "/empty");
    mk.dir = true;
    assert!(s.apply(&mk).unwrap().node.dir);
    let mut rm = req("DELETE", "/empty");
    rm.dir = true;
    s.apply(&rm).unwrap();
}

#[test]
fn ttl_counts_down_and_sync_expires() {
    let mut s = V2Store::new();
    let mut r = req("PUT", "/t");
    r.value = "v".into();
    r.expiration_ms = NOW + 4_500;
    let e = s.apply(&r).unwrap();
    assert_eq!(e.node.ttl, 5);
    assert_eq!(e.node.expiration_ms, Some(NOW + 4_500));
    assert!(s.has_ttl_keys());
    assert_eq!(s.get("/t", false, NOW + 1_000).unwrap().node.ttl, 4);
    let mut sync = req("SYNC", "");
    sync.time_ms = NOW + 4_499;
    s.apply(&sync).unwrap();
    assert!(s.get("/t", false, NOW).is_ok());
    let (id, idx) = match s.watch("/t", false, false, 0).unwrap() {
        WatchStart::Waiting { id, index } => (id, index),
        other => panic!("{other:?}"),
    };
    assert_eq!(idx, 1);
    sync.time_ms = NOW + 4_500;
    s.apply(&sync).unwrap();
    assert_eq!(s.get("/t", false, NOW).unwrap_err().code, 100);
    assert!(!s.has_ttl_keys());
    let fired = s.take_fired();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].0, id);
    assert_eq!(fired[0].1.action, Action::Expire);
    // An update without a TTL makes a key permanent (etcd's UpdateTTL).
    s.apply(&r).unwrap();
    let mut u = req("PUT", "/t");
    u.value = "w".into();
    u.prev_exist = Some(true);
    s.apply(&u).unwrap();
    assert!(!s.has_ttl_keys());
}

#[test]
fn waits_fire_as_etcd_notifies() {
    let mut s = V2Store::new();
    put(&mut s, "/tok/_config/size", "3").unwrap();
    // Discovery's wait: recursive on the token directory.
    let WatchStart::Waiting { id: rec, .. } = s.watch("/tok", true, false, 2).unwrap() else {
        panic!()
    };
    let WatchStart::Waiting { id: flat, .. } = s.watch("/tok", false, false, 0).unwrap() else {
        panic!()
    };
    // A hidden key below does not fire the recursive watch.
    put(&mut s, "/tok/_config/other", "x").unwrap();
    assert!(s.take_fired().is_empty());
    create(&mut s, "/tok/m1", "a=u").unwrap();
    let fired = s.take_fired();
    assert_eq!(fired.iter().map(|f| f.0).collect::<Vec<_>>(), vec![rec]);
    assert_eq!(fired[0].1.node.key, "/tok/m1");
    // The history answers a wait for an index already passed.
    match s.watch("/tok", true, false, 3).unwrap() {
        WatchStart::Ready(e) => assert_eq!((e.node.key.as_str(), e.etcd_index), ("/tok/m1", 3)),
        other => panic!("{other:?}"),
    }
    // Deleting the directory fires the non-recursive watcher on it.
    let mut d = req("DELETE", "/tok");
    d.recursive = true;
    s.apply(&d).unwrap();
    let fired = s.take_fired();
    assert_eq!(fired.iter().map(|f| f.0).collect::<Vec<_>>(), vec![flat]);
    assert_eq!(s.watcher_count(), 0);
    // A watcher on a key inside a deleted directory is told too.
    put(&mut s, "/a/b", "1").unwrap();
    let WatchStart::Waiting { id: inner, .. } = s.watch("/a/b", false, false, 0).unwrap() else {
        panic!()
    };
    let mut d = req("DELETE", "/a");
    d.recursive = true;
    s.apply(&d).unwrap();
    assert_eq!(s.take_fired()[0].0, inner);
    // Cancelled watchers never fire.
    let WatchStart::Waiting { id: gone, .. } = s.watch("/z", false, false, 0).unwrap() else {
        panic!()
    };
    s.cancel_watch(gone);
    put(&mut s, "/z", "1").unwrap();
    assert!(s.take_fired().is_empty());
}

#[test]
fn history_keeps_the_last_thousand_events() {
    let mut s = V2Store::new();
    for i in 0..1_005 {
        put(&mut s, "/k", &i.to_string()).unwrap();
    }
    let err = s.watch("/k", false, false, 3).unwrap_err();
    assert_eq!(err.code, 401);
    assert_eq!(err.cause, "the requested history has been cleared [6/3]");
    assert_eq!(err.index, 1005);
    assert!(matches!(
        s.watch("/k", false, false, 6).unwrap(),
        WatchStart::Ready(_)
    ));
}

#[test]
fn rows_and_snapshots_round_trip() {
    let mut s = V2Store::new();
    put(&mut s, "/a/b", "1").unwrap();
    let mut r = req("PUT", "/t");
    r.expiration_ms = NOW + 60_000;
    s.apply(&r).unwrap();
    let ch = s.take_changes();
    assert_eq!(ch.index, 2);
    assert_eq!(ch.nodes.len(), 3);
    assert_eq!(ch.events.len(), 2);
    assert!(!s.has_changes());
    let exported = s.export();
    let json = serde_json::to_vec(&exported).unwrap();
    let back: Exported = serde_json::from_slice(&json).unwrap();
    let mut t = V2Store::new();
    t.import(back).unwrap();
    assert_eq!(
        t.get("/", true, NOW).unwrap(),
        s.get("/", true, NOW).unwrap()
    );
    assert!(t.has_ttl_keys());
    assert!(matches!(
        t.watch("/a/b", false, false, 1).unwrap(),
        WatchStart::Ready(_)
    ));
    // Rows that cannot be a store are refused.
    let orphan = Node {
        value: Some("x".into()),
        created_index: 1,
        modified_index: 1,
        expire_ms: 0,
    };
    assert!(V2Store::load(1, [("/no/parent".to_string(), orphan.clone())], []).is_err());
    assert!(V2Store::load(1, [("/a/../b".to_string(), orphan.clone())], []).is_err());
    assert!(V2Store::load(0, [("/b".to_string(), orphan)], []).is_err());
}

#[test]
fn paths_clean_as_go_does() {
    assert_eq!(clean_path(""), "/");
    assert_eq!(clean_path("a//b/./c/.."), "/a/b");
    assert_eq!(clean_path("/../x"), "/x");
    assert!(is_hidden_below("/tok", "/tok/_config/size"));
    assert!(!is_hidden_below("/tok", "/tok/abc"));
}

#[test]
fn times_print_as_go_does() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_ms(1_764_000_000_120), "2025-11-24T16:00:00.12Z");
    assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00Z");
}

/// Index moves of etcd's member bookkeeping are not client events, but a wait from before
/// them is not "cleared" either: it gets the first client event after them.
#[test]
fn a_wait_from_before_member_bookkeeping_finds_the_first_write() {
    let mut s = V2Store::new();
    s.count_member_change(7);
    put(&mut s, "/foo", "bar").unwrap();
    match s.watch("/foo", false, false, 2).unwrap() {
        WatchStart::Ready(e) => assert_eq!(e.node.modified_index, 8),
        other => panic!("{other:?}"),
    }
    assert!(s.has_changes());
    assert_eq!(s.take_changes().index, 8);
}

/// The store stays small enough for a snapshot's head frame: writes past MAX_NODE_BYTES are
/// refused with a cause that says so; the history drops its oldest events past
/// MAX_HISTORY_BYTES, so deleting large values always makes room again; a reload counts the
/// same.
#[test]
fn the_store_is_bounded() {
    let mut s = V2Store::new();
    let big = "x".repeat(1 << 20);
    let mut refused = None;
    for i in 0..20 {
        match put(&mut s, &format!("/k{i}"), &big) {
            Ok(_) => {
                let (nodes, history) = s.stored_bytes();
                assert!(nodes <= MAX_NODE_BYTES && history <= MAX_HISTORY_BYTES);
            }
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (stored, e) = refused.expect("a write past the bound is refused");
    assert_eq!((e.code, e.http_status()), (300, 500));
    assert!(e.cause.starts_with("v2 store is full"), "{}", e.cause);
    for i in 0..stored {
        s.apply(&req("DELETE", &format!("/k{i}"))).unwrap();
        assert!(s.stored_bytes().1 <= MAX_HISTORY_BYTES);
    }
    put(&mut s, "/again", &big).unwrap();
    let ex = s.export();
    let again = V2Store::load(ex.index, ex.nodes, ex.events).unwrap();
    assert_eq!(again.stored_bytes(), s.stored_bytes());
    // Far under the snapshot head frame's 64 MiB, even JSON-escaped.
    assert!(serde_json::to_vec(&s.export()).unwrap().len() < 16 << 20);
}
