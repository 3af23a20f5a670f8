//! A raft log file damaged in the middle (intact records after the damage) is refused at start:
//! the member exits 1 naming the file and the byte offset, and the file is left as it was for
//! the operator. Only a torn tail is ever cut (core/src/wal.rs has those cases).

use detcd_tests::{etcdctl_ok, have_etcdctl, subnet, Cluster, GUIDE_TOKEN};
use std::time::Duration;

/// Byte offsets of the records of a detcd log file: an 8-byte magic, then records of
/// `len: u32 LE | crc: u32 LE | kind: u8 | payload[len]` (kind never 0), then zeros (space
/// allocated ahead).
fn record_offsets(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos + 9 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if pos + 9 + len > bytes.len() || bytes[pos + 8] == 0 {
            break;
        }
        out.push((pos, len));
        pos += 9 + len;
    }
    out
}

#[test]
fn a_log_damaged_before_intact_records_is_refused_naming_file_and_offset() {
    if !have_etcdctl() {
        return;
    }
    let mut c = Cluster::start_guide("damaged_wal", subnet::DAMAGED_WAL, 1, GUIDE_TOKEN, &[]);
    let eps = c.client_urls();
    for i in 0..30 {
        etcdctl_ok(&eps, &["put", &format!("k{i}"), "some value"]);
    }
    c.members[0].kill();

    let wal = c.members[0].data_dir.join("member").join("detcd.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    let records = record_offsets(&bytes);
    assert!(
        records.len() > 20,
        "expected many records, found {}",
        records.len()
    );
    // The last payload byte of a record in the middle: its checksum fails, its length holds,
    // and intact records follow it.
    let (start, len) = records[records.len() / 2];
    bytes[start + 9 + len - 1] ^= 0x5a;
    std::fs::write(&wal, &bytes).unwrap();

    c.members[0].start();
    let status = c.members[0].wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", c.members[0].log_tail(40));
    let stderr = c.members[0].stderr();
    assert!(
        stderr.contains(&wal.display().to_string())
            && stderr.contains(&format!("damaged at byte offset {start}")),
        "stderr should name {} and offset {start}:\n{stderr}",
        wal.display()
    );
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        bytes,
        "the damaged file must be left untouched"
    );
}
