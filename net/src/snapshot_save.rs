//! Saved snapshots: Maintenance.Snapshot's stream (what `etcdctl snapshot save` writes to its
//! file) and `detcd snapshot restore`, which makes a new cluster's data dir from such a file.
//!
//! The file is detcd's, not etcd's bbolt database: the member's snapshot file
//! (`detcd_core::state::snapshot`: CRC-framed head, MVCC rows, end frame) at one applied index,
//! zero-padded to a multiple of 512 bytes, then the SHA-256 of those bytes. The padding and the
//! trailer are etcd's shape (api/v3rpc/maintenance.go sends the SHA-256 last; etcd's clients
//! accept a saved file only if its size is a multiple of 512 plus 32, clientv3/snapshot
//! `hasChecksum`), so etcdctl saves it unchanged; etcdctl's `snapshot status` and `snapshot
//! restore` open it as bbolt and cannot read it: `detcd snapshot restore` and `detcd snapshot
//! status` do.

use detcd_core::state::snapshot::SAVED_ALIGN;
use detcd_core::state::SnapshotSource;
use std::io::{self, Write};

/// Bytes of the file in one stream message (etcd's snapshotSendBufferSize, 32 KiB).
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Length of the SHA-256 trailer.
pub const SHA256_BYTES: u64 = 32;

/// etcd's `hasChecksum`: a saved file of `size` bytes ends with a SHA-256 trailer.
pub fn has_checksum(size: u64) -> bool {
    size % SAVED_ALIGN == SHA256_BYTES
}

/// A running SHA-256 (rustls' ring provider's, so no digest crate of its own).
#[cfg(not(madsim))]
pub struct Sha256(Box<dyn rustls::crypto::hash::Context>);

