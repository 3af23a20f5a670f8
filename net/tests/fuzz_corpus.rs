//! Replays the committed corpora of the fuzz targets whose checks live in detcd-net
//! (`fuzz/corpus/<target>/`) through the check the fuzz target runs, so every seed and past
//! crash input stays a regression test. detcd-core's targets replay in
//! `core/tests/fuzz_corpus.rs`.
#![cfg(not(madsim))]

use detcd_core::state::snapshot::SnapshotReader;
use detcd_net::snapshot_save::{check_saved, fuzz_check_saved};
use std::path::Path;

/// Runs `check` over every input of `target`, collecting failures; `accepts`, when given,
/// enforces the naming rule (`ok_*` accepted, `bad_*` refused).
fn replay(target: &str, check: fn(&[u8]), accepts: Option<fn(&[u8]) -> bool>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let (mut n, mut failures) = (0, Vec::new());
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        n += 1;
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failures.push(format!("{name}: failed the check"));
            continue;
        }
        if let Some(accepts) = accepts {
            if name.starts_with("ok_") && !accepts(&data) {
                failures.push(format!("{name}: refused, but named ok_"));
            }
            if name.starts_with("bad_") && accepts(&data) {
                failures.push(format!("{name}: accepted, but named bad_"));
            }
        }
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
}

#[test]
fn h2_rewriter_corpus_replays_cleanly() {
    replay("h2_rewriter", detcd_net::h2_authority::fuzz_check, None);
}

/// A saved file is accepted when `detcd snapshot restore` would read it whole: its trailer
/// is right and the padded snapshot file inside reads to its end.
fn saved_file_accepted(data: &[u8]) -> bool {
    let Ok(n) = check_saved(data, data.len() as u64, false) else {
        return false;
    };
    let Ok((mut reader, _)) = SnapshotReader::open_padded(&data[..n as usize]) else {
        return false;
    };
    loop {
        match reader.next_rows() {
            Ok(Some(_)) => continue,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn saved_snapshot_corpus_replays_cleanly() {
    replay(
        "saved_snapshot",
        fuzz_check_saved,
        Some(saved_file_accepted),
    );
}
