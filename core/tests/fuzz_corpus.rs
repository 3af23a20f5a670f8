//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same checks the
//! fuzz targets run (`fuzz/src/lib.rs`, included by path), so every seed and every crash input
//! the fuzzer ever found stays a regression test under plain `cargo test`. Seeds named `ok_*`
//! must be accepted by the parser and seeds named `bad_*` refused.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs `check` over every input of `target`, collecting panics instead of stopping at the
/// first; `accepts` tells whether the parser takes an input, for the `ok_`/`bad_` naming rule.
fn replay(target: &str, check: fn(&[u8]), accepts: fn(&[u8]) -> bool) {
    let mut failures = Vec::new();
    for path in corpus(target) {
        let data = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{name}: panicked: {msg}"));
            continue;
        }
        if name.starts_with("ok_") && !accepts(&data) {
            failures.push(format!("{name}: refused, but named ok_"));
        }
        if name.starts_with("bad_") && accepts(&data) {
            failures.push(format!("{name}: accepted, but named bad_"));
        }
    }
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
}

fn utf8(data: &[u8]) -> &str {
    std::str::from_utf8(data).unwrap_or("\u{fffd}")
}

#[test]
fn url_parse_corpus() {
    replay("url_parse", checks::check_url, |d| {
        detcd_core::config::parse_urls(utf8(d)).is_ok()
    });
}

#[test]
fn initial_cluster_corpus() {
    replay("initial_cluster", checks::check_initial_cluster, |d| {
        detcd_core::config::parse_initial_cluster(utf8(d)).is_ok()
    });
}

#[test]
fn peer_batch_corpus() {
    replay("peer_batch", checks::check_peer_batch, |d| {
        detcd_core::peer::decode_batch(d, checks::CLUSTER, checks::MEMBER, checks::is_member)
            .is_ok()
    });
}

#[test]
fn wal_records_corpus() {
    replay("wal_records", checks::check_wal_records, |d| {
        detcd_core::wal::scan(d).is_ok()
    });
}

#[test]
fn snapshot_file_corpus() {
    replay("snapshot_file", checks::check_snapshot_file, |d| {
        checks::read_snapshot(d).is_some()
    });
}

#[test]
fn peer_snapshot_corpus() {
    replay("peer_snapshot", checks::check_peer_snapshot, |d| {
        <detcd_core::proto::detcdpb::SnapshotChunk as prost::Message>::decode(d)
            .ok()
            .and_then(|c| {
                detcd_core::peer::open_snapshot(
                    &c,
                    checks::CLUSTER,
                    checks::MEMBER,
                    checks::is_member,
                )
                .ok()
            })
            .is_some()
    });
}

#[test]
fn remote_cluster_corpus() {
    replay("remote_cluster", checks::check_remote_cluster, |d| {
        checks::remote_cluster(d).is_some_and(|r| {
            detcd_core::bootstrap::plan_join("infra3", &checks::joining_members(), &r).is_ok()
        })
    });
}

#[test]
fn watch_request_corpus() {
    replay(
        "watch_request",
        checks::check_watch_request,
        |d| match checks::watch_create(d) {
            Some(detcd_core::proto::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                c,
            )) => detcd_core::watch::WatchSpec::from_request(&c).is_ok(),
            Some(_) => true,
            None => false,
        },
    );
}

#[test]
fn json_request_corpus() {
    replay(
        "json_request",
        |d| {
            checks::check_json_request(d);
        },
        checks::check_json_request,
    );
}

#[test]
fn v2_discovery_answer_corpus() {
    replay(
        "v2_discovery_answer",
        |d| {
            checks::check_v2_discovery_answer(d);
        },
        checks::check_v2_discovery_answer,
    );
}

#[test]
fn v2_store_rows_corpus() {
    replay(
        "v2_store_rows",
        |d| {
            checks::check_v2_store_rows(d);
        },
        checks::check_v2_store_rows,
    );
}