#[cfg(not(madsim))]
impl Sha256 {
    pub fn new() -> Sha256 {
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let hash = suite.tls13().expect("a TLS 1.3 suite").common.hash_provider;
        debug_assert_eq!(
            hash.algorithm(),
            rustls::crypto::hash::HashAlgorithm::SHA256
        );
        Sha256(hash.start())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

#[cfg(not(madsim))]
impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

/// Cuts the bytes written to it into [`CHUNK_BYTES`] blobs, each handed to `emit` with the
/// bytes that remain after it (etcd's `remaining_bytes`), hashing them on the way.
#[cfg(not(madsim))]
struct Chunker<F: FnMut(Vec<u8>, u64) -> io::Result<()>> {
    buf: Vec<u8>,
    total: u64,
    sent: u64,
    sha: Sha256,
    emit: F,
}

#[cfg(not(madsim))]
impl<F: FnMut(Vec<u8>, u64) -> io::Result<()>> Chunker<F> {
    fn send_buf(&mut self) -> io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
        self.sent += blob.len() as u64;
        if self.sent > self.total {
            return Err(io::Error::other(
                "the snapshot grew while it was sent (its copy is not at one point in time)",
            ));
        }
        self.sha.update(&blob);
        (self.emit)(blob, self.total - self.sent)
    }
}

#[cfg(not(madsim))]
impl<F: FnMut(Vec<u8>, u64) -> io::Result<()>> Write for Chunker<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK_BYTES {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the saved-snapshot stream of `source` as etcd's Maintenance.Snapshot sends it: the
/// file (padded to [`SAVED_ALIGN`]) in [`CHUNK_BYTES`] blobs, each with the bytes left after
/// it, then the SHA-256 of all of them with 0 left. `emit(blob, remaining)` sends one message;
/// an error from it (the client went away) ends the stream. The file is measured first by
/// writing it into nothing (the copy is one read transaction, so the second pass writes the
/// same bytes): memory stays at one chunk and one frame, whatever the store's size. Reads
/// the whole store twice: run it off the async workers. Returns the padded size.
#[cfg(not(madsim))]
pub fn write_saved(
    source: &SnapshotSource,
    emit: impl FnMut(Vec<u8>, u64) -> io::Result<()>,
) -> Result<u64, String> {
    let (_, measured) = source
        .write_copy(io::sink())
        .map_err(|e| format!("measuring the snapshot: {e}"))?;
    let total = measured.size.div_ceil(SAVED_ALIGN) * SAVED_ALIGN;
    tracing::info!(
        "sending database snapshot to client {} [{total} bytes]",
        human_bytes(total)
    );
    let chunker = Chunker {
        buf: Vec::with_capacity(CHUNK_BYTES),
        total,
        sent: 0,
        sha: Sha256::new(),
        emit,
    };
    let (mut chunker, written) = source
        .write_copy(chunker)
        .map_err(|e| format!("sending the snapshot: {e}"))?;
    if written != measured {
        return Err("the snapshot changed between its two passes".into());
    }
    let padding = (total - written.size) as usize;
    chunker
        .write_all(&vec![0u8; padding])
        .map_err(|e| format!("sending the snapshot: {e}"))?;
    if !chunker.buf.is_empty() {
        chunker
            .send_buf()
            .map_err(|e| format!("sending the snapshot: {e}"))?;
    }
    let Chunker { sha, mut emit, .. } = chunker;
    let sha = sha.finish();
    tracing::info!(
        "sending database sha256 checksum to client [{} bytes]",
        sha.len()
    );
    emit(sha, 0).map_err(|e| format!("sending the snapshot's checksum: {e}"))?;
    tracing::info!(
        "successfully sent database snapshot to client {} [{total} bytes]",
        human_bytes(total)
    );
    Ok(total)
}

/// Sizes as etcd's log lines print them (go-humanize's `Bytes`: SI units, e.g. `1.2 MB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(UNITS.len() - 1);
    let v = n as f64 / 1000f64.powi(e as i32);
    if v < 10.0 {
        format!("{v:.1} {}", UNITS[e])
    } else {
        format!("{v:.0} {}", UNITS[e])
    }
}

/// etcdctl's `snapshot restore` flags (etcdctl/ctlv3/command/snapshot_command.go), with its
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    pub snapshot_path: String,
    pub name: String,
    /// Empty: `<name>.etcd`.
    pub data_dir: String,
    /// Empty: beside the data file, as a member without `--wal-dir` keeps it.
    pub wal_dir: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub skip_hash_check: bool,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            snapshot_path: String::new(),
            name: "default".into(),
            data_dir: String::new(),
            wal_dir: String::new(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_token: "etcd-cluster".into(),
            skip_hash_check: false,
        }
    }
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub data_dir: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub restored: detcd_core::state::Restored,
}

