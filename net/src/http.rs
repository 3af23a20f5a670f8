//! etcd's HTTP endpoints on the client port: `/health`, `/livez`, `/readyz`, `/version` and
//! `/metrics`; and the same minus `/version` on `--listen-metrics-urls` ([`metrics_routes`]).
//!
//! - `/health` is etcd 3.4.23's (etcdserver/api/etcdhttp/metrics.go): GET only (else 405 with
//!   `Allow: GET`); `{"health":"false"}` and 503 when an alarm not named in `?exclude=` is
//!   raised, when there is no leader, or when a linearizable read does not complete within a
//!   second (3.4 proposes a QGET; detcd asks raft for a ReadIndex); else `{"health":"true"}`.
//!   The bodies are 3.4's exactly, which etcd 3.4's e2e suite and its users match on; the
//!   reason (3.5's `reason` field) goes to the log, in 3.4's words. etcd 3.5's
//!   `?serializable=true` (no leader or quorum needed, a local read) is honoured too.
//! - `/livez` and `/readyz` are etcd 3.6's (server/etcdserver/api/etcdhttp/health.go): checks
//!   `serializable_read` (livez) and `data_corruption`, `serializable_read`,
//!   `linearizable_read`, `non_learner` (readyz); `ok` with 200, or 503 and every check's
//!   `[+]name ok` / `[-]name failed: why` line; `?verbose` lists them on success too;
//!   `?exclude=name` skips a check; `/livez/<check>` and `/readyz/<check>` run one.
//! - `/metrics`: [`crate::metrics`].

use crate::api::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::node::{NodeHandle, Shared};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use detcd_core::proto::etcdserverpb as pb;
use std::time::Duration;

/// etcd 3.4's /health waits this long for its QGET (etcdhttp/metrics.go).
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The alarms raised in the cluster, by etcd's names (`NOSPACE`, `CORRUPT`): what `/health`
/// and `/readyz`'s `data_corruption` check look at: the replicated alarm list's types
/// (`NOSPACE`, `CORRUPT`), one per raised alarm.
pub fn active_alarms(shared: &Shared) -> Vec<String> {
    use detcd_core::proto::etcdserverpb::AlarmType;
    shared
        .members
        .read()
        .unwrap()
        .alarms()
        .list(AlarmType::None)
        .iter()
        .map(|a| {
            AlarmType::try_from(a.alarm)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| a.alarm.to_string())
        })
        .collect()
}

/// Adds etcd's HTTP endpoints to the client port's router (the gRPC routes).
/// `request_timeout` bounds `/readyz`'s linearizable read (etcd 3.6's ReqTimeout).
pub fn routes(node: NodeHandle, request_timeout: Duration, grpc: Router) -> Router {
    let version = || async {
        let body =
            serde_json::json!({ "etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION })
                .to_string();
        (StatusCode::OK, [("content-type", "application/json")], body)
    };
    grpc.merge(metrics_routes(node, request_timeout))
        .route("/version", get(version))
}

/// What `--listen-metrics-urls` serves (etcd's serveMetrics: `/metrics` and the health
/// endpoints, nothing else).
pub fn metrics_routes(node: NodeHandle, request_timeout: Duration) -> Router {
    let health = {
        let node = node.clone();
        move |method: Method, uri: axum::http::Uri| {
            let node = node.clone();
            async move { health(&node, &method, uri.query().unwrap_or("")).await }
        }
    };
    let metrics = {
        let shared = node.shared.clone();
        move || {
            let shared = shared.clone();
            async move {
                let body = shared.metrics.render(&shared);
                (
                    StatusCode::OK,
                    [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                    body,
                )
            }
        }
    };
    let checks = move |kind: CheckKind| {
        let node = node.clone();
        move |method: Method, uri: axum::http::Uri| {
            let node = node.clone();
            async move {
                let only = uri
                    .path()
                    .strip_prefix(kind.root())
                    .and_then(|rest| rest.strip_prefix('/'))
                    .map(str::to_string);
                run_checks(
                    &node,
                    kind,
                    &method,
                    uri.query().unwrap_or(""),
                    only,
                    request_timeout,
                )
                .await
            }
        }
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", any(health))
        .route("/livez", any(checks(CheckKind::Livez)))
        .route("/livez/{check}", any(checks(CheckKind::Livez)))
        .route("/readyz", any(checks(CheckKind::Readyz)))
        .route("/readyz/{check}", any(checks(CheckKind::Readyz)))
}

/// Go's `http.Error`: the text and a newline, as plain text the client must not sniff.
fn go_error(code: StatusCode, text: &str) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

/// 405 for anything but GET, as etcd's handlers answer.
fn method_not_allowed() -> Response {
    let mut r = go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    r
}

/// The values of `name` in a query string (`a=1&a=2`), decoded; a bare `name` gives "".
fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A local read of one key of the store: etcd's `Range{KeysOnly, Limit: 1, Serializable}`.
fn serializable_read(shared: &Shared) -> Result<(), String> {
    let (mvcc, txn) = shared.read_view().map_err(|e| e.to_string())?;
    let req = pb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        limit: 1,
        keys_only: true,
        ..Default::default()
    };
    mvcc.range_in(&txn, &req)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The same read, linearizable: after a ReadIndex through the leader.
async fn linearizable_read(node: &NodeHandle, timeout: Duration) -> Result<(), String> {
    node.read_barrier(timeout)
        .await
        .map_err(|e| e.to_string())?;
    serializable_read(&node.shared)
}

/// `/health` (module docs).
async fn health(node: &NodeHandle, method: &Method, query: &str) -> Response {
    if method != Method::GET {
        tracing::warn!("/health error (status code 405)");
        return method_not_allowed();
    }
    let shared = &node.shared;
    let excluded = query_values(query, "exclude");
    let serializable = query_values(query, "serializable")
        .iter()
        .any(|v| v == "true");
    let failure = async {
        if let Some(alarm) = active_alarms(shared)
            .into_iter()
            .find(|a| !excluded.contains(a))
        {
            return Some(format!("/health error due to alarm {alarm}"));
        }
        if serializable {
            return serializable_read(shared)
                .err()
                .map(|e| format!("/health error; serializable read failed {e} (status code 503)"));
        }
        if shared.status().leader == 0 {
            return Some("/health error; no leader (status code 503)".to_string());
        }
        linearizable_read(node, HEALTH_READ_TIMEOUT)
            .await
            .err()
            .map(|e| format!("/health error; QGET failed {e} (status code 503)"))
    }
    .await;
    match failure {
        None => {
            shared.metrics.health_success.inc();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                r#"{"health":"true"}"#,
            )
                .into_response()
        }
        Some(why) => {
            shared.metrics.health_failures.inc();
            tracing::warn!("{why}");
            go_error(StatusCode::SERVICE_UNAVAILABLE, r#"{"health":"false"}"#)
        }
    }
}

/// Which of etcd 3.6's check registries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckKind {
    Livez,
    Readyz,
}

impl CheckKind {
    fn root(self) -> &'static str {
        match self {
            CheckKind::Livez => "/livez",
            CheckKind::Readyz => "/readyz",
        }
    }

    fn name(self) -> &'static str {
        &self.root()[1..]
    }

    /// The checks, in the order they are reported.
    fn checks(self) -> &'static [&'static str] {
        match self {
            CheckKind::Livez => &["serializable_read"],
            CheckKind::Readyz => &[
                "data_corruption",
                "serializable_read",
                "linearizable_read",
                "non_learner",
            ],
        }
    }
}

