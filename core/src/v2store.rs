//! etcd's v2 keys store: the subset of etcd 3.4's `etcdserver/api/v2store` that the v2 keys
//! API (`/v2/keys`) and the discovery protocol use, as a replicated sub-store.
//!
//! A tree of directories and files addressed by slash-separated paths, one index counting
//! every change (`X-Etcd-Index`), TTLs, and a history of the last [`HISTORY_CAPACITY`]
//! events for `wait=true&waitIndex=N`. Writes come through raft as [`V2Request`]s and are
//! applied with [`V2Store::apply`]; times are Unix milliseconds carried in the request, so
//! every member computes the same answer. Expiry happens when the leader's SYNC request
//! (carrying its clock) is applied, as etcd's `DeleteExpiredKeys`.
//!
//! Waiting reads (`wait=true`) register a watcher on the member that serves them
//! ([`V2Store::watch`]); apply fires them ([`V2Store::take_fired`]). Watchers are not
//! replicated, exported or persisted.
//!
//! Differences from etcd: no `/0` and `/1` namespaces (keys live at the root; etcd hides its
//! `/1` prefix from clients, so they look the same), children are always listed in key order
//! (etcd lists them in Go map order unless `sorted=true`), and times have millisecond
//! resolution.

use crate::proto::detcdpb::V2Request;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Events kept for `waitIndex` (etcd's `newWatchHub(1000)`).
pub const HISTORY_CAPACITY: usize = 1000;

/// The most the nodes may hold, in bytes of keys and values (plus a fixed overhead each):
/// detcd's bound, not etcd's. The whole store travels in a snapshot's head frame (64 MiB at
/// most, JSON, where escaping can grow a value sixfold), so a store that grew past the frame
/// would stop every snapshot. Writes that would pass it are refused (code 300).
pub const MAX_NODE_BYTES: u64 = 4 << 20;

/// The most the history holds, in the same units: it keeps the last [`HISTORY_CAPACITY`]
/// events or this many bytes of them, whichever is less (oldest dropped first), so deleting
/// large values always makes room.
pub const MAX_HISTORY_BYTES: u64 = 4 << 20;

/// Expiry times before 2000-01-01 mean "never" (etcd's minExpireTime), Unix ms.
const MIN_EXPIRE_MS: u64 = 946_684_800_000;

/// One v2 error (etcd's `v2error.Error`): the code, its fixed message, the cause (usually the
/// key) and the store index when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error {
    pub code: u32,
    pub cause: String,
    pub index: u64,
}

/// etcd's v2 error codes (v2error/error.go) used here.
pub mod code {
    pub const KEY_NOT_FOUND: u32 = 100;
    pub const TEST_FAILED: u32 = 101;
    pub const NOT_FILE: u32 = 102;
    pub const NOT_DIR: u32 = 104;
    pub const NODE_EXIST: u32 = 105;
    pub const ROOT_READ_ONLY: u32 = 107;
    pub const DIR_NOT_EMPTY: u32 = 108;
    pub const PREV_VALUE_REQUIRED: u32 = 201;
    pub const TTL_NAN: u32 = 202;
    pub const INDEX_NAN: u32 = 203;
    pub const INVALID_FIELD: u32 = 209;
    pub const INVALID_FORM: u32 = 210;
    pub const REFRESH_VALUE: u32 = 211;
    pub const REFRESH_TTL_REQUIRED: u32 = 212;
    pub const RAFT_INTERNAL: u32 = 300;
    pub const LEADER_ELECT: u32 = 301;
    pub const EVENT_INDEX_CLEARED: u32 = 401;
}

impl V2Error {
    pub fn new(code: u32, cause: impl Into<String>, index: u64) -> V2Error {
        V2Error {
            code,
            cause: cause.into(),
            index,
        }
    }

    /// The fixed message of the code (etcd's `errors` table).
    pub fn message(&self) -> &'static str {
        match self.code {
            code::KEY_NOT_FOUND => "Key not found",
            code::TEST_FAILED => "Compare failed",
            code::NOT_FILE => "Not a file",
            code::NOT_DIR => "Not a directory",
            code::NODE_EXIST => "Key already exists",
            code::ROOT_READ_ONLY => "Root is read only",
            code::DIR_NOT_EMPTY => "Directory not empty",
            code::PREV_VALUE_REQUIRED => "PrevValue is Required in POST form",
            code::TTL_NAN => "The given TTL in POST form is not a number",
            code::INDEX_NAN => "The given index in POST form is not a number",
            code::INVALID_FIELD => "Invalid field",
            code::INVALID_FORM => "Invalid POST form",
            code::REFRESH_VALUE => "Value provided on refresh",
            code::REFRESH_TTL_REQUIRED => "A TTL must be provided on refresh",
            code::RAFT_INTERNAL => "Raft Internal Error",
            code::LEADER_ELECT => "During Leader Election",
            code::EVENT_INDEX_CLEARED => "The event in requested index is outdated and cleared",
            _ => "",
        }
    }

    /// The HTTP status etcd answers it with (v2error's errorStatus; 400 otherwise).
    pub fn http_status(&self) -> u16 {
        match self.code {
            code::KEY_NOT_FOUND => 404,
            code::NOT_FILE | code::DIR_NOT_EMPTY => 403,
            code::TEST_FAILED | code::NODE_EXIST => 412,
            code::RAFT_INTERNAL | code::LEADER_ELECT => 500,
            _ => 400,
        }
    }

    /// etcd's JSON body: `{"errorCode":N,"message":"..","cause":"..","index":N}` (cause
    /// omitted when empty), fields in etcd's order.
    pub fn to_json(&self) -> String {
        let mut j = JsonObject::default();
        j.raw("errorCode", &self.code.to_string());
        j.string("message", self.message());
        if !self.cause.is_empty() {
            j.string("cause", &self.cause);
        }
        j.raw("index", &self.index.to_string());
        j.finish()
    }
}