/// etcd's Restore (clientv3/snapshot/v3_snapshot.go), for detcd's saved snapshots: checks the
/// flags as a new member's bootstrap does (etcd's VerifyBootstrap: the name listed, its
/// advertised peer URLs matching its entry, no duplicate URLs), refuses an existing data dir
/// or WAL dir, checks the SHA-256 trailer (unless `skip_hash_check`; a file without one needs
/// it), then creates the data dir of a member of a new cluster (cluster and member IDs from
/// `--initial-cluster` and the token, as a fresh start with those flags would get) holding the
/// snapshot's keys, leases and alarms. A member started on that data dir restarts from it (its
/// `--initial-*` flags then ignored). Errors are etcd's texts where etcd has one; whatever
/// the restore created is removed again when it fails.
#[cfg(not(madsim))]
pub fn restore(cfg: &RestoreConfig) -> Result<RestoreSummary, String> {
    use detcd_core::bootstrap::{self, Bootstrap, DataDirState};
    use detcd_core::config::{parse_initial_cluster, parse_urls, ClusterState, Config};
    use std::path::Path;

    let peer_urls = parse_urls(&cfg.initial_advertise_peer_urls).map_err(|e| e.to_string())?;
    let initial_cluster = parse_initial_cluster(&cfg.initial_cluster).map_err(|e| e.to_string())?;
    let bootstrap_cfg = Config {
        name: cfg.name.clone(),
        initial_advertise_peer_urls: peer_urls,
        initial_cluster,
        initial_cluster_token: cfg.initial_cluster_token.clone(),
        initial_cluster_state: ClusterState::New,
        ..Config::default()
    };
    let resolve = |host: &str| -> Vec<std::net::IpAddr> {
        use std::net::ToSocketAddrs;
        (host, 0)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default()
    };
    let Bootstrap::NewCluster {
        cluster_id,
        local_id,
        members,
    } = bootstrap::decide(&bootstrap_cfg, DataDirState::Empty, &resolve)
        .map_err(|e| e.to_string())?
    else {
        return Err("the restore flags do not describe a new cluster".into());
    };

    let data_dir = if cfg.data_dir.is_empty() {
        format!("{}.etcd", cfg.name)
    } else {
        cfg.data_dir.clone()
    };
    if Path::new(&data_dir).exists() {
        return Err(format!("data-dir {data_dir:?} exists"));
    }
    if !cfg.wal_dir.is_empty() && Path::new(&cfg.wal_dir).exists() {
        return Err(format!("wal-dir {:?} exists", cfg.wal_dir));
    }

    let content_len = check_saved_file(&cfg.snapshot_path, cfg.skip_hash_check)?;
    tracing::info!(
        path = %cfg.snapshot_path,
        data_dir = %data_dir,
        "restoring snapshot"
    );
    let created = || -> Result<detcd_core::state::Restored, String> {
        let db = crate::member::open_data_file(&data_dir).map_err(|e| e.to_string())?;
        let wal_dir = (!cfg.wal_dir.is_empty()).then_some(cfg.wal_dir.as_str());
        if let Some(dir) = wal_dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
        }
        let log_path = crate::member::log_file_path(&data_dir, wal_dir);
        let mut log = crate::log_file::FileLog::open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let peers: Vec<(u64, Vec<String>)> = members
            .iter()
            .map(|m| (m.id, m.peer_urls.iter().map(|u| u.to_string()).collect()))
            .collect();
        detcd_core::state::initialize_new_member(&db, &mut log, cluster_id, local_id, &peers)
            .map_err(|e| e.to_string())?;
        let file = std::fs::File::open(&cfg.snapshot_path)
            .map_err(|e| format!("open {}: {e}", cfg.snapshot_path))?;
        let content = io::Read::take(io::BufReader::with_capacity(1 << 20, file), content_len);
        detcd_core::state::restore_saved_snapshot(&db, content)
            .map_err(|e| format!("{}: {e}", cfg.snapshot_path))
    };
    match created() {
        Ok(restored) => {
            tracing::info!(
                path = %cfg.snapshot_path,
                data_dir = %data_dir,
                revision = restored.revision,
                "restored snapshot"
            );
            Ok(RestoreSummary {
                data_dir,
                member_id: local_id,
                cluster_id,
                restored,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&data_dir);
            if !cfg.wal_dir.is_empty() {
                let _ = std::fs::remove_dir_all(&cfg.wal_dir);
            }
            Err(e)
        }
    }
}

/// Checks a saved file's SHA-256 trailer as etcd's saveDB does; returns the length of its
/// content (the file without the trailer). etcd's errors: `snapshot missing hash but
/// --skip-hash-check=false`, `expected sha256 [..], got [..]` (Go's `%v` of the digests).
#[cfg(not(madsim))]
pub fn check_saved_file(path: &str, skip_hash_check: bool) -> Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("stat {path}: {e}"))?
        .len();
    check_saved(file, size, skip_hash_check).map_err(|e| match e {
        SavedCheckError::Read(e) => format!("read {path}: {e}"),
        e => e.to_string(),
    })
}

/// Why a saved file's trailer was refused ([`check_saved`]).
#[derive(Debug, thiserror::Error)]
pub enum SavedCheckError {
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {}, got {}", go_bytes(.want), go_bytes(.got))]
    Mismatch { want: Vec<u8>, got: Vec<u8> },
    #[error("{0}")]
    Read(io::Error),
}

