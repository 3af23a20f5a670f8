//! etcd's v2 keys API on the client port (`/v2/keys/...`, behind `--enable-v2` as in etcd
//! 3.4), the subset etcd discovery uses and a bit more, and the public discovery service's
//! `/new?size=N` endpoint.
//!
//! Requests are parsed as etcd's v2http `parseKeyRequest` does (etcdserver/api/v2http/
//! client.go: the same fields, error codes and causes); writes go through raft as
//! `V2Request`s; plain GETs are answered from this member's store (as etcd's are), a
//! `quorum=true` GET goes through raft; `wait=true` registers a watcher with the store and
//! answers when an applied write fires it ([`Waiters`]).

use crate::api::Api;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use detcd_core::proto::detcdpb::internal_request::Request as Internal;
use detcd_core::proto::detcdpb::V2Request;
use detcd_core::state::Applied;
use detcd_core::v2store::{code, Event, V2Error, WatchStart};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Where keys live in the API's paths.
const KEYS_PREFIX: &str = "/v2/keys";

/// Waiting reads registered on one member at most: beyond it, a wait is refused (etcd has no
/// limit; each costs a store watcher and a channel here).
pub const MAX_WAITERS: usize = 10_000;

/// Events buffered for one stream watcher before it is dropped (etcd's channel of 100).
const STREAM_BUFFER: usize = 100;

/// Where the tokens of `/new` live (discovery.etcd.io's registry directory).
pub const REGISTRY_DIR: &str = "/_etcd/registry";

/// The channels of this member's waiting reads, by store watcher ID. A watcher is added
/// while the store's lock is held ([`register`]), so an apply cannot fire it before its
/// channel is here.
#[derive(Default)]
pub struct Waiters(Mutex<HashMap<u64, mpsc::Sender<Event>>>);

