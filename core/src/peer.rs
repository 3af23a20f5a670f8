//! Checks on what arrives from the peer port, before anything reaches raft. Pure, so the
//! fuzzer can throw arbitrary bytes at exactly the code the server runs.

use crate::ids::format_id;
use crate::proto::detcdpb::{MessageBatch, SnapshotChunk, SnapshotRef};
use crate::raftpb;
use raft::prelude::{Message, MessageType};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerRefusal {
    #[error("request cluster ID mismatch (got {} want {})", format_id(*got), format_id(*want))]
    OtherCluster { got: u64, want: u64 },
    #[error("member {} is not in this cluster", format_id(*.0))]
    UnknownMember(u64),
    #[error("raft message from {} to {} on a stream from {}", format_id(*from), format_id(*to), format_id(*stream_from))]
    WrongEndpoints {
        from: u64,
        to: u64,
        stream_from: u64,
    },
    #[error("undecodable peer message: {0}")]
    Undecodable(String),
    /// A MsgSnapshot names a snapshot file, which travels only with it on Peer.Snapshot.
    #[error("a snapshot message outside the snapshot call")]
    SnapshotOffStream,
    #[error("the snapshot call carries no snapshot message")]
    NotASnapshot,
}

/// Why a sender is refused, or `Ok` when it is a known member of this cluster.
pub fn check_sender(
    cluster_id: u64,
    from: u64,
    local_cluster: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<(), PeerRefusal> {
    if cluster_id != local_cluster {
        return Err(PeerRefusal::OtherCluster {
            got: cluster_id,
            want: local_cluster,
        });
    }
    if !is_member(from) {
        return Err(PeerRefusal::UnknownMember(from));
    }
    Ok(())
}

/// Verifies a batch and decodes its raft messages: sender in this cluster, every message from
/// that sender and addressed to this member. Decoded with `raftpb`, never protobuf 2, and the
/// payloads of conf change entries re-encoded by it (`raftpb::canonicalize_conf_changes`:
/// raft-rs parses those with protobuf 2 when it is the leader).
pub fn open_batch(
    batch: &MessageBatch,
    local_cluster: u64,
    local_member: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<Vec<Message>, PeerRefusal> {
    check_sender(batch.cluster_id, batch.from, local_cluster, is_member)?;
    let mut out = Vec::with_capacity(batch.messages.len());
    for bytes in &batch.messages {
        let mut m =
            raftpb::decode_message(bytes).map_err(|e| PeerRefusal::Undecodable(e.to_string()))?;
        if m.from != batch.from || m.to != local_member {
            return Err(PeerRefusal::WrongEndpoints {
                from: m.from,
                to: m.to,
                stream_from: batch.from,
            });
        }
        if m.get_msg_type() == MessageType::MsgSnapshot {
            return Err(PeerRefusal::SnapshotOffStream);
        }
        raftpb::canonicalize_conf_changes(&mut m)
            .map_err(|e| PeerRefusal::Undecodable(e.to_string()))?;
        out.push(m);
    }
    Ok(out)
}

/// Verifies the first chunk of a Peer.Snapshot call: sender in this cluster, a MsgSnapshot
/// from it to this member, whose data names a snapshot file (`SnapshotRef`). Returns the
/// message (for raft, once the file is stored) and what the file must match.
pub fn open_snapshot(
    first: &SnapshotChunk,
    local_cluster: u64,
    local_member: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<(Message, SnapshotRef), PeerRefusal> {
    check_sender(first.cluster_id, first.from, local_cluster, is_member)?;
    let m = raftpb::decode_message(&first.message)
        .map_err(|e| PeerRefusal::Undecodable(e.to_string()))?;
    if m.from != first.from || m.to != local_member {
        return Err(PeerRefusal::WrongEndpoints {
            from: m.from,
            to: m.to,
            stream_from: first.from,
        });
    }
    if m.get_msg_type() != MessageType::MsgSnapshot || m.get_snapshot().get_metadata().index == 0 {
        return Err(PeerRefusal::NotASnapshot);
    }
    let file = <SnapshotRef as prost::Message>::decode(m.get_snapshot().get_data())
        .map_err(|e| PeerRefusal::Undecodable(format!("snapshot reference: {e}")))?;
    Ok((m, file))
}

/// Decodes a batch from its wire bytes and opens it (the fuzz entry point).
pub fn decode_batch(
    bytes: &[u8],
    local_cluster: u64,
    local_member: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<Vec<Message>, PeerRefusal> {
    let batch = <MessageBatch as prost::Message>::decode(bytes)
        .map_err(|e| PeerRefusal::Undecodable(e.to_string()))?;
    open_batch(&batch, local_cluster, local_member, is_member)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, to: u64) -> Vec<u8> {
        let mut m = Message::default();
        m.from = from;
        m.to = to;
        m.term = 3;
        let mut out = Vec::new();
        raftpb::encode_message(&m, &mut out);
        out
    }

    fn batch(cluster: u64, from: u64, msgs: Vec<Vec<u8>>) -> MessageBatch {
        MessageBatch {
            cluster_id: cluster,
            from,
            messages: msgs,
        }
    }

    const MEMBERS: [u64; 3] = [1, 2, 3];
    fn known(id: u64) -> bool {
        MEMBERS.contains(&id)
    }

    #[test]
    fn accepts_messages_from_a_member_to_us() {
        let out = open_batch(&batch(9, 2, vec![msg(2, 1), msg(2, 1)]), 9, 1, known).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].term, 3);
    }

    #[test]
    fn refuses_other_clusters_strangers_spoofing_and_garbage() {
        assert_eq!(
            open_batch(&batch(8, 2, vec![]), 9, 1, known),
            Err(PeerRefusal::OtherCluster { got: 8, want: 9 })
        );
        assert_eq!(
            open_batch(&batch(9, 7, vec![]), 9, 1, known),
            Err(PeerRefusal::UnknownMember(7))
        );
        assert!(matches!(
            open_batch(&batch(9, 2, vec![msg(3, 1)]), 9, 1, known),
            Err(PeerRefusal::WrongEndpoints { .. })
        ));
        assert!(matches!(
            open_batch(&batch(9, 2, vec![msg(2, 3)]), 9, 1, known),
            Err(PeerRefusal::WrongEndpoints { .. })
        ));
        assert!(matches!(
            open_batch(&batch(9, 2, vec![vec![0xff, 0xff, 0xff]]), 9, 1, known),
            Err(PeerRefusal::Undecodable(_))
        ));
        assert!(decode_batch(&[0x0a, 0xff], 9, 1, known).is_err());
    }

    /// A MsgSnapshot names a snapshot file: it comes only as the first chunk of the
    /// snapshot call, with a decodable reference, never inside a batch.
    #[test]
    fn snapshots_come_only_on_the_snapshot_call() {
        use prost::Message as _;
        let snap_msg = |from: u64, data: Vec<u8>, index: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgSnapshot);
            m.from = from;
            m.to = 1;
            m.mut_snapshot().set_data(data.into());
            m.mut_snapshot().mut_metadata().index = index;
            let mut out = Vec::new();
            raftpb::encode_message(&m, &mut out);
            out
        };
        let file = SnapshotRef {
            size: 10,
            crc32c: 7,
        };
        let good = snap_msg(2, file.encode_to_vec(), 50);
        assert_eq!(
            open_batch(&batch(9, 2, vec![good.clone()]), 9, 1, known),
            Err(PeerRefusal::SnapshotOffStream)
        );
        let chunk = |message: Vec<u8>| SnapshotChunk {
            cluster_id: 9,
            from: 2,
            message,
            data: vec![],
        };
        let (m, r) = open_snapshot(&chunk(good), 9, 1, known).unwrap();
        assert_eq!((m.get_snapshot().get_metadata().index, r), (50, file));
        assert_eq!(
            open_snapshot(&chunk(msg(2, 1)), 9, 1, known),
            Err(PeerRefusal::NotASnapshot)
        );
        assert_eq!(
            open_snapshot(&chunk(snap_msg(2, file.encode_to_vec(), 0)), 9, 1, known),
            Err(PeerRefusal::NotASnapshot)
        );
        assert!(matches!(
            open_snapshot(&chunk(snap_msg(2, vec![0xff], 50)), 9, 1, known),
            Err(PeerRefusal::Undecodable(_))
        ));
        assert!(matches!(
            open_snapshot(&chunk(snap_msg(3, vec![], 50)), 9, 1, known),
            Err(PeerRefusal::WrongEndpoints { .. })
        ));
        let stranger = SnapshotChunk {
            cluster_id: 8,
            ..chunk(vec![])
        };
        assert!(matches!(
            open_snapshot(&stranger, 9, 1, known),
            Err(PeerRefusal::OtherCluster { .. })
        ));
    }

    /// raft-rs (as leader) parses a proposal's conf change payloads with protobuf 2: from a
    /// peer, only payloads `raftpb` decoded and wrote get that far.
    #[test]
    fn conf_change_payloads_are_checked_and_rewritten() {
        use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, MessageType};
        let propose = |data: Vec<u8>| {
            let mut m = Message::default();
            m.msg_type = MessageType::MsgPropose;
            m.from = 2;
            m.to = 1;
            let mut e = Entry::default();
            e.entry_type = EntryType::EntryConfChange;
            e.data = data.into();
            m.entries = vec![e].into();
            let mut out = Vec::new();
            raftpb::encode_message(&m, &mut out);
            out
        };
        let mut cc = ConfChange::default();
        cc.change_type = ConfChangeType::RemoveNode;
        cc.node_id = 3;
        let mut good = Vec::new();
        raftpb::encode_conf_change(&cc, &mut good);
        // An unknown field (number 100) after it is dropped.
        let with_unknown = [&good[..], &[0xa0, 0x06, 1][..]].concat();
        let out = open_batch(&batch(9, 2, vec![propose(with_unknown)]), 9, 1, known).unwrap();
        assert_eq!(out[0].entries[0].data.as_ref(), &good[..]);
        // Nested groups (RUSTSEC-2024-0437) and garbage are refused.
        for bad in [[0xa3, 0x06].repeat(50_000), vec![0xff; 3]] {
            assert!(matches!(
                open_batch(&batch(9, 2, vec![propose(bad)]), 9, 1, known),
                Err(PeerRefusal::Undecodable(_))
            ));
        }
    }

    #[test]
    fn message_matches_etcd_wording_for_cluster_mismatch() {
        let e = PeerRefusal::OtherCluster {
            got: 0xc6ab534d07e8fcc4,
            want: 0xbc25ea2a74fb18b0,
        };
        assert_eq!(
            e.to_string(),
            "request cluster ID mismatch (got c6ab534d07e8fcc4 want bc25ea2a74fb18b0)"
        );
    }
}
