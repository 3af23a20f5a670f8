//! `detcd snapshot restore|status <file>`: etcdctl's `snapshot` commands (etcd 3.4's
//! etcdctl/ctlv3/command/snapshot_command.go; etcdutl's in 3.5) for detcd's saved snapshots,
//! which `etcdctl snapshot save` writes from a detcd member (see detcd_net::snapshot_save:
//! the file is detcd's format, not bbolt, so etcdctl's own `status` and `restore` cannot read
//! it). Flags in cobra's style (`--flag value` or `--flag=value`, booleans without a value).
//! Exit codes are etcdctl's: 0, 1 for a failed restore or status (`Error: <why>` on stderr),
//! 128 (ExitBadArgs) for bad arguments.

use detcd_net::snapshot_save::{check_saved_file, restore, RestoreConfig};

const HELP: &str = "\
Manages detcd's saved snapshots (`etcdctl snapshot save` against a detcd member writes them)

Usage:
  detcd snapshot restore <filename> [flags]
  detcd snapshot status <filename> [--write-out simple|table|json]

Flags of restore:
      --data-dir string                      Path to the data directory
      --initial-advertise-peer-urls string   List of this member's peer URLs to advertise to the rest of the cluster (default \"http://localhost:2380\")
      --initial-cluster string               Initial cluster configuration for restore bootstrap (default \"default=http://localhost:2380\")
      --initial-cluster-token string         Initial cluster token for the etcd cluster during restore bootstrap (default \"etcd-cluster\")
      --name string                          Human-readable name for this member (default \"default\")
      --skip-hash-check                      Ignore snapshot integrity hash value (required if copied from data directory)
      --wal-dir string                       Path to the WAL directory (use --data-dir if none given)
";

/// etcdctl's exit codes (etcdctl/ctlv3/command/error.go).
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_ARGS: u8 = 128;

/// Runs `detcd snapshot <args>`; returns the exit code.
pub fn run(args: Vec<String>) -> u8 {
    match run_inner(&args) {
        Ok(()) => 0,
        Err((code, msg)) => {
            eprintln!("Error: {msg}");
            code
        }
    }
}

fn run_inner(args: &[String]) -> Result<(), (u8, String)> {
    let bad = |m: String| (EXIT_BAD_ARGS, m);
    let Some(command) = args.first() else {
        print!("{HELP}");
        return Ok(());
    };
    if command == "-h" || command == "--help" {
        print!("{HELP}");
        return Ok(());
    }
    let (files, flags) = split(&args[1..])?;
    match command.as_str() {
        "restore" => {
            if files.len() != 1 {
                return Err(bad("snapshot restore requires exactly one argument".into()));
            }
            let mut cfg = RestoreConfig {
                snapshot_path: files[0].clone(),
                ..RestoreConfig::default()
            };
            for (flag, value) in flags {
                let slot = match flag.as_str() {
                    "data-dir" => &mut cfg.data_dir,
                    "wal-dir" => &mut cfg.wal_dir,
                    "initial-cluster" => &mut cfg.initial_cluster,
                    "initial-cluster-token" => &mut cfg.initial_cluster_token,
                    "initial-advertise-peer-urls" => &mut cfg.initial_advertise_peer_urls,
                    "name" => &mut cfg.name,
                    "skip-hash-check" => {
                        cfg.skip_hash_check = parse_bool(&flag, value.as_deref())?;
                        continue;
                    }
                    _ => return Err(bad(format!("unknown flag: --{flag}"))),
                };
                *slot = value.ok_or_else(|| bad(format!("flag needs an argument: --{flag}")))?;
            }
            // etcdctl derives the default --initial-cluster from --name.
            if cfg.initial_cluster == RestoreConfig::default().initial_cluster {
                cfg.initial_cluster = format!("{}=http://localhost:2380", cfg.name);
            }
            let summary = restore(&cfg).map_err(|e| (EXIT_ERROR, e))?;
            eprintln!(
                "restored snapshot {} into data dir {} (member {:x}, cluster {:x}, revision {}, {} keys)",
                cfg.snapshot_path,
                summary.data_dir,
                summary.member_id,
                summary.cluster_id,
                summary.restored.revision,
                summary.restored.keys
            );
            Ok(())
        }
        "status" => {
            if files.len() != 1 {
                return Err(bad("snapshot status requires exactly one argument".into()));
            }
            let mut format = "simple".to_string();
            for (flag, value) in flags {
                match flag.as_str() {
                    "write-out" | "w" => {
                        format = value
                            .ok_or_else(|| bad("flag needs an argument: --write-out".into()))?
                    }
                    _ => return Err(bad(format!("unknown flag: --{flag}"))),
                }
            }
            let st = status(&files[0]).map_err(|e| (EXIT_ERROR, e))?;
            print!("{}", st.render(&format).map_err(bad)?);
            Ok(())
        }
        other => Err(bad(format!(
            "unknown command {other:?} for \"detcd snapshot\""
        ))),
    }
}

/// Positional arguments and `(flag, value)` pairs; a flag followed by a non-flag takes it as
/// its value, except `--skip-hash-check` (a boolean, cobra's `NoOptDefVal`).
#[allow(clippy::type_complexity)]
fn split(args: &[String]) -> Result<(Vec<String>, Vec<(String, Option<String>)>), (u8, String)> {
    let (mut files, mut flags) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            files.push(arg.clone());
            continue;
        };
        if let Some((n, v)) = name.split_once('=') {
            flags.push((n.to_string(), Some(v.to_string())));
        } else if name == "skip-hash-check" || i >= args.len() {
            flags.push((name.to_string(), None));
        } else {
            flags.push((name.to_string(), Some(args[i].clone())));
            i += 1;
        }
    }
    Ok((files, flags))
}

fn parse_bool(flag: &str, v: Option<&str>) -> Result<bool, (u8, String)> {
    match v {
        None | Some("true") | Some("1") | Some("t") | Some("T") | Some("TRUE") | Some("True") => {
            Ok(true)
        }
        Some("false") | Some("0") | Some("f") | Some("F") | Some("FALSE") | Some("False") => {
            Ok(false)
        }
        Some(other) => Err((
            EXIT_BAD_ARGS,
            format!("invalid argument {other:?} for \"--{flag}\" flag: strconv.ParseBool: parsing {other:?}: invalid syntax"),
        )),
    }
}

/// etcdctl's snapshot status fields (clientv3/snapshot Status) for detcd's file: the
/// CRC-32C of the snapshot file inside it (without padding and trailer: the hash
/// Maintenance.Hash gives for the member's copy it was saved from), the revision, the number
/// of MVCC rows (every kept revision of every key, as etcd counts every bbolt key), and the
/// saved file's size.
struct Status {
    hash: u32,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

/// Reads a saved file through once to check it and count its rows, then hashes the snapshot
/// file inside it; memory stays at one frame.
fn status(path: &str) -> Result<Status, String> {
    use detcd_core::state::snapshot::{FileCheck, SnapshotReader};
    use std::io::Read;
    let content_len = check_saved_file(path, true)?;
    let open = || -> Result<std::io::Take<std::io::BufReader<std::fs::File>>, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
        Ok(std::io::BufReader::with_capacity(1 << 20, file).take(content_len))
    };
    let (mut reader, head) =
        SnapshotReader::open_padded(open()?).map_err(|e| format!("{path}: {e}"))?;
    let mut total_key = 0u64;
    while let Some(rows) = reader.next_rows().map_err(|e| format!("{path}: {e}"))? {
        total_key += rows.len() as u64;
    }
    let mut check = FileCheck::default();
    let mut content = open()?.take(reader.offset());
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = content
            .read(&mut buf)
            .map_err(|e| format!("read {path}: {e}"))?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
    }
    Ok(Status {
        hash: check.crc32c,
        revision: head.current_revision,
        total_key,
        total_size: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

impl Status {
    /// etcdctl's display of DBStatus: simple (`hash, revision, keys, size`), table, json.
    fn render(&self, format: &str) -> Result<String, String> {
        let size = detcd_net::snapshot_save::human_bytes(self.total_size);
        match format {
            "simple" => Ok(format!(
                "{:x}, {}, {}, {}\n",
                self.hash, self.revision, self.total_key, size
            )),
            "json" => Ok(format!(
                "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
                self.hash, self.revision, self.total_key, self.total_size
            )),
            "table" => {
                let cells = [
                    format!("{:x}", self.hash),
                    self.revision.to_string(),
                    self.total_key.to_string(),
                    size,
                ];
                let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
                let widths: Vec<usize> = heads
                    .iter()
                    .zip(&cells)
                    .map(|(h, c)| h.len().max(c.len()))
                    .collect();
                let line = |v: &[String]| {
                    let cols: Vec<String> = v
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!(" {c:^w$} "))
                        .collect();
                    format!("|{}|\n", cols.join("|"))
                };
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
                let rule = format!("+{}+\n", rule.join("+"));
                let heads: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
                Ok(format!(
                    "{rule}{}{rule}{}{rule}",
                    line(&heads),
                    line(&cells)
                ))
            }
            other => Err(format!(
                "unknown output format {other:?} (simple, table, json)"
            )),
        }
    }
}