impl Waiters {
    /// Hands fired events to their waiters; returns the IDs whose waiter is gone or full
    /// (the caller cancels those watchers in the store).
    pub fn fire(&self, fired: Vec<(u64, Event)>) -> Vec<u64> {
        let mut map = self.0.lock().unwrap();
        let mut dead = Vec::new();
        for (id, e) in fired {
            let Some(tx) = map.get(&id) else {
                continue;
            };
            if tx.try_send(e).is_err() {
                map.remove(&id);
                dead.push(id);
            }
        }
        dead
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Removes a waiter from the store and the map when its response ends or its client goes.
struct WaitGuard {
    api: Api,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let shared = &self.api.node.shared;
        shared.v2_waiters.0.lock().unwrap().remove(&self.id);
        shared.v2.write().unwrap().cancel_watch(self.id);
    }
}

/// The v2 routes: `/v2/keys` and below, and `/new`.
pub fn routes(api: &Api) -> Router {
    Router::new()
        .route(KEYS_PREFIX, any(keys))
        .route(&format!("{KEYS_PREFIX}/"), any(keys))
        .route(&format!("{KEYS_PREFIX}/{{*key}}"), any(keys))
        .route("/new", get(new_token))
        .with_state(api.clone())
}

/// Unix ms now, the clock TTLs count from (the member's own, as etcd's v2http uses).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Go's `r.Form`: the form body's values (PUT, POST, PATCH with a form content type)
/// ahead of the query's.
fn form(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let form_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            // Go's mime.ParseMediaType: the media type is case-insensitive.
            t.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if form_body && matches!(*method, Method::PUT | Method::POST | Method::PATCH) {
        out.extend(form_urlencoded::parse(body).into_owned());
    }
    if let Some(q) = uri.query() {
        out.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    out
}

/// Keys longer than this many bytes are refused (etcd has no limit; every member creates a
/// row per missing parent directory, so a key's cost grows with its length times its depth).
pub const MAX_KEY_BYTES: usize = 8 * 1024;
/// Keys deeper than this many segments are refused (see [`MAX_KEY_BYTES`]).
pub const MAX_KEY_DEPTH: usize = 64;

/// detcd's bound on a key's length and depth (error 209, Invalid field).
fn check_key(key: &str) -> Result<(), V2Error> {
    let depth = key.split('/').filter(|s| !s.is_empty()).count();
    if key.len() > MAX_KEY_BYTES || depth > MAX_KEY_DEPTH {
        return Err(bad(
            code::INVALID_FIELD,
            &format!(
                "key too long: {} bytes in {depth} segments (detcd's limit: {MAX_KEY_BYTES} bytes, {MAX_KEY_DEPTH} segments)",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// A parsed keys request (etcd's `parseKeyRequest` result).
#[derive(Debug, Default)]
struct KeyRequest {
    req: V2Request,
    wait: bool,
    wait_index: u64,
    quorum: bool,
    stream: bool,
    no_value: bool,
}

fn bad(code: u32, cause: &str) -> V2Error {
    V2Error::new(code, cause, 0)
}

/// etcd's `parseKeyRequest`: every field with etcd's parse rules, errors and causes.
fn parse(
    method: &Method,
    key: &str,
    form: &[(String, String)],
    now: u64,
) -> Result<KeyRequest, V2Error> {
    let first = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let uint = |k: &str, cause: &str, code: u32| -> Result<u64, V2Error> {
        match first(k) {
            None => Ok(0),
            Some(v) => v.parse::<u64>().map_err(|_| bad(code, cause)),
        }
    };
    let boolean = |k: &str, cause: &str| -> Result<Option<bool>, V2Error> {
        match first(k) {
            None => Ok(None),
            Some(v) => go_bool(v)
                .map(Some)
                .ok_or_else(|| bad(code::INVALID_FIELD, cause)),
        }
    };
    let prev_index = uint(
        "prevIndex",
        r#"invalid value for "prevIndex""#,
        code::INDEX_NAN,
    )?;
    let wait_index = uint(
        "waitIndex",
        r#"invalid value for "waitIndex""#,
        code::INDEX_NAN,
    )?;
    let recursive = boolean("recursive", r#"invalid value for "recursive""#)?.unwrap_or(false);
    let sorted = boolean("sorted", r#"invalid value for "sorted""#)?.unwrap_or(false);
    let wait = boolean("wait", r#"invalid value for "wait""#)?.unwrap_or(false);
    let dir = boolean("dir", r#"invalid value for "dir""#)?.unwrap_or(false);
    let quorum = boolean("quorum", r#"invalid value for "quorum""#)?.unwrap_or(false);
    let stream = boolean("stream", r#"invalid value for "stream""#)?.unwrap_or(false);
    if wait && *method != Method::GET {
        return Err(bad(
            code::INVALID_FIELD,
            r#""wait" can only be used with GET requests"#,
        ));
    }
    let prev_value = first("prevValue");
    if prev_value == Some("") {
        return Err(bad(
            code::PREV_VALUE_REQUIRED,
            r#""prevValue" cannot be empty"#,
        ));
    }
    let no_value = boolean(
        "noValueOnSuccess",
        r#"invalid value for "noValueOnSuccess""#,
    )?
    .unwrap_or(false);
    let ttl = match first("ttl") {
        Some(v) if !v.is_empty() => Some(
            v.parse::<u64>()
                .map_err(|_| bad(code::TTL_NAN, r#"invalid value for "ttl""#))?,
        ),
        _ => None,
    };
    let prev_exist = boolean("prevExist", "invalid value for prevExist")?;
    let refresh = boolean("refresh", "invalid value for refresh")?;
    if refresh == Some(true) {
        if first("value").is_some_and(|v| !v.is_empty()) {
            return Err(bad(
                code::REFRESH_VALUE,
                "A value was provided on a refresh",
            ));
        }
        if ttl.is_none() {
            return Err(bad(code::REFRESH_TTL_REQUIRED, "No TTL value set"));
        }
    }
    let expiration_ms = ttl.map_or(0, |t| now.saturating_add(t.saturating_mul(1000)));
    Ok(KeyRequest {
        req: V2Request {
            method: method.as_str().to_string(),
            path: key.to_string(),
            value: first("value").unwrap_or("").to_string(),
            dir,
            prev_value: prev_value.unwrap_or("").to_string(),
            prev_index,
            prev_exist,
            expiration_ms,
            refresh: refresh.unwrap_or(false),
            recursive,
            sorted,
            time_ms: now,
        },
        wait,
        wait_index,
        quorum,
        stream,
        no_value,
    })
}

/// Go's strconv.ParseBool.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// etcd's `v2error.Error.WriteTo`.
fn error_response(api: &Api, e: &V2Error) -> Response {
    let mut r = (
        StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        format!("{}\n", e.to_json()),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-etcd-index", e.index.into());
    cluster_header(api, h);
    r
}

fn cluster_header(api: &Api, h: &mut HeaderMap) {
    let id = detcd_core::ids::format_id(api.node.shared.cluster_id);
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-etcd-cluster-id", v);
    }
}

/// Headers of a successful answer (etcd's writeKeyEvent / handleKeyWatch).
fn event_headers(api: &Api, etcd_index: u64, h: &mut HeaderMap) {
    let status = api.node.shared.status();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-etcd-index", etcd_index.into());
    h.insert("x-raft-index", status.applied.into());
    h.insert("x-raft-term", status.term.into());
    cluster_header(api, h);
}

fn event_response(api: &Api, e: &Event, no_value: bool) -> Response {
    let status = if e.is_created() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (status, format!("{}\n", e.to_json(no_value))).into_response();
    event_headers(api, e.etcd_index, r.headers_mut());
    r
}

/// A request raft could not carry out (no leader, timeout): etcd answers 500 with code 300.
fn raft_error(api: &Api, e: impl std::fmt::Display) -> Response {
    error_response(api, &V2Error::new(code::RAFT_INTERNAL, e.to_string(), 0))
}

async fn keys(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !api.enable_v2 {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    if !matches!(
        method,
        Method::HEAD | Method::GET | Method::PUT | Method::POST | Method::DELETE
    ) {
        let mut r = (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response();
        r.headers_mut().insert(
            "allow",
            HeaderValue::from_static("HEAD,GET,PUT,POST,DELETE"),
        );
        return r;
    }
    // Go serves the decoded path (r.URL.Path): `a%20b` is the key "a b".
    let key = percent_encoding::percent_decode_str(&uri.path()[KEYS_PREFIX.len()..])
        .decode_utf8_lossy()
        .into_owned();
    if let Err(e) = check_key(&key) {
        return error_response(&api, &e);
    }
    let form = form(&method, &uri, &headers, &body);
    let now = now_ms();
    let kr = match parse(&method, &key, &form, now) {
        Ok(kr) => kr,
        Err(e) => return error_response(&api, &e),
    };
    match method {
        Method::GET | Method::HEAD if kr.wait => wait(api, kr).await,
        Method::GET | Method::HEAD if !kr.quorum => {
            let got = api
                .node
                .shared
                .v2
                .read()
                .unwrap()
                .get(&kr.req.path, kr.req.recursive, now);
            match got {
                Ok(e) => event_response(&api, &e, false),
                Err(e) => error_response(&api, &e),
            }
        }
        _ => {
            let mut req = kr.req;
            if req.method == "GET" || req.method == "HEAD" {
                req.method = "QGET".into();
            }
            propose(&api, req, kr.no_value).await
        }
    }
}

/// Proposes a v2 request and answers with what applying it gave.
async fn propose(api: &Api, req: V2Request, no_value: bool) -> Response {
    match api
        .node
        .propose(Internal::V2(req), api.request_timeout)
        .await
    {
        Ok(Applied::V2(answer)) => match *answer {
            Ok(e) => event_response(api, &e, no_value),
            Err(e) => error_response(api, &e),
        },
        Ok(other) => raft_error(api, format!("unexpected apply result {other:?}")),
        Err(e) => raft_error(api, e),
    }
}

/// `wait=true`: the first event at or after `waitIndex` under the key; the headers go out
/// at once, the event when it comes (with `stream=true`, every event until the client
/// leaves).
async fn wait(api: Api, kr: KeyRequest) -> Response {
    let shared = api.node.shared.clone();
    let (tx, mut rx) = mpsc::channel(if kr.stream { STREAM_BUFFER } else { 1 });
    let (start, id) = {
        let mut store = shared.v2.write().unwrap();
        let index = store.index();
        if shared.v2_waiters.count() >= MAX_WAITERS {
            let e = V2Error::new(
                code::RAFT_INTERNAL,
                format!("too many waiting requests on this member (limit {MAX_WAITERS})"),
                index,
            );
            drop(store);
            return error_response(&api, &e);
        }
        match store.watch(&kr.req.path, kr.req.recursive, kr.stream, kr.wait_index) {
            Err(e) => {
                drop(store);
                return error_response(&api, &e);
            }
            Ok(WatchStart::Ready(e)) => {
                let index = e.etcd_index;
                let _ = tx.try_send(*e);
                (index, None)
            }
            Ok(WatchStart::Waiting { id, index }) => {
                shared.v2_waiters.0.lock().unwrap().insert(id, tx);
                (index, Some(id))
            }
        }
    };
    let guard = id.map(|id| WaitGuard {
        api: api.clone(),
        id,
    });
    let stream = kr.stream;
    let body = async_stream::stream! {
        let _guard = guard;
        while let Some(e) = rx.recv().await {
            yield Ok::<_, std::convert::Infallible>(Bytes::from(format!("{}\n", e.to_json(false))));
            if !stream {
                break;
            }
        }
    };
    let mut r = Response::new(Body::from_stream(body));
    event_headers(&api, start, r.headers_mut());
    r
}

/// discovery.etcd.io's `/new?size=N`: a fresh token directory with `_config/size=N`,
/// answered with its discovery URL (this member's v2 keys path of it). Size defaults to 3;
/// anything but a positive integer is 400.
async fn new_token(State(api): State<Api>, uri: Uri, headers: HeaderMap) -> Response {
    if !api.enable_v2 {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let form: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let size = match form
        .iter()
        .find(|(k, _)| k == "size")
        .map(|(_, v)| v.as_str())
    {
        None | Some("") => 3,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("invalid size {s:?}: a positive integer is required\n"),
                )
                    .into_response()
            }
        },
    };
    let token = {
        use rand::RngCore as _;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let now = now_ms();
    let req = V2Request {
        method: "PUT".into(),
        path: format!("{REGISTRY_DIR}/{token}/_config/size"),
        value: size.to_string(),
        prev_exist: Some(false),
        time_ms: now,
        ..Default::default()
    };
    match api
        .node
        .propose(Internal::V2(req), api.request_timeout)
        .await
    {
        Ok(Applied::V2(answer)) => {
            if let Err(e) = *answer {
                return error_response(&api, &e);
            }
        }
        Ok(other) => return raft_error(&api, format!("unexpected apply result {other:?}")),
        Err(e) => return raft_error(&api, e),
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost:2379");
    let scheme = if api.client_tls { "https" } else { "http" };
    let url = format!("{scheme}://{host}{KEYS_PREFIX}{REGISTRY_DIR}/{token}");
    tracing::info!(%url, size, "created a discovery token");
    (StatusCode::OK, url).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_q(method: Method, q: &str) -> Result<KeyRequest, V2Error> {
        let form: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        parse(&method, "/k", &form, 1_000)
    }

    #[test]
    fn requests_parse_as_etcds() {
        let r = parse_q(Method::PUT, "value=v&prevExist=false&ttl=5").unwrap();
        assert_eq!(r.req.prev_exist, Some(false));
        assert_eq!(r.req.expiration_ms, 6_000);
        let r = parse_q(Method::GET, "wait=true&waitIndex=7&recursive=true").unwrap();
        assert!(r.wait && r.req.recursive);
        assert_eq!(r.wait_index, 7);
        let e = parse_q(Method::GET, "waitIndex=x").unwrap_err();
        assert_eq!(
            (e.code, e.cause.as_str()),
            (203, r#"invalid value for "waitIndex""#)
        );
        assert_eq!(parse_q(Method::PUT, "wait=true").unwrap_err().code, 209);
        assert_eq!(parse_q(Method::PUT, "ttl=abc").unwrap_err().code, 202);
        assert_eq!(parse_q(Method::PUT, "prevValue=").unwrap_err().code, 201);
        assert_eq!(parse_q(Method::PUT, "refresh=true").unwrap_err().code, 212);
        assert_eq!(
            parse_q(Method::PUT, "refresh=true&ttl=3&value=x")
                .unwrap_err()
                .code,
            211
        );
        assert_eq!(
            parse_q(Method::PUT, "prevExist=maybe").unwrap_err().cause,
            "invalid value for prevExist"
        );
    }

    #[test]
    fn form_bodies_come_before_queries() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let uri: Uri = "/v2/keys/a?value=query".parse().unwrap();
        let f = form(&Method::PUT, &uri, &h, b"value=body");
        assert_eq!(f[0], ("value".to_string(), "body".to_string()));
        let f = form(&Method::DELETE, &uri, &h, b"value=body");
        assert_eq!(f.len(), 1);
        h.insert(
            "content-type",
            HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=utf-8"),
        );
        assert_eq!(form(&Method::PUT, &uri, &h, b"value=body").len(), 2);
    }

    proptest::proptest! {
        /// The request parser takes whatever a client sends (query, form body, content type,
        /// key path) without panicking; what it accepts keeps its invariants.
        #[test]
        fn any_request_parses_or_is_refused(
            method in proptest::sample::select(vec![Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::HEAD]),
            query in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            path in "[a-z%/._0-9]{0,40}",
            form_type in proptest::bool::ANY,
        ) {
            let mut h = HeaderMap::new();
            if form_type {
                h.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
            }
            let q: String = query.iter().map(|b| (b % 95 + 32) as char).collect();
            let uri = format!("/v2/keys/{path}?{}", q.replace(' ', "%20").replace('#', "%23"));
            let Ok(uri) = uri.parse::<Uri>() else { return Ok(()); };
            let f = form(&method, &uri, &h, &body);
            let key = percent_encoding::percent_decode_str(&uri.path()[KEYS_PREFIX.len()..])
                .decode_utf8_lossy()
                .into_owned();
            if check_key(&key).is_err() {
                return Ok(());
            }
            if let Ok(kr) = parse(&method, &key, &f, 1_000) {
                proptest::prop_assert!(kr.req.expiration_ms == 0 || kr.req.expiration_ms >= 1_000);
                proptest::prop_assert!(!kr.wait || method == Method::GET || method == Method::HEAD);
            }
        }
    }

    #[test]
    fn keys_are_bounded() {
        assert!(check_key("/a/b").is_ok());
        assert_eq!(check_key(&"/a".repeat(65)).unwrap_err().code, 209);
        assert_eq!(
            check_key(&format!("/{}", "x".repeat(9000)))
                .unwrap_err()
                .code,
            209
        );
    }
}
