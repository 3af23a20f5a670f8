//! etcd's HTTP endpoints on the client port: `/health` and `/version`, with etcd's JSON shapes.

use crate::api::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::node::Shared;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// Adds /health and /version to the gRPC router.
pub fn routes(shared: Arc<Shared>, grpc: Router) -> Router {
    let health = {
        let shared = shared.clone();
        move || {
            let healthy = shared.status().leader != 0;
            async move {
                let (code, body) = if healthy {
                    (StatusCode::OK, r#"{"health":"true"}"#)
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
                };
                (code, [("content-type", "application/json")], body)
            }
        }
    };
    let version = || async {
        let body =
            serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION })
                .to_string();
        (StatusCode::OK, [("content-type", "application/json")], body)
    };
    grpc.route("/health", get(health))
        .route("/version", get(version))
}
