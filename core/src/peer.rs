//! Checks on what arrives from the peer port, before anything reaches raft. Pure, so the
//! fuzzer can throw arbitrary bytes at exactly the code the server runs.

use crate::ids::format_id;
use crate::proto::detcdpb::MessageBatch;
use protobuf::Message as _;
use raft::prelude::Message;

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
/// that sender and addressed to this member.
pub fn open_batch(
    batch: &MessageBatch,
    local_cluster: u64,
    local_member: u64,
    is_member: impl Fn(u64) -> bool,
) -> Result<Vec<Message>, PeerRefusal> {
    check_sender(batch.cluster_id, batch.from, local_cluster, is_member)?;
    let mut out = Vec::with_capacity(batch.messages.len());
    for bytes in &batch.messages {
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| PeerRefusal::Undecodable(e.to_string()))?;
        if m.from != batch.from || m.to != local_member {
            return Err(PeerRefusal::WrongEndpoints {
                from: m.from,
                to: m.to,
                stream_from: batch.from,
            });
        }
        out.push(m);
    }
    Ok(out)
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
        m.write_to_bytes().unwrap()
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
