//! etcd's v2 members API on the client URLs (`/v2/members`, behind `--enable-v2`), which
//! etcdctl's v2 `member list/add/remove/update` and `cluster-health` use. Copied from etcd
//! 3.4's `etcdserver/api/v2http/client.go` (membersHandler): the same paths, methods,
//! statuses, JSON (`{"members":[{"id","name","peerURLs","clientURLs"}]}`, one line) and
//! error bodies (`{"message": ...}`). Changes go through the v3 Cluster service's code, so
//! they get its checks (`--strict-reconfig-check` and the rest).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde::Serialize;
use tonic::Request;

use crate::api::Api;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use detcd_core::ids::format_id;
use detcd_core::proto::detcdpb::MemberRecord;
use detcd_core::proto::etcdserverpb as pb;

const MEMBERS_PREFIX: &str = "/v2/members";

/// The v2 members routes.
pub fn routes(api: &Api) -> Router {
    Router::new()
        .route(MEMBERS_PREFIX, any(members))
        .route(&format!("{MEMBERS_PREFIX}/"), any(members))
        .route(&format!("{MEMBERS_PREFIX}/{{*rest}}"), any(members))
        .with_state(api.clone())
}

/// etcd's httptypes.Member.
#[derive(Serialize)]
struct Member {
    id: String,
    name: String,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
}

impl From<&MemberRecord> for Member {
    fn from(m: &MemberRecord) -> Member {
        Member {
            id: format_id(m.id),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: m.client_urls.clone(),
        }
    }
}

impl From<&pb::Member> for Member {
    fn from(m: &pb::Member) -> Member {
        Member {
            id: format_id(m.id),
            name: m.name.clone(),
            peer_urls: m.peer_ur_ls.clone(),
            client_urls: m.client_ur_ls.clone(),
        }
    }
}

/// etcd's httptypes.MemberCollection as JSON.
#[derive(Serialize)]
struct Collection {
    members: Vec<Member>,
}

/// `{"peerURLs": [...]}`, the body of POST and PUT.
#[derive(serde::Deserialize)]
struct PeerUrls {
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
}

/// etcd's httptypes.HTTPError: `{"message": ...}` with a JSON content type.
fn error(code: StatusCode, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message }).to_string(),
    )
        .into_response()
}

/// Go's `http.Error(w, "Method Not Allowed", 405)`.
fn method_not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n").into_response()
}