/// [`check_saved_file`] on `size` bytes read from `saved`: the length of the content before
/// the trailer (the whole `size` when there is none and `skip_hash_check` allows that). With
/// `skip_hash_check` nothing is read.
#[cfg(not(madsim))]
pub fn check_saved(
    mut saved: impl io::Read,
    size: u64,
    skip_hash_check: bool,
) -> Result<u64, SavedCheckError> {
    let has_hash = has_checksum(size);
    if !has_hash && !skip_hash_check {
        return Err(SavedCheckError::MissingHash);
    }
    let content_len = if has_hash { size - SHA256_BYTES } else { size };
    if has_hash && !skip_hash_check {
        let mut sha = Sha256::new();
        let mut left = content_len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            saved
                .read_exact(&mut buf[..n])
                .map_err(SavedCheckError::Read)?;
            sha.update(&buf[..n]);
            left -= n as u64;
        }
        let mut want = vec![0u8; SHA256_BYTES as usize];
        saved.read_exact(&mut want).map_err(SavedCheckError::Read)?;
        let got = sha.finish();
        if got != want {
            return Err(SavedCheckError::Mismatch { want, got });
        }
    }
    Ok(content_len)
}

/// The `saved_snapshot` fuzz target's check: `data` as a saved file, through what `detcd
/// snapshot restore` and `status` read (the trailer, then the padded snapshot file and its
/// rows). No panic; a file is accepted only if its trailer is the SHA-256 of its content;
/// and `data` zero-padded with a correct trailer appended passes the trailer check with
/// exactly `data` and its padding as content.
#[cfg(not(madsim))]
pub fn fuzz_check_saved(data: &[u8]) {
    use detcd_core::state::snapshot::SnapshotReader;
    let size = data.len() as u64;
    match check_saved(data, size, false) {
        Ok(n) => {
            assert!(has_checksum(size), "accepted without a trailer");
            let mut sha = Sha256::new();
            sha.update(&data[..n as usize]);
            assert_eq!(sha.finish(), &data[n as usize..], "accepted a wrong hash");
            if let Ok((mut reader, _head)) = SnapshotReader::open_padded(&data[..n as usize]) {
                while let Ok(Some(_)) = reader.next_rows() {}
            }
        }
        Err(SavedCheckError::MissingHash) => assert!(!has_checksum(size)),
        Err(SavedCheckError::Mismatch { .. }) => assert!(has_checksum(size)),
        Err(SavedCheckError::Read(e)) => panic!("reading memory failed: {e}"),
    }
    let skipped = check_saved(&[][..], size, true).expect("nothing is read when skipping");
    assert_eq!(
        skipped,
        if has_checksum(size) {
            size - SHA256_BYTES
        } else {
            size
        }
    );

    let mut saved = data.to_vec();
    saved.resize(
        data.len().div_ceil(SAVED_ALIGN as usize) * SAVED_ALIGN as usize,
        0,
    );
    let content = saved.len() as u64;
    let mut sha = Sha256::new();
    sha.update(&saved);
    saved.extend(sha.finish());
    let n = check_saved(&saved[..], saved.len() as u64, false).expect("a correct trailer");
    assert_eq!(n, content);
}

/// Go's `%v` of a byte slice: `[1 2 3]`.
fn go_bytes(b: &[u8]) -> String {
    let parts: Vec<String> = b.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(" "))
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_sha256() {
        let mut s = Sha256::new();
        s.update(b"ab");
        s.update(b"c");
        assert_eq!(
            go_bytes(&s.finish()[..4]),
            "[186 120 22 191]",
            "sha256(\"abc\") = ba7816bf..."
        );
    }

    #[test]
    fn checksum_sizes_and_human_bytes_are_etcds() {
        assert!(has_checksum(512 + 32) && has_checksum(32));
        assert!(!has_checksum(512) && !has_checksum(545));
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(1_234_567), "1.2 MB");
    }
}
