//! The v2 keys store in the data file: one row per node ([`V2_NODES`]), one per history
//! event ([`V2_EVENTS`]) and the store index in META, written with the apply's transaction
//! so a restart finds the store exactly at the applied index. Rows are JSON (serde).

use crate::raft_log::LogError;
use crate::tables::{meta_keys, META, V2_EVENTS, V2_NODES};
use crate::v2store::{Changes, Event, Exported, Node, V2Store};
use redb::{ReadableTable, ReadableTableMetadata};

fn corrupt(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!("v2 store: {what}: {e}"))
}

/// Loads the store from a data file (empty when it never held one). A row that does not
/// decode, or rows that cannot form a store, are [`LogError::Corrupt`], naming the row.
pub fn load(txn: &redb::ReadTransaction) -> Result<V2Store, LogError> {
    let index = match txn.open_table(META) {
        Ok(t) => match t.get(meta_keys::V2_INDEX)? {
            Some(v) => v
                .value()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| LogError::Corrupt("v2 store index is not 8 bytes".into()))?,
            None => 0,
        },
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut nodes = Vec::new();
    match txn.open_table(V2_NODES) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let node: Node = serde_json::from_slice(v.value())
                    .map_err(|e| corrupt(&format!("node row {:?}", k.value()), e))?;
                nodes.push((k.value().to_string(), node));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut events = Vec::new();
    match txn.open_table(V2_EVENTS) {
        Ok(t) => {
            for row in t.iter()? {
                let (k, v) = row?;
                let e: Event = serde_json::from_slice(v.value())
                    .map_err(|e| corrupt(&format!("event row {}", k.value()), e))?;
                if e.index() != k.value() {
                    return Err(corrupt(
                        &format!("event row {}", k.value()),
                        format!("holds event {}", e.index()),
                    ));
                }
                events.push(e);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    V2Store::load(index, nodes, events).map_err(LogError::Corrupt)
}

/// Writes what the store changed since the last call into `txn`.
pub fn write_changes(txn: &redb::WriteTransaction, ch: Changes) -> Result<(), redb::Error> {
    {
        let mut nodes = txn.open_table(V2_NODES)?;
        for (path, node) in ch.nodes {
            match node {
                Some(n) => {
                    let row = serde_json::to_vec(&n).expect("nodes encode");
                    nodes.insert(path.as_str(), row.as_slice())?;
                }
                None => {
                    nodes.remove(path.as_str())?;
                }
            }
        }
    }
    {
        let mut events = txn.open_table(V2_EVENTS)?;
        for e in ch.events {
            let row = serde_json::to_vec(&e).expect("events encode");
            events.insert(e.index(), row.as_slice())?;
        }
        // Drop what fell out of the history (at most a few rows per apply).
        events.retain_in(..ch.history_start, |_, _| false)?;
    }
    txn.open_table(META)?
        .insert(meta_keys::V2_INDEX, ch.index.to_be_bytes().as_slice())?;
    Ok(())
}

/// Replaces the store's rows with an exported store's (a snapshot install).
pub fn replace(txn: &redb::WriteTransaction, e: &Exported) -> Result<(), redb::Error> {
    {
        let mut nodes = txn.open_table(V2_NODES)?;
        nodes.retain(|_, _| false)?;
        for (path, n) in &e.nodes {
            let row = serde_json::to_vec(n).expect("nodes encode");
            nodes.insert(path.as_str(), row.as_slice())?;
        }
        let mut events = txn.open_table(V2_EVENTS)?;
        events.retain(|_, _| false)?;
        for ev in &e.events {
            let row = serde_json::to_vec(ev).expect("events encode");
            events.insert(ev.index(), row.as_slice())?;
        }
        debug_assert!(nodes.len()? as usize == e.nodes.len());
    }
    txn.open_table(META)?
        .insert(meta_keys::V2_INDEX, e.index.to_be_bytes().as_slice())?;
    Ok(())
}

/// The store exported for a snapshot's head (empty bytes when the store is empty, so
/// members that never used v2 send the same snapshots as before).
pub fn export(store: &V2Store) -> Vec<u8> {
    if store.index() == 0 {
        return Vec::new();
    }
    serde_json::to_vec(&store.export()).expect("the store encodes")
}

/// A snapshot head's v2 store bytes decoded (empty: an empty store). Damage is refused.
pub fn decode(bytes: &[u8]) -> Result<Exported, String> {
    if bytes.is_empty() {
        return Ok(Exported::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("the snapshot's v2 store: {e}"))
}