/// A JSON answer as Go's json.Encoder writes it (one line).
fn json<T: Serialize>(code: StatusCode, value: &T) -> Response {
    let mut body = serde_json::to_string(value).unwrap_or_default();
    body.push('\n');
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// etcd's writeError for what the v3 change returned: the membership errors etcd's v2
/// handler names get its statuses and texts; anything else is 500 "Internal Server Error".
fn change_error(s: &tonic::Status, id: u64) -> Response {
    match s.message() {
        "etcdserver: member ID already exist" => {
            error(StatusCode::CONFLICT, "membership: ID exists")
        }
        "etcdserver: Peer URLs already exists" => {
            error(StatusCode::CONFLICT, "membership: peerURL exists")
        }
        "etcdserver: member not found" => error(
            StatusCode::NOT_FOUND,
            &format!("No such member: {}", format_id(id)),
        ),
        other => {
            tracing::warn!(error = other, "v2 members request failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// etcd's unmarshalRequest: the body must be `application/json` naming valid peer URLs
/// (etcd's types.NewURLs rules and messages).
fn peer_urls(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, Reject> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ctype = match ctype.find(';') {
        Some(at) => ctype[..at].trim().to_ascii_lowercase(),
        None => ctype.to_string(),
    };
    if ctype != "application/json" {
        return Err(Reject::Json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Bad Content-Type {ctype}, accept application/json"),
        ));
    }
    let bad = |e: String| Reject::Json(StatusCode::BAD_REQUEST, e);
    let req: PeerUrls = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if req.peer_urls.is_empty() {
        return Err(bad(detcd_core::config::UrlError::Empty.to_string()));
    }
    for u in &req.peer_urls {
        detcd_core::config::Url::parse(u).map_err(|e| bad(e.to_string()))?;
    }
    Ok(req.peer_urls)
}

/// etcd's getID: the path's member ID in hex; an empty one is 405, a malformed one 404.
fn path_id(rest: &str) -> Result<u64, Reject> {
    if rest.is_empty() {
        return Err(Reject::MethodNotAllowed);
    }
    u64::from_str_radix(rest, 16)
        .map_err(|_| Reject::Json(StatusCode::NOT_FOUND, format!("No such member: {rest}")))
}

/// Why a request is answered before it reaches the Cluster service.
enum Reject {
    /// An httptypes.HTTPError.
    Json(StatusCode, String),
    /// Go's plain-text 405.
    MethodNotAllowed,
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        match self {
            Reject::Json(code, message) => error(code, &message),
            Reject::MethodNotAllowed => method_not_allowed(),
        }
    }
}

async fn members(
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
        Method::GET | Method::POST | Method::DELETE | Method::PUT
    ) {
        let mut r = method_not_allowed();
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET,POST,DELETE,PUT"));
        return r;
    }
    let rest = uri
        .path()
        .strip_prefix(MEMBERS_PREFIX)
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let mut resp = answer(&api, method, &rest, &headers, &body).await;
    let cluster = format_id(api.node.shared.cluster_id);
    if let Ok(v) = HeaderValue::from_str(&cluster) {
        resp.headers_mut().insert("x-etcd-cluster-id", v);
    }
    resp
}

async fn answer(
    api: &Api,
    method: Method,
    rest: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // etcd's h.cluster.Members(): this member's view, learners included, in ID order.
    let list = || -> Vec<Member> {
        let members = api.node.shared.members.read().unwrap();
        members.members().map(Member::from).collect()
    };
    match method {
        Method::GET => match rest {
            "" => json(StatusCode::OK, &Collection { members: list() }),
            "leader" => {
                let leader = format_id(api.node.shared.status().leader);
                match list().into_iter().find(|m| m.id == leader) {
                    Some(m) => json(StatusCode::OK, &m),
                    None => error(StatusCode::SERVICE_UNAVAILABLE, "During election"),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "Not found"),
        },
        Method::POST => {
            let urls = match peer_urls(headers, body) {
                Ok(u) => u,
                Err(r) => return r.into_response(),
            };
            let req = pb::MemberAddRequest {
                peer_ur_ls: urls,
                is_learner: false,
            };
            match Cluster::member_add(api, Request::new(req)).await {
                Ok(r) => match r.into_inner().member {
                    Some(m) => json(StatusCode::CREATED, &Member::from(&m)),
                    None => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
                },
                Err(s) => change_error(&s, 0),
            }
        }
        Method::DELETE => {
            let id = match path_id(rest) {
                Ok(id) => id,
                Err(r) => return r.into_response(),
            };
            let was_removed = || api.node.shared.members.read().unwrap().is_removed(id);
            match Cluster::member_remove(api, Request::new(pb::MemberRemoveRequest { id })).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                // etcd's v2 handler tells ErrIDRemoved from ErrIDNotFound (v3 does not).
                Err(s) if s.message() == "etcdserver: member not found" && was_removed() => error(
                    StatusCode::GONE,
                    &format!("Member permanently removed: {}", format_id(id)),
                ),
                Err(s) => change_error(&s, id),
            }
        }
        _ => {
            let id = match path_id(rest) {
                Ok(id) => id,
                Err(r) => return r.into_response(),
            };
            let urls = match peer_urls(headers, body) {
                Ok(u) => u,
                Err(r) => return r.into_response(),
            };
            let req = pb::MemberUpdateRequest {
                id,
                peer_ur_ls: urls,
            };
            let was_removed = || api.node.shared.members.read().unwrap().is_removed(id);
            match Cluster::member_update(api, Request::new(req)).await {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                // etcd's PUT names only ErrIDNotFound; ErrIDRemoved falls to its 500.
                Err(s) if s.message() == "etcdserver: member not found" && was_removed() => {
                    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                }
                Err(s) => change_error(&s, id),
            }
        }
    }
}
