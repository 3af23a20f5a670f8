//! Defragmentation of the data file (etcd's Maintenance.Defragment): the file is copied,
//! table by table, into a fresh file that holds only live pages, which then replaces it.
//!
//! Unlike etcd's defragmentation (etcd issue 9222: it blocks reads and writes for its whole
//! run), reads go on against the old file meanwhile: the driver stops applying while the copy
//! runs (entries queue, raft goes on) and swaps in the copy at the end, and a read begun
//! before the swap keeps the old file's pages until it ends.
//!
//! Crash safety: the copy is committed (synced) under a temporary name, renamed over the data
//! file and the directory synced before the member uses it. A crash before the rename leaves
//! the old file; after it, the complete copy.

use detcd_core::tables;
use redb::{Key, MultimapTableHandle, ReadableDatabase, TableDefinition, TableHandle, Value};
use std::path::{Path, PathBuf};

/// Why a defragmentation failed (the old data file stays in use).
#[derive(Debug, thiserror::Error)]
pub enum DefragError {
    #[error("defragmenting {path}: {what}: {err}")]
    Io {
        path: String,
        what: &'static str,
        err: std::io::Error,
    },
    #[error("defragmenting {path}: {what}: {err}")]
    Store {
        path: String,
        what: &'static str,
        err: Box<redb::Error>,
    },
    #[error("defragmenting {path}: compacting the copy: {err}")]
    Compact {
        path: String,
        err: Box<redb::CompactionError>,
    },
    /// A table this code does not know how to copy: copying the rest would lose it.
    #[error(
        "defragmenting {path}: the data file has a table {table:?} detcd does not know; not copied"
    )]
    UnknownTable { path: String, table: String },
}

/// Copies `db` (the data file at `path`) compactly and replaces the file with the copy;
/// returns the copy, open. Reads the whole store: run it off the async workers.
pub fn defragment(db: &redb::Database, path: &Path) -> Result<redb::Database, DefragError> {
    let p = path.display().to_string();
    let store = |what: &'static str| {
        let p = p.clone();
        move |e: redb::Error| DefragError::Store {
            path: p.clone(),
            what,
            err: Box::new(e),
        }
    };
    let io = |what: &'static str| {
        let p = p.clone();
        move |e: std::io::Error| DefragError::Io {
            path: p.clone(),
            what,
            err: e,
        }
    };
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut copy =
        redb::Database::create(&tmp).map_err(|e| store("creating the copy")(e.into()))?;
    let from = db
        .begin_read()
        .map_err(|e| store("reading the data file")(e.into()))?;
    let to = copy
        .begin_write()
        .map_err(|e| store("writing the copy")(e.into()))?;
    let known = [
        tables::META.name(),
        tables::RAFT_LOG.name(),
        tables::MEMBERS.name(),
        tables::REMOVED_MEMBERS.name(),
        tables::LEASES.name(),
        tables::ALARMS.name(),
        tables::KV.name(),
        tables::V2_NODES.name(),
        tables::V2_EVENTS.name(),
    ];
    let listed = from
        .list_tables()
        .map_err(|e| store("listing tables")(e.into()))?;
    for t in listed {
        if !known.contains(&t.name()) {
            return Err(DefragError::UnknownTable {
                path: p.clone(),
                table: t.name().to_string(),
            });
        }
    }
    if let Some(t) = from
        .list_multimap_tables()
        .map_err(|e| store("listing tables")(e.into()))?
        .next()
    {
        return Err(DefragError::UnknownTable {
            path: p.clone(),
            table: t.name().to_string(),
        });
    }
    copy_table(&from, &to, tables::META).map_err(store("copying meta"))?;
    copy_table(&from, &to, tables::RAFT_LOG).map_err(store("copying raft_log"))?;
    copy_table(&from, &to, tables::MEMBERS).map_err(store("copying members"))?;
    copy_table(&from, &to, tables::REMOVED_MEMBERS).map_err(store("copying removed_members"))?;
    copy_table(&from, &to, tables::LEASES).map_err(store("copying leases"))?;
    copy_table(&from, &to, tables::ALARMS).map_err(store("copying alarms"))?;
    copy_table(&from, &to, tables::KV).map_err(store("copying kv"))?;
    copy_table(&from, &to, tables::V2_NODES).map_err(store("copying v2_nodes"))?;
    copy_table(&from, &to, tables::V2_EVENTS).map_err(store("copying v2_events"))?;
    to.commit()
        .map_err(|e| store("committing the copy")(e.into()))?;
    // The copy is ours alone: redb can trim the room a new file reserves for growth.
    copy.compact().map_err(|err| DefragError::Compact {
        path: p.clone(),
        err: Box::new(err),
    })?;
    drop(copy);
    std::fs::rename(&tmp, path).map_err(io("replacing the data file"))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing the data dir"))?;
    }
    redb::Database::open(path).map_err(|e| store("opening the copy")(e.into()))
}

/// The copy's name while it is written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".defrag");
    PathBuf::from(name)
}

/// Copies every row of `def` (absent in `from`: nothing, the copy has no such table either).
fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<(), redb::Error> {
    use redb::ReadableTable;
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut dst = to.open_table(def)?;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_defragmented_file_keeps_every_row_and_shrinks() {
        let dir = std::env::temp_dir().join(format!("detcd-defrag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("detcd.db");
        let db = redb::Database::create(&path).unwrap();
        let big = vec![7u8; 4096];
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(tables::KV).unwrap();
            for i in 0u32..2000 {
                kv.insert(i.to_be_bytes().as_slice(), big.as_slice())
                    .unwrap();
            }
            let mut meta = txn.open_table(tables::META).unwrap();
            meta.insert("applied_index", 42u64.to_be_bytes().as_slice())
                .unwrap();
            let mut alarms = txn.open_table(tables::ALARMS).unwrap();
            alarms.insert((9u64, 1i32), ()).unwrap();
        }
        txn.commit().unwrap();
        // Delete most rows: their pages are free but the file keeps them.
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(tables::KV).unwrap();
            for i in 10u32..2000 {
                kv.remove(i.to_be_bytes().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let reader = db.begin_read().unwrap();
        let copy = defragment(&db, &path).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < before / 4, "{before} -> {after} bytes");
        assert!(!temp_path(&path).exists());
        // A read begun before the swap still sees the old file.
        use redb::ReadableTableMetadata;
        assert_eq!(reader.open_table(tables::KV).unwrap().len().unwrap(), 10);
        let r = copy.begin_read().unwrap();
        let kv = r.open_table(tables::KV).unwrap();
        assert_eq!(kv.len().unwrap(), 10);
        assert_eq!(
            kv.get(3u32.to_be_bytes().as_slice())
                .unwrap()
                .unwrap()
                .value(),
            big
        );
        let meta = r.open_table(tables::META).unwrap();
        assert!(meta.get("applied_index").unwrap().is_some());
        assert!(r
            .open_table(tables::ALARMS)
            .unwrap()
            .get((9u64, 1i32))
            .unwrap()
            .is_some());
        drop((kv, meta, r, copy, reader, db));
        // The replaced file opens as the data file.
        let reopened = redb::Database::open(&path).unwrap();
        let r = reopened.begin_read().unwrap();
        assert_eq!(r.open_table(tables::KV).unwrap().len().unwrap(), 10);
        drop((r, reopened));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_table_stops_the_copy() {
        let dir = std::env::temp_dir().join(format!("detcd-defrag-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("detcd.db");
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("surprise"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        txn.commit().unwrap();
        let e = defragment(&db, &path).unwrap_err();
        assert!(e.to_string().contains("\"surprise\""), "{e}");
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