/// A JSON object written field by field, in the order Go's encoding/json writes a struct's.
#[derive(Default)]
struct JsonObject(String);

impl JsonObject {
    fn raw(&mut self, name: &str, json: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push_str(&serde_json::Value::from(name).to_string());
        self.0.push(':');
        self.0.push_str(json);
    }

    fn string(&mut self, name: &str, value: &str) {
        self.raw(name, &serde_json::Value::from(value).to_string());
    }

    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({}) [{}]",
            self.code,
            self.message(),
            self.cause,
            self.index
        )
    }
}

/// What an event did (etcd's action strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "get")]
    Get,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compareAndSwap")]
    CompareAndSwap,
    #[serde(rename = "compareAndDelete")]
    CompareAndDelete,
    #[serde(rename = "expire")]
    Expire,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Create => "create",
            Action::Set => "set",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::CompareAndSwap => "compareAndSwap",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// A node as clients see it (etcd's `NodeExtern`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeView {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub dir: bool,
    /// When it expires, Unix ms (None: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<u64>,
    /// Seconds left, rounded up, when the view was made.
    #[serde(default)]
    pub ttl: i64,
    /// Children (a directory listing; None when not listed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeView>>,
    pub modified_index: u64,
    pub created_index: u64,
}

impl NodeView {
    /// etcd's JSON for it (absent and zero fields omitted, as Go's `omitempty`).
    pub fn to_json(&self) -> String {
        let mut j = JsonObject::default();
        if !self.key.is_empty() {
            j.string("key", &self.key);
        }
        if let Some(v) = &self.value {
            j.string("value", v);
        }
        if self.dir {
            j.raw("dir", "true");
        }
        if let Some(e) = self.expiration_ms {
            j.string("expiration", &rfc3339_ms(e));
        }
        if self.ttl != 0 {
            j.raw("ttl", &self.ttl.to_string());
        }
        if let Some(nodes) = self.nodes.as_ref().filter(|n| !n.is_empty()) {
            let list: Vec<String> = nodes.iter().map(NodeView::to_json).collect();
            j.raw("nodes", &format!("[{}]", list.join(",")));
        }
        if self.modified_index != 0 {
            j.raw("modifiedIndex", &self.modified_index.to_string());
        }
        if self.created_index != 0 {
            j.raw("createdIndex", &self.created_index.to_string());
        }
        j.finish()
    }
}

/// One change or read (etcd's `Event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    pub node: NodeView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<NodeView>,
    /// The store index to report (`X-Etcd-Index`).
    pub etcd_index: u64,
    /// A TTL refresh: recorded in the history, not sent to watchers.
    #[serde(default)]
    pub refresh: bool,
}

impl Event {
    /// The event's own index (its node's modified index).
    pub fn index(&self) -> u64 {
        self.node.modified_index
    }

    /// Answered with 201: a create, or a set of a key that did not exist.
    pub fn is_created(&self) -> bool {
        self.action == Action::Create || (self.action == Action::Set && self.prev_node.is_none())
    }

    /// etcd's JSON body (`{"action":..,"node":..,"prevNode":..}`). With `no_value`
    /// (`noValueOnSuccess=true`), writes answer only their action.
    pub fn to_json(&self, no_value: bool) -> String {
        let mut j = JsonObject::default();
        j.string("action", self.action.as_str());
        let writes = matches!(
            self.action,
            Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
        );
        if !(no_value && writes) {
            j.raw("node", &self.node.to_json());
            if let Some(p) = &self.prev_node {
                j.raw("prevNode", &p.to_json());
            }
        }
        if self.refresh {
            j.raw("refresh", "true");
        }
        j.finish()
    }
}

/// A stored node. `value` None is a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub created_index: u64,
    pub modified_index: u64,
    /// Unix ms; 0 is permanent.
    #[serde(default)]
    pub expire_ms: u64,
}

impl Node {
    fn is_dir(&self) -> bool {
        self.value.is_none()
    }
}