/// Runs one check: Ok, or why it failed (etcd 3.6's texts).
async fn check(node: &NodeHandle, name: &str, request_timeout: Duration) -> Result<(), String> {
    let shared = &node.shared;
    match name {
        "data_corruption" => match active_alarms(shared).iter().any(|a| a == "CORRUPT") {
            true => Err("alarm activated: CORRUPT".to_string()),
            false => Ok(()),
        },
        "serializable_read" => serializable_read(shared),
        "linearizable_read" => linearizable_read(node, request_timeout).await,
        "non_learner" => match shared.status().is_learner {
            true => Err("not supported for learner".to_string()),
            false => Ok(()),
        },
        _ => unreachable!("only registered checks run"),
    }
}

/// `/livez`, `/readyz` and their per-check paths (module docs). `only`: the check a sub path
/// names.
async fn run_checks(
    node: &NodeHandle,
    kind: CheckKind,
    method: &Method,
    query: &str,
    only: Option<String>,
    request_timeout: Duration,
) -> Response {
    let names: Vec<&str> = match &only {
        Some(name) => match kind.checks().iter().find(|c| **c == name.as_str()) {
            Some(c) => vec![*c],
            None => return go_error(StatusCode::NOT_FOUND, "404 page not found"),
        },
        None => {
            let excluded = query_values(query, "exclude");
            let missing: Vec<String> = excluded
                .iter()
                .filter(|e| !e.is_empty() && !kind.checks().contains(&e.as_str()))
                .map(|e| format!("{e:?}"))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    missing_health_checks = %missing.join(","),
                    "some health checks cannot be excluded"
                );
            }
            kind.checks()
                .iter()
                .copied()
                .filter(|c| !excluded.iter().any(|e| e == c))
                .collect()
        }
    };
    if method != Method::GET {
        tracing::warn!(path = kind.root(), "Health request error (status code 405)");
        return method_not_allowed();
    }
    let mut report = String::new();
    let mut ok = true;
    for name in names {
        match check(node, name, request_timeout).await {
            Ok(()) => {
                report.push_str(&format!("[+]{name} ok\n"));
                node.shared.metrics.record_check(kind.name(), name, true);
            }
            Err(why) => {
                ok = false;
                report.push_str(&format!("[-]{name} failed: {why}\n"));
                node.shared.metrics.record_check(kind.name(), name, false);
            }
        }
    }
    if !ok {
        tracing::error!(path = kind.root(), reason = %report, "Health check error (status code 503)");
        // http.Error adds a newline after the report's own.
        return go_error(StatusCode::SERVICE_UNAVAILABLE, &report);
    }
    let verbose = query
        .split('&')
        .any(|p| decode(p.split('=').next().unwrap_or("")) == "verbose");
    let body = if verbose {
        format!("{report}ok\n")
    } else {
        "ok\n".to_string()
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_as_go_reads_them() {
        assert_eq!(
            query_values("exclude=NOSPACE&exclude=CORRUPT&x=1", "exclude"),
            vec!["NOSPACE", "CORRUPT"]
        );
        assert_eq!(query_values("verbose", "verbose"), vec![""]);
        assert_eq!(query_values("exclude=a%5Fb+c", "exclude"), vec!["a_b c"]);
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert!(query_values("", "exclude").is_empty());
    }
}
