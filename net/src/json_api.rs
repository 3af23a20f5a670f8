//! etcd's gRPC gateway: the v3 API as HTTP/JSON on the client port (`/v3/...`, and the
//! `/v3beta/...` prefix etcd 3.4 still answers), for curl users and clients that speak only
//! JSON.
//!
//! As etcd's (grpc-gateway v1 with its default JSONPb{OrigName: true}): every call is a POST
//! of the request message as JSON; the answer is the response message as JSON with etcd's
//! proto field names, 64-bit integers as strings, bytes as base64, enums by name, default
//! values left out (the serde impls are generated in core with pbjson). Errors carry
//! `{"error","message","code"}` with the gRPC code and the HTTP status grpc-gateway maps it
//! to. Streams (watch, lease keep-alive, election observe) take a stream of JSON request
//! objects in the body and answer one `{"result": ...}` line per response, or an
//! `{"error": {...}}` line. Calls go straight to the gRPC services' code.

use crate::api::Api;
use crate::concurrency::Concurrency;
use crate::lease::LeaseService;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;
use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::{Code, Status};

/// A request body larger than this is refused (etcd bounds requests by --max-request-bytes;
/// JSON and base64 make them larger than the gRPC form).
const MAX_JSON_BODY: usize = 8 * 1024 * 1024;

/// The gateway's routes under `/v3` and `/v3beta`.
pub fn routes(api: &Api) -> Router {
    let leases = LeaseService::new(api.clone());
    let conc = Concurrency::new(api.clone());
    let watch = api.watch_service();
    macro_rules! unary {
        ($svc:expr, $trait:ident :: $method:ident) => {{
            let svc = $svc.clone();
            post(move |body: Bytes| {
                let svc = svc.clone();
                async move {
                    unary(body, |req| async move {
                        $trait::$method(&svc, tonic::Request::new(req)).await
                    })
                    .await
                }
            })
        }};
    }
    let v3 = Router::new()
        .route("/kv/range", unary!(api, Kv::range))
        .route("/kv/put", unary!(api, Kv::put))
        .route("/kv/deleterange", unary!(api, Kv::delete_range))
        .route("/kv/txn", unary!(api, Kv::txn))
        .route("/kv/compaction", unary!(api, Kv::compact))
        .route("/lease/grant", unary!(leases, Lease::lease_grant))
        .route("/lease/revoke", unary!(leases, Lease::lease_revoke))
        .route("/kv/lease/revoke", unary!(leases, Lease::lease_revoke))
        .route(
            "/lease/timetolive",
            unary!(leases, Lease::lease_time_to_live),
        )
        .route(
            "/kv/lease/timetolive",
            unary!(leases, Lease::lease_time_to_live),
        )
        .route("/lease/leases", unary!(leases, Lease::lease_leases))
        .route("/kv/lease/leases", unary!(leases, Lease::lease_leases))
        .route("/cluster/member/add", unary!(api, Cluster::member_add))
        .route(
            "/cluster/member/remove",
            unary!(api, Cluster::member_remove),
        )
        .route(
            "/cluster/member/update",
            unary!(api, Cluster::member_update),
        )
        .route("/cluster/member/list", unary!(api, Cluster::member_list))
        .route(
            "/cluster/member/promote",
            unary!(api, Cluster::member_promote),
        )
        .route("/maintenance/alarm", unary!(api, Maintenance::alarm))
        .route("/maintenance/status", unary!(api, Maintenance::status))
        .route(
            "/maintenance/defragment",
            unary!(api, Maintenance::defragment),
        )
        // etcd 3.4's gateway registers Hash and HashKV on the same path; grpc-gateway 1.9
        // takes the first, so `/v3/maintenance/hash` is Hash. etcd 3.5 moved HashKV to
        // `/v3/maintenance/hashkv`.
        .route("/maintenance/hash", unary!(api, Maintenance::hash))
        .route("/maintenance/hashkv", unary!(api, Maintenance::hash_kv))
        .route(
            "/maintenance/transfer-leadership",
            unary!(api, Maintenance::move_leader),
        )
        .route("/lock/lock", unary!(conc, Lock::lock))
        .route("/lock/unlock", unary!(conc, Lock::unlock))
        .route("/election/campaign", unary!(conc, Election::campaign))
        .route("/election/proclaim", unary!(conc, Election::proclaim))
        .route("/election/leader", unary!(conc, Election::leader))
        .route("/election/resign", unary!(conc, Election::resign))
        .route(
            "/watch",
            post(move |body: Body| {
                let watch = watch.clone();
                async move {
                    match watch.serve(json_requests(body), false) {
                        Ok(out) => stream_response(out),
                        Err(s) => error_response(&s),
                    }
                }
            }),
        )
        .route(
            "/lease/keepalive",
            post({
                let leases = leases.clone();
                move |body: Body| {
                    let leases = leases.clone();
                    async move {
                        match leases.keep_alive_stream(json_requests(body), false) {
                            Ok(out) => stream_response(out),
                            Err(s) => error_response(&s),
                        }
                    }
                }
            }),
        )
        .route(
            "/maintenance/snapshot",
            post({
                let api = api.clone();
                move |body: Bytes| {
                    let api = api.clone();
                    async move {
                        let req = match parse(&body) {
                            Ok(r) => r,
                            Err(s) => return error_response(&s),
                        };
                        match Maintenance::snapshot(&api, tonic::Request::new(req)).await {
                            Ok(out) => stream_response(out.into_inner()),
                            Err(s) => error_response(&s),
                        }
                    }
                }
            }),
        )
        .route(
            "/election/observe",
            post(move |body: Bytes| {
                let conc = conc.clone();
                async move {
                    let req = match parse(&body) {
                        Ok(r) => r,
                        Err(s) => return error_response(&s),
                    };
                    match Election::observe(&conc, tonic::Request::new(req)).await {
                        Ok(out) => stream_response(out.into_inner()),
                        Err(s) => error_response(&s),
                    }
                }
            }),
        );
    let slots = Arc::new(Semaphore::new(
        (api.http2.max_concurrent_streams as usize).min(Semaphore::MAX_PERMITS),
    ));
    let v3 = v3
        .layer(axum::middleware::from_fn_with_state(slots, limit_calls))
        // grpc-gateway's answer to a path it has no call for (not the gRPC router's).
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found\n") });
    Router::new().nest("/v3", v3.clone()).nest("/v3beta", v3)
}