/// What a waiting read gets back from [`V2Store::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchStart {
    /// The history already holds a matching event.
    Ready(Box<Event>),
    /// Registered as watcher `id`; the answer comes from [`V2Store::take_fired`]. `index` is
    /// the store index when it started (`X-Etcd-Index`).
    Waiting { id: u64, index: u64 },
}

#[derive(Debug, Clone)]
struct Watcher {
    key: String,
    recursive: bool,
    stream: bool,
    since: u64,
}

/// Rows changed since [`V2Store::take_changes`] was last called, for the data file.
#[derive(Debug, Default)]
pub struct Changes {
    /// Node rows to write (Some) or delete (None), by path.
    pub nodes: Vec<(String, Option<Node>)>,
    /// Events added to the history.
    pub events: Vec<Event>,
    /// History events below this index were dropped.
    pub history_start: u64,
    pub index: u64,
}

/// The store as exported into a snapshot (and imported from one).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Exported {
    pub index: u64,
    pub nodes: BTreeMap<String, Node>,
    pub events: Vec<Event>,
}

/// The v2 keys store. See the module docs.
#[derive(Debug, Default)]
pub struct V2Store {
    /// Every node but the root, by cleaned path.
    nodes: BTreeMap<String, Node>,
    index: u64,
    /// Nodes with a TTL, by (expiry, path).
    ttl: BTreeSet<(u64, String)>,
    history: VecDeque<Event>,
    /// Bytes the nodes hold ([`MAX_NODE_BYTES`]).
    node_bytes: u64,
    /// Bytes the history holds ([`MAX_HISTORY_BYTES`]).
    history_bytes: u64,
    /// Events below this index were dropped from the history (0: none ever was). Not the
    /// oldest event's index: index moves without events ([`V2Store::count_member_change`])
    /// are etcd's own events in its history, so a wait from before them is not "cleared".
    cleared_below: u64,
    /// Paths changed since the last take_changes.
    dirty: BTreeSet<String>,
    /// The index moved without a node changing ([`V2Store::count_member_change`]).
    index_moved: bool,
    new_events: Vec<Event>,
    // Per member, not replicated:
    watchers: BTreeMap<u64, Watcher>,
    watchers_at: BTreeMap<String, Vec<u64>>,
    next_watcher: u64,
    fired: Vec<(u64, Event)>,
}

/// Go's `path.Clean(path.Join("/", p))`: an absolute path without empty, `.` or `..`
/// segments ("/" for the root).
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The parent directory of a cleaned path ("/" for top-level nodes).
fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// A node is hidden when its name starts with `_`.
fn is_hidden_name(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|n| n.starts_with('_'))
}

/// etcd's watcher_hub `isHidden`: the part of `key` below `watch` has a `_` segment.
fn is_hidden_below(watch: &str, key: &str) -> bool {
    if watch.len() > key.len() || !key.is_char_boundary(watch.len()) {
        return false;
    }
    clean_path(&format!("/{}", &key[watch.len()..])).contains("/_")
}

/// What a node counts toward [`MAX_NODE_BYTES`].
fn node_bytes(path: &str, n: &Node) -> u64 {
    (path.len() + n.value.as_ref().map_or(0, String::len) + 64) as u64
}

/// What a history event counts toward [`MAX_HISTORY_BYTES`].
fn event_bytes(e: &Event) -> u64 {
    let view = |v: &NodeView| v.key.len() + v.value.as_ref().map_or(0, String::len);
    (view(&e.node) + e.prev_node.as_ref().map_or(0, view) + 128) as u64
}

/// Seconds left until `expire_ms`, rounded up (etcd's expirationAndTTL).
fn ttl_secs(expire_ms: u64, now_ms: u64) -> i64 {
    let left = i128::from(expire_ms) - i128::from(now_ms);
    let secs = left.div_euclid(1000) + i128::from(left.rem_euclid(1000) > 0);
    secs.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, as Go prints a time.Time in JSON
/// (fraction trimmed of trailing zeros).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let frac = ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if frac != 0 {
        let f = format!("{frac:03}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

impl V2Store {
    pub fn new() -> V2Store {
        V2Store::default()
    }

    /// The store index (`X-Etcd-Index`): changes applied so far.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// True when some node has a TTL: the leader then proposes SYNCs (etcd's HasTTLKeys).
    pub fn has_ttl_keys(&self) -> bool {
        !self.ttl.is_empty()
    }

    /// The first TTL due, Unix ms.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.ttl.first().map(|(t, _)| *t)
    }

    /// Counts a change of the cluster's member bookkeeping in the index, as etcd's v2 store
    /// does: etcd keeps members, their attributes and the cluster version in its hidden `/0`
    /// namespace of the same store (etcdserver/api/membership/store.go), so each such write
    /// moves `X-Etcd-Index`, and a client's first key in a fresh one-member cluster gets index
    /// 4, not 1 (clients such as `etcdctl watch --after-index=1` rely on the index having
    /// moved). No event is recorded: nothing a client can watch changed.
    pub fn count_member_change(&mut self, writes: u64) {
        self.index += writes;
        self.index_moved = true;
    }

    /// Bytes the nodes and the history hold ([`MAX_NODE_BYTES`], [`MAX_HISTORY_BYTES`]).
    pub fn stored_bytes(&self) -> (u64, u64) {
        (self.node_bytes, self.history_bytes)
    }

    /// Waiting reads registered on this member.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    // ---- reads ----

    /// etcd's internalGet: the node at a cleaned path (the root is a permanent directory
    /// created at 0). Errors: 100 naming the first missing path, 104 naming a file on the way.
    fn lookup(&self, path: &str) -> Result<Option<&Node>, V2Error> {
        if path == "/" {
            return Ok(None);
        }
        let mut at = String::new();
        let segs: Vec<&str> = path[1..].split('/').collect();
        for (i, seg) in segs.iter().enumerate() {
            let parent = if at.is_empty() {
                "/".to_string()
            } else {
                at.clone()
            };
            at.push('/');
            at.push_str(seg);
            match self.nodes.get(&at) {
                None => return Err(V2Error::new(code::KEY_NOT_FOUND, at, self.index)),
                Some(n) if i + 1 == segs.len() => return Ok(Some(n)),
                Some(n) if !n.is_dir() => {
                    let _ = parent;
                    return Err(V2Error::new(code::NOT_DIR, at, self.index));
                }
                Some(_) => {}
            }
        }
        unreachable!("a cleaned path other than / has a segment")
    }

    /// Children of a directory path (direct ones only), in key order.
    fn children(&self, dir: &str) -> Vec<(&String, &Node)> {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .collect()
    }

    /// Every node at or below `path`.
    fn subtree(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        let mut out: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if self.nodes.contains_key(path) {
            out.push(path.to_string());
        }
        out
    }

    /// etcd's node.Repr: a file with its value, a directory with its children when
    /// `recursive` (hidden ones left out).
    fn repr(&self, path: &str, node: Option<&Node>, recursive: bool, now_ms: u64) -> NodeView {
        let root = Node {
            value: None,
            created_index: 0,
            modified_index: 0,
            expire_ms: 0,
        };
        let n = node.unwrap_or(&root);
        let mut v = NodeView {
            // etcd's root is its /1 namespace, which it trims to "".
            key: if path == "/" {
                String::new()
            } else {
                path.to_string()
            },
            value: n.value.clone(),
            dir: n.is_dir(),
            modified_index: n.modified_index,
            created_index: n.created_index,
            ..Default::default()
        };
        if n.expire_ms != 0 {
            v.expiration_ms = Some(n.expire_ms);
            v.ttl = ttl_secs(n.expire_ms, now_ms);
        }
        if n.is_dir() && recursive {
            v.nodes = Some(self.list(path, true, now_ms));
        }
        v
    }

    fn list(&self, dir: &str, recursive: bool, now_ms: u64) -> Vec<NodeView> {
        self.children(dir)
            .into_iter()
            .filter(|(k, _)| !is_hidden_name(k))
            .map(|(k, n)| self.repr(k, Some(n), recursive, now_ms))
            .collect()
    }

    /// etcd's Get: the node at `path`; a directory lists its (non-hidden) children, all the
    /// way down with `recursive`. Always in key order, whatever `sorted` says.
    pub fn get(&self, path: &str, recursive: bool, now_ms: u64) -> Result<Event, V2Error> {
        let path = clean_path(path);
        let node = self.lookup(&path)?;
        let mut view = self.repr(&path, node, false, now_ms);
        if view.dir {
            view.nodes = Some(self.list(&path, recursive, now_ms));
        }
        Ok(Event {
            action: Action::Get,
            node: view,
            prev_node: None,
            etcd_index: self.index,
            refresh: false,
        })
    }

    // ---- writes ----

    /// Applies one replicated request (etcd's applierV2store). QGET answers a read.
    pub fn apply(&mut self, r: &V2Request) -> Result<Event, V2Error> {
        let expire = r.expiration_ms;
        let now = r.time_ms;
        if matches!(r.method.as_str(), "PUT" | "POST") {
            // The node, and parent directories at most as long as its path.
            let grows = (2 * r.path.len() + r.value.len() + 128) as u64;
            if self.node_bytes + grows > MAX_NODE_BYTES {
                return Err(V2Error::new(
                    code::RAFT_INTERNAL,
                    format!(
                        "v2 store is full: its keys and values take {} bytes and this write needs up to {grows} more (detcd's limit: {MAX_NODE_BYTES}); delete keys to make room",
                        self.node_bytes
                    ),
                    self.index,
                ));
            }
        }
        match r.method.as_str() {
            "POST" => self.create(&r.path, r.dir, &r.value, true, expire, now),
            "PUT" => match r.prev_exist {
                Some(true) if r.prev_index == 0 && r.prev_value.is_empty() => {
                    self.update(&r.path, &r.value, expire, r.refresh, now)
                }
                Some(true) => self.compare_and_swap(r, now),
                Some(false) => self.create(&r.path, r.dir, &r.value, false, expire, now),
                None if r.prev_index > 0 || !r.prev_value.is_empty() => {
                    self.compare_and_swap(r, now)
                }
                None => self.set(&r.path, r.dir, &r.value, expire, r.refresh, now),
            },
            "DELETE" if r.prev_index > 0 || !r.prev_value.is_empty() => {
                self.compare_and_delete(&r.path, &r.prev_value, r.prev_index, now)
            }
            "DELETE" => self.delete(&r.path, r.dir, r.recursive, now),
            "QGET" => self.get(&r.path, r.recursive, now),
            "SYNC" => {
                self.expire_due(now);
                Ok(Event {
                    action: Action::Get,
                    node: NodeView::default(),
                    prev_node: None,
                    etcd_index: self.index,
                    refresh: false,
                })
            }
            other => Err(V2Error::new(
                code::INVALID_FORM,
                format!("unknown method {other:?}"),
                self.index,
            )),
        }
    }

    fn put_node(&mut self, path: &str, node: Node) {
        if let Some(old) = self.nodes.get(path) {
            self.node_bytes -= node_bytes(path, old);
            if old.expire_ms != 0 {
                self.ttl.remove(&(old.expire_ms, path.to_string()));
            }
        }
        self.node_bytes += node_bytes(path, &node);
        if node.expire_ms != 0 {
            self.ttl.insert((node.expire_ms, path.to_string()));
        }
        self.nodes.insert(path.to_string(), node);
        self.dirty.insert(path.to_string());
    }

    fn remove_node(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.node_bytes -= node_bytes(path, &old);
            if old.expire_ms != 0 {
                self.ttl.remove(&(old.expire_ms, path.to_string()));
            }
            self.dirty.insert(path.to_string());
        }
    }

    /// etcd's internalCreate. `replace` lets a file be overwritten (Set).
    #[allow(clippy::too_many_arguments)]
    fn internal_create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        replace: bool,
        expire_ms: u64,
        action: Action,
        now: u64,
    ) -> Result<Event, V2Error> {
        let cur = self.index;
        let next = cur + 1;
        let mut path = path.to_string();
        if unique {
            path = format!("{path}/{next:020}");
        }
        let path = clean_path(&path);
        if path == "/" {
            return Err(V2Error::new(code::ROOT_READ_ONLY, "/", cur));
        }
        let expire_ms = if expire_ms < MIN_EXPIRE_MS {
            0
        } else {
            expire_ms
        };
        // Walk the parent directories, creating the missing ones (etcd's checkDir).
        let parent = parent_of(&path).to_string();
        let mut missing = Vec::new();
        let mut at = String::new();
        for seg in parent.split('/').filter(|s| !s.is_empty()) {
            at.push('/');
            at.push_str(seg);
            match self.nodes.get(&at) {
                Some(n) if !n.is_dir() => return Err(V2Error::new(code::NOT_DIR, at, cur)),
                Some(_) => {}
                None => missing.push(at.clone()),
            }
        }
        let existing = self.nodes.get(&path).cloned();
        let mut prev = None;
        if let Some(n) = &existing {
            if !replace {
                return Err(V2Error::new(code::NODE_EXIST, path, cur));
            }
            if n.is_dir() {
                return Err(V2Error::new(code::NOT_FILE, path, cur));
            }
            prev = Some(self.repr(&path, Some(n), false, now));
        }
        for d in missing {
            self.put_node(
                &d,
                Node {
                    value: None,
                    created_index: next,
                    modified_index: next,
                    expire_ms: 0,
                },
            );
        }
        let node = Node {
            value: (!dir).then(|| value.to_string()),
            created_index: next,
            modified_index: next,
            expire_ms,
        };
        self.put_node(&path, node.clone());
        self.index = next;
        Ok(Event {
            action,
            node: self.repr(&path, Some(&node), false, now),
            prev_node: prev,
            etcd_index: next,
            refresh: false,
        })
    }

    fn create(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        unique: bool,
        expire: u64,
        now: u64,
    ) -> Result<Event, V2Error> {
        let e =
            self.internal_create(path, dir, value, unique, false, expire, Action::Create, now)?;
        self.notify(e.clone());
        Ok(e)
    }

    fn set(
        &mut self,
        path: &str,
        dir: bool,
        value: &str,
        expire: u64,
        refresh: bool,
        now: u64,
    ) -> Result<Event, V2Error> {
        let p = clean_path(path);
        let found = match self.lookup(&p) {
            Ok(n) => Ok(n.cloned()),
            Err(e) if e.code == code::KEY_NOT_FOUND => Err(e),
            Err(e) => return Err(e),
        };
        let mut value = value.to_string();
        if refresh {
            match &found {
                Err(e) => return Err(e.clone()),
                Ok(n) => value = n.as_ref().and_then(|n| n.value.clone()).unwrap_or_default(),
            }
        }
        let mut e =
            self.internal_create(path, dir, &value, false, true, expire, Action::Set, now)?;
        if refresh {
            e.refresh = true;
            self.record(e.clone());
        } else {
            self.notify(e.clone());
        }
        Ok(e)
    }

    fn update(
        &mut self,
        path: &str,
        value: &str,
        expire: u64,
        refresh: bool,
        now: u64,
    ) -> Result<Event, V2Error> {
        let path = clean_path(path);
        let cur = self.index;
        if path == "/" {
            return Err(V2Error::new(code::ROOT_READ_ONLY, "/", cur));
        }
        let next = cur + 1;
        let n = self.lookup(&path)?.cloned().expect("not the root");
        if n.is_dir() && !value.is_empty() {
            return Err(V2Error::new(code::NOT_FILE, path, cur));
        }
        let prev = self.repr(&path, Some(&n), false, now);
        let mut updated = n.clone();
        if !n.is_dir() {
            // A directory's modified index stays (etcd's Write fails on it, ignored).
            updated.value = Some(if refresh {
                n.value.clone().unwrap_or_default()
            } else {
                value.to_string()
            });
            updated.modified_index = next;
        }
        updated.expire_ms = expire; // etcd's UpdateTTL: no TTL given makes it permanent
        self.put_node(&path, updated.clone());
        let mut view = self.repr(&path, Some(&updated), false, now);
        view.modified_index = next;
        view.created_index = n.created_index;
        self.index = next;
        let e = Event {
            action: Action::Update,
            node: view,
            prev_node: Some(prev),
            etcd_index: next,
            refresh,
        };
        if refresh {
            self.record(e.clone());
        } else {
            self.notify(e.clone());
        }
        Ok(e)
    }

    /// etcd's getCompareFailCause.
    fn compare(n: &Node, prev_value: &str, prev_index: u64, index: u64) -> Result<(), V2Error> {
        let value = n.value.as_deref().unwrap_or("");
        let index_ok = prev_index == 0 || n.modified_index == prev_index;
        let value_ok = prev_value.is_empty() || value == prev_value;
        let cause = match (value_ok, index_ok) {
            (true, true) => return Ok(()),
            (true, false) => format!("[{prev_index} != {}]", n.modified_index),
            (false, true) => format!("[{prev_value} != {value}]"),
            (false, false) => format!(
                "[{prev_value} != {value}] [{prev_index} != {}]",
                n.modified_index
            ),
        };
        Err(V2Error::new(code::TEST_FAILED, cause, index))
    }

    fn compare_and_swap(&mut self, r: &V2Request, now: u64) -> Result<Event, V2Error> {
        let path = clean_path(&r.path);
        let cur = self.index;
        if path == "/" {
            return Err(V2Error::new(code::ROOT_READ_ONLY, "/", cur));
        }
        let n = self.lookup(&path)?.cloned().expect("not the root");
        if n.is_dir() {
            return Err(V2Error::new(code::NOT_FILE, path, cur));
        }
        Self::compare(&n, &r.prev_value, r.prev_index, cur)?;
        let value = if r.refresh {
            n.value.clone().unwrap_or_default()
        } else {
            r.value.clone()
        };
        self.index += 1;
        let prev = self.repr(&path, Some(&n), false, now);
        let updated = Node {
            value: Some(value),
            created_index: n.created_index,
            modified_index: self.index,
            expire_ms: r.expiration_ms,
        };
        self.put_node(&path, updated.clone());
        let e = Event {
            action: Action::CompareAndSwap,
            node: self.repr(&path, Some(&updated), false, now),
            prev_node: Some(prev),
            etcd_index: self.index,
            refresh: r.refresh,
        };
        if r.refresh {
            self.record(e.clone());
        } else {
            self.notify(e.clone());
        }
        Ok(e)
    }

    /// Removes `path` (and, for a directory, everything below it), firing the watchers of
    /// each removed path with `e` (etcd's node.Remove with its callback).
    fn remove_tree(&mut self, path: &str, e: &Event) {
        for p in self.subtree(path) {
            self.notify_at(e, &p, true);
            self.remove_node(&p);
        }
    }

    fn delete(
        &mut self,
        path: &str,
        dir: bool,
        recursive: bool,
        now: u64,
    ) -> Result<Event, V2Error> {
        let path = clean_path(path);
        let cur = self.index;
        if path == "/" {
            return Err(V2Error::new(code::ROOT_READ_ONLY, "/", cur));
        }
        let dir = dir || recursive;
        let n = self.lookup(&path)?.cloned().expect("not the root");
        if n.is_dir() {
            if !dir {
                return Err(V2Error::new(code::NOT_FILE, path, cur));
            }
            if !recursive && !self.children(&path).is_empty() {
                return Err(V2Error::new(code::DIR_NOT_EMPTY, path, cur));
            }
        }
        let next = cur + 1;
        let e = self.removal(Action::Delete, &path, &n, next, now);
        self.remove_tree(&path, &e);
        self.index = next;
        self.notify(e.clone());
        Ok(e)
    }

    fn compare_and_delete(
        &mut self,
        path: &str,
        prev_value: &str,
        prev_index: u64,
        now: u64,
    ) -> Result<Event, V2Error> {
        let path = clean_path(path);
        let cur = self.index;
        let Some(n) = self.lookup(&path)?.cloned() else {
            // etcd's root is its /1 namespace, whose trimmed path is empty.
            return Err(V2Error::new(code::NOT_FILE, "", cur));
        };
        if n.is_dir() {
            return Err(V2Error::new(code::NOT_FILE, path, cur));
        }
        Self::compare(&n, prev_value, prev_index, cur)?;
        self.index += 1;
        let e = self.removal(Action::CompareAndDelete, &path, &n, self.index, now);
        self.remove_tree(&path, &e);
        self.notify(e.clone());
        Ok(e)
    }

    /// The event of a node's removal at `index`: the node as it was is the previous node.
    fn removal(&self, action: Action, path: &str, n: &Node, index: u64, now: u64) -> Event {
        Event {
            action,
            node: NodeView {
                key: path.to_string(),
                dir: n.is_dir(),
                modified_index: index,
                created_index: n.created_index,
                ..Default::default()
            },
            prev_node: Some(self.repr(path, Some(n), false, now)),
            etcd_index: index,
            refresh: false,
        }
    }

    /// etcd's DeleteExpiredKeys: every node due by `cutoff_ms` goes, one expire event each.
    fn expire_due(&mut self, cutoff_ms: u64) {
        // Each pass removes at least the first entry: bounded by the number of TTL nodes.
        while let Some((at, path)) = self.ttl.first().cloned() {
            if at > cutoff_ms {
                break;
            }
            let n = self
                .nodes
                .get(&path)
                .cloned()
                .expect("TTL entries name stored nodes");
            self.index += 1;
            let e = self.removal(Action::Expire, &path, &n, self.index, cutoff_ms);
            self.remove_tree(&path, &e);
            self.notify(e);
        }
    }

    // ---- history and watchers ----

    /// Adds an event to the history (etcd's EventHistory.addEvent).
    fn record(&mut self, e: Event) {
        self.history_bytes += event_bytes(&e);
        self.history.push_back(e.clone());
        self.new_events.push(e);
        // Bounded by the event count (the loop ends once one event is left).
        while self.history.len() > HISTORY_CAPACITY
            || (self.history_bytes > MAX_HISTORY_BYTES && self.history.len() > 1)
        {
            let Some(dropped) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= event_bytes(&dropped);
            self.cleared_below = dropped.index() + 1;
        }
    }

    /// etcd's watcherHub.notify: records the event, then fires the watchers of the key and
    /// of every directory above it.
    fn notify(&mut self, e: Event) {
        self.record(e.clone());
        let key = e.node.key.clone();
        self.notify_at(&e, "/", false);
        let mut at = String::new();
        for seg in key.split('/').filter(|s| !s.is_empty()) {
            at.push('/');
            at.push_str(seg);
            self.notify_at(&e, &at, false);
        }
    }

    /// etcd's notifyWatchers: the watchers registered at exactly `path`.
    fn notify_at(&mut self, e: &Event, path: &str, deleted: bool) {
        let Some(ids) = self.watchers_at.get(path).cloned() else {
            return;
        };
        let original = e.node.key == path;
        if !original && is_hidden_below(path, &e.node.key) {
            return;
        }
        for id in ids {
            let w = &self.watchers[&id];
            if (w.recursive || original || deleted) && e.index() >= w.since {
                self.fired.push((id, e.clone()));
                if !w.stream {
                    self.cancel_watch(id);
                }
            }
        }
    }

    /// etcd's EventHistory.scan: the first recorded event at or after `since` for `key`.
    fn scan(&self, key: &str, recursive: bool, since: u64) -> Result<Option<Event>, V2Error> {
        let start = self.history.front().map_or(0, Event::index);
        let last = self.history.back().map_or(0, Event::index);
        if since < self.cleared_below {
            return Err(V2Error::new(
                code::EVENT_INDEX_CLEARED,
                format!("the requested history has been cleared [{start}/{since}]"),
                self.index,
            ));
        }
        if since > last {
            return Ok(None);
        }
        let dir_prefix = if key.ends_with('/') {
            key.to_string()
        } else {
            format!("{key}/")
        };
        for e in self.history.iter().filter(|e| e.index() >= since) {
            if e.refresh {
                continue;
            }
            let mut ok = e.node.key == key || (recursive && e.node.key.starts_with(&dir_prefix));
            if matches!(e.action, Action::Delete | Action::Expire) {
                if let Some(p) = e.prev_node.as_ref().filter(|p| p.dir) {
                    ok = ok || key.starts_with(&p.key);
                }
            }
            if ok {
                return Ok(Some(e.clone()));
            }
        }
        Ok(None)
    }

    /// etcd's store.Watch: the first event at or after `wait_index` (0: the next one) for
    /// `path` (and below it with `recursive`), from the history if it holds one, else a
    /// watcher registered until an apply fires it or [`V2Store::cancel_watch`]. Error 401 when
    /// `wait_index` is older than the history.
    pub fn watch(
        &mut self,
        path: &str,
        recursive: bool,
        stream: bool,
        wait_index: u64,
    ) -> Result<WatchStart, V2Error> {
        let key = clean_path(path);
        let since = if wait_index == 0 {
            self.index + 1
        } else {
            wait_index
        };
        if let Some(mut e) = self.scan(&key, recursive, since)? {
            e.etcd_index = self.index;
            return Ok(WatchStart::Ready(Box::new(e)));
        }
        self.next_watcher += 1;
        let id = self.next_watcher;
        self.watchers_at.entry(key.clone()).or_default().push(id);
        self.watchers.insert(
            id,
            Watcher {
                key,
                recursive,
                stream,
                since,
            },
        );
        Ok(WatchStart::Waiting {
            id,
            index: self.index,
        })
    }

    /// Removes a watcher (its client went away, or it fired). Unknown IDs are ignored.
    pub fn cancel_watch(&mut self, id: u64) {
        if let Some(w) = self.watchers.remove(&id) {
            if let Some(list) = self.watchers_at.get_mut(&w.key) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.watchers_at.remove(&w.key);
                }
            }
        }
    }

    /// The watchers fired since the last call, with their event.
    pub fn take_fired(&mut self) -> Vec<(u64, Event)> {
        std::mem::take(&mut self.fired)
    }

    // ---- persistence ----

    /// What changed since the last call: the data file writes these rows with the apply's
    /// transaction.
    pub fn take_changes(&mut self) -> Changes {
        self.index_moved = false;
        let nodes = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|p| {
                let n = self.nodes.get(&p).cloned();
                (p, n)
            })
            .collect();
        Changes {
            nodes,
            events: std::mem::take(&mut self.new_events),
            history_start: self.history.front().map_or(0, Event::index),
            index: self.index,
        }
    }

    /// True when [`V2Store::take_changes`] has something to write.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || !self.new_events.is_empty() || self.index_moved
    }

    /// The store rebuilt from its rows: every node by path, the history events in index
    /// order and the index. Refuses rows that cannot be a store (a node under a file, a
    /// path not clean), naming the row.
    pub fn load(
        index: u64,
        nodes: impl IntoIterator<Item = (String, Node)>,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<V2Store, String> {
        let mut s = V2Store {
            index,
            ..Default::default()
        };
        for (path, node) in nodes {
            if clean_path(&path) != path || path == "/" {
                return Err(format!("v2 store row {path:?} is not a clean key path"));
            }
            if node.modified_index > index || node.created_index > index {
                return Err(format!(
                    "v2 store row {path:?} has an index above the store's ({index})"
                ));
            }
            if node.expire_ms != 0 {
                s.ttl.insert((node.expire_ms, path.clone()));
            }
            s.nodes.insert(path, node);
        }
        for path in s.nodes.keys() {
            let parent = parent_of(path);
            if parent != "/" && !s.nodes.get(parent).is_some_and(Node::is_dir) {
                return Err(format!("v2 store row {path:?} has no parent directory"));
            }
        }
        for e in events {
            if s.history.back().is_some_and(|b| b.index() >= e.index()) {
                return Err(format!("v2 store event {} is out of order", e.index()));
            }
            if s.history.len() == HISTORY_CAPACITY {
                s.history.pop_front();
            }
            s.history.push_back(e);
        }
        // A full history may have dropped older events; a shorter one never did.
        if s.history.len() == HISTORY_CAPACITY {
            s.cleared_below = s.history.front().map_or(0, Event::index);
        }
        s.node_bytes = s.nodes.iter().map(|(p, n)| node_bytes(p, n)).sum();
        s.history_bytes = s.history.iter().map(event_bytes).sum();
        Ok(s)
    }

    /// The replicated state (not the watchers), for a snapshot.
    pub fn export(&self) -> Exported {
        Exported {
            index: self.index,
            nodes: self.nodes.clone(),
            events: self.history.iter().cloned().collect(),
        }
    }

    /// Replaces the replicated state with a snapshot's (watchers stay registered: they wait
    /// for events after the new index, as etcd's do after a recovery). Refuses an export that
    /// cannot be a store.
    pub fn import(&mut self, e: Exported) -> Result<(), String> {
        let fresh = V2Store::load(e.index, e.nodes, e.events)?;
        self.replace_with(fresh);
        Ok(())
    }

    /// Takes `fresh`'s replicated state (nodes, history, index), keeping this member's
    /// watchers.
    pub fn replace_with(&mut self, fresh: V2Store) {
        self.nodes = fresh.nodes;
        self.ttl = fresh.ttl;
        self.history = fresh.history;
        self.node_bytes = fresh.node_bytes;
        self.history_bytes = fresh.history_bytes;
        self.cleared_below = fresh.cleared_below;
        self.index = fresh.index;
        self.dirty.clear();
        self.new_events.clear();
        self.index_moved = false;
    }
}

#[cfg(test)]
mod tests;