/// etcd's gateway is a gRPC client of its own member over one connection, so at most
/// `--max-concurrent-streams` gateway calls (unary or streaming) run at once, and further
/// calls wait until one ends, as grpc-go holds a new stream until the server's limit lets it
/// open (etcd 3.4 e2e TestV3Curl_MaxStreams_*). A call holds its slot until its response
/// body is done or dropped.
async fn limit_calls(
    axum::extract::State(slots): axum::extract::State<Arc<Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(slot) = slots.acquire_owned().await else {
        return error_response(&Status::unavailable("gateway closed"));
    };
    let (parts, body) = next.run(req).await.into_parts();
    if http_body::Body::size_hint(&body).exact().is_some() {
        // A unary answer, complete already (and sent with its Content-Length): the call is over.
        return Response::from_parts(parts, body);
    }
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// The request message from a JSON body; an empty body is the empty message (as
/// grpc-gateway decodes it). A malformed body is InvalidArgument.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if body.len() > MAX_JSON_BODY {
        return Err(Status::invalid_argument("request body too large"));
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

async fn unary<Req, Resp, F, Fut>(body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req = match parse(&body) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match call(req).await {
        Ok(resp) => match serde_json::to_vec(resp.get_ref()) {
            Ok(json) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            Err(e) => error_response(&Status::internal(e.to_string())),
        },
        Err(s) => error_response(&s),
    }
}

/// grpc-gateway's HTTP status for a gRPC code (runtime/errors.go HTTPStatusFromCode).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body: `{"error": <message>, "message": <message>, "code": <gRPC code>}`.
/// In that key order: clients (etcd's own e2e tests) compare the text.
fn error_response(s: &Status) -> Response {
    let message = serde_json::Value::from(s.message()).to_string();
    let body = format!(
        "{{\"error\":{message},\"message\":{message},\"code\":{}}}",
        s.code() as i32
    );
    (
        http_status(s.code()),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A stream's line for one response, `{"result": ...}`, or for the error that ended it,
/// `{"error": {"grpc_code", "http_code", "message", "http_status"}}`.
fn stream_line<T: Serialize>(item: Result<T, Status>) -> Bytes {
    let mut line = match item {
        Ok(resp) => match serde_json::to_string(&resp) {
            Ok(json) => format!("{{\"result\":{json}}}"),
            Err(e) => return stream_line::<T>(Err(Status::internal(e.to_string()))),
        },
        Err(s) => {
            let http = http_status(s.code());
            serde_json::json!({
                "error": {
                    "grpc_code": s.code() as i32,
                    "http_code": http.as_u16(),
                    "message": s.message(),
                    "http_status": http.canonical_reason().unwrap_or(""),
                }
            })
            .to_string()
        }
    };
    line.push('\n');
    Bytes::from(line)
}

fn stream_response<T: Serialize + Send + 'static>(
    out: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = out.map(|item| Ok::<_, std::convert::Infallible>(stream_line(item)));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// The JSON objects of a request body, parsed as they arrive (a client may keep sending
/// requests on the stream). A malformed one ends the stream with InvalidArgument.
fn json_requests<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static {
    let mut chunks = body.into_data_stream();
    Box::pin(async_stream::stream! {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // Every complete object in the buffer first.
            let mut consumed = 0;
            let mut failed = None;
            {
                let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<T>();
                loop {
                    match it.next() {
                        Some(Ok(v)) => {
                            consumed = it.byte_offset();
                            yield Ok(v);
                        }
                        Some(Err(e)) if e.is_eof() => break,
                        Some(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        None => {
                            consumed = buf.len();
                            break;
                        }
                    }
                }
            }
            if let Some(e) = failed {
                yield Err(Status::invalid_argument(e.to_string()));
                return;
            }
            buf.drain(..consumed);
            if buf.len() > MAX_JSON_BODY {
                yield Err(Status::invalid_argument("request too large"));
                return;
            }
            match chunks.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                _ => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use detcd_core::proto::etcdserverpb as pb;

    /// The JSON etcd 3.4.23's gateway sends for these messages (captured with curl here).
    #[test]
    fn messages_read_and_write_as_etcds_gateway() {
        let resp = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 5619718814312858354,
                member_id: 17297368094614328942,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![detcd_core::proto::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&resp).unwrap(),
            r#"{"header":{"cluster_id":"5619718814312858354","member_id":"17297368094614328942","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let grant = pb::LeaseGrantResponse {
            header: None,
            id: 1616407629078959370,
            ttl: 30,
            error: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&grant).unwrap(),
            r#"{"ID":"1616407629078959370","TTL":"30"}"#
        );
        // Requests: proto names or lowerCamel, numbers as strings or not, enums by name.
        let txn: pb::TxnRequest = serde_json::from_str(
            r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            txn.compare[0].target,
            pb::compare::CompareTarget::Create as i32
        );
        assert_eq!(
            txn.compare[0].target_union,
            Some(pb::compare::TargetUnion::CreateRevision(2))
        );
        let range: pb::RangeRequest =
            serde_json::from_str(r#"{"key":"Zm9v","revision":100}"#).unwrap();
        assert_eq!((range.key.as_slice(), range.revision), (&b"foo"[..], 100));
        assert!(parse::<pb::RangeRequest>(b"garbage").is_err());
        assert_eq!(
            parse::<pb::RangeRequest>(b"").unwrap(),
            pb::RangeRequest::default()
        );
    }

    /// With `--max-concurrent-streams 1`, an open stream holds the one slot: a unary call
    /// waits until the stream's body is dropped; unary answers give their slot back at once.
    #[cfg(not(madsim))]
    #[tokio::test]
    async fn gateway_calls_beyond_the_stream_limit_wait_for_a_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let app = Router::new()
            .route(
                "/stream",
                post(|| async {
                    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
                }),
            )
            .route("/unary", post(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                slots.clone(),
                limit_calls,
            ));
        let call = |path: &'static str| {
            let mut app = app.clone();
            async move {
                let req = axum::extract::Request::post(path)
                    .body(Body::empty())
                    .unwrap();
                tower_service::Service::call(&mut app, req).await.unwrap()
            }
        };
        let unary = call("/unary").await;
        assert_eq!(
            unary
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(|v| v.as_bytes()),
            Some(&b"2"[..]),
            "a unary answer keeps its length"
        );
        assert_eq!(slots.available_permits(), 1);
        let stream = call("/stream").await;
        assert_eq!(slots.available_permits(), 0);
        let mut waiting = Box::pin(call("/unary"));
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(stream);
        assert_eq!(waiting.await.status(), StatusCode::OK);
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn streamed_requests_are_parsed_as_they_arrive() {
        let parts: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(
                b"{\"create_request\":{\"key\":\"Zm9v\"}} {\"cancel_req",
            )),
            Ok(Bytes::from_static(b"uest\":{\"watch_id\":\"3\"}}\n")),
            Ok(Bytes::from_static(b"{oops")),
        ];
        let body = Body::from_stream(futures::stream::iter(parts));
        let got: Vec<Result<pb::WatchRequest, Status>> = json_requests(body).collect().await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(
            &got[0],
            Ok(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(_))
            })
        ));
        assert!(matches!(
            &got[1],
            Ok(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CancelRequest(c)) }) if c.watch_id == 3
        ));
        assert_eq!(got[2].as_ref().unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(
            stream_line::<pb::WatchResponse>(Err(Status::unavailable("etcdserver: no leader"))),
            Bytes::from("{\"error\":{\"grpc_code\":14,\"http_code\":503,\"http_status\":\"Service Unavailable\",\"message\":\"etcdserver: no leader\"}}\n")
        );
    }
}
