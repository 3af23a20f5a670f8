//! The mirror against raft-rs's own protobuf 2 code (here only, on bytes the tests made):
//! every encoding byte-identical both ways, every decoding the same value.

use super::*;
use proptest::prelude::*;
use protobuf::{Message as _, ProtobufEnum};

/// A u64 that is often zero (a field protobuf leaves out) and otherwise anything.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1..300u64, any::<u64>()]
}

fn blob(max: usize) -> impl Strategy<Value = prost::bytes::Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Into::into)
}

/// raft-rs's variant for `n`, by raft-rs's own table (not the one under test).
fn variant<E: ProtobufEnum>(n: i32) -> E {
    E::from_i32(n).unwrap()
}

fn entry() -> impl Strategy<Value = rp::Entry> {
    (0..3i32, num(), num(), blob(40), blob(8), any::<bool>()).prop_map(
        |(ty, term, index, data, context, sync_log)| rp::Entry {
            entry_type: variant(ty),
            term,
            index,
            data,
            context,
            sync_log,
            ..Default::default()
        },
    )
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec(num(), 0..5)
}

fn conf_state() -> impl Strategy<Value = rp::ConfState> {
    (ids(), ids(), ids(), ids(), any::<bool>()).prop_map(
        |(voters, learners, voters_outgoing, learners_next, auto_leave)| rp::ConfState {
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
            ..Default::default()
        },
    )
}

fn snapshot() -> impl Strategy<Value = rp::Snapshot> {
    let metadata =
        (proptest::option::of(conf_state()), num(), num()).prop_map(|(conf_state, index, term)| {
            rp::SnapshotMetadata {
                conf_state: conf_state.into(),
                index,
                term,
                ..Default::default()
            }
        });
    (blob(64), proptest::option::of(metadata)).prop_map(|(data, metadata)| rp::Snapshot {
        data,
        metadata: metadata.into(),
        ..Default::default()
    })
}

fn message() -> impl Strategy<Value = rp::Message> {
    (
        (0..19i32, num(), num(), num(), num(), num()),
        proptest::collection::vec(entry(), 0..4),
        (num(), num(), proptest::option::of(snapshot()), num()),
        (any::<bool>(), num(), blob(8), num()),
        prop_oneof![Just(0i64), -3..3i64, any::<i64>()],
    )
        .prop_map(
            |(
                (ty, to, from, term, log_term, index),
                entries,
                (commit, commit_term, snapshot, request_snapshot),
                (reject, reject_hint, context, deprecated_priority),
                priority,
            )| rp::Message {
                msg_type: variant(ty),
                to,
                from,
                term,
                log_term,
                index,
                entries: entries.into(),
                commit,
                commit_term,
                snapshot: snapshot.into(),
                request_snapshot,
                reject,
                reject_hint,
                context,
                deprecated_priority,
                priority,
                ..Default::default()
            },
        )
}

fn hard_state() -> impl Strategy<Value = rp::HardState> {
    (num(), num(), num()).prop_map(|(term, vote, commit)| rp::HardState {
        term,
        vote,
        commit,
        ..Default::default()
    })
}

fn conf_change() -> impl Strategy<Value = rp::ConfChange> {
    (0..3i32, num(), blob(16), num()).prop_map(|(ty, node_id, context, id)| rp::ConfChange {
        change_type: variant(ty),
        node_id,
        context,
        id,
        ..Default::default()
    })
}

fn conf_change_v2() -> impl Strategy<Value = rp::ConfChangeV2> {
    let single = (0..3i32, num()).prop_map(|(ty, node_id)| rp::ConfChangeSingle {
        change_type: variant(ty),
        node_id,
        ..Default::default()
    });
    (0..3i32, proptest::collection::vec(single, 0..4), blob(16)).prop_map(
        |(t, changes, context)| rp::ConfChangeV2 {
            transition: variant(t),
            changes: changes.into(),
            context,
            ..Default::default()
        },
    )
}

/// Our encoding equals protobuf 2's, both decoders read either back to the value.
fn same_both_ways<M: protobuf::Message + PartialEq>(
    v: &M,
    encode: fn(&M, &mut Vec<u8>),
    decode: fn(&[u8]) -> Result<M, DecodeError>,
) -> Result<(), TestCaseError> {
    let theirs = v.write_to_bytes().unwrap();
    let mut ours = vec![0xAA]; // appends, never overwrites
    encode(v, &mut ours);
    prop_assert_eq!(ours[0], 0xAA);
    prop_assert_eq!(&ours[1..], &theirs[..]);
    let decoded = decode(&theirs);
    prop_assert!(decoded.as_ref() == Ok(v), "decoded {:?}", decoded);
    prop_assert!(M::parse_from_bytes(&ours[1..]).unwrap() == *v);
    Ok(())
}

proptest! {
    #[test]
    fn message_matches_protobuf2(m in message()) {
        same_both_ways(&m, encode_message, decode_message)?;
    }

    #[test]
    fn entry_matches_protobuf2(e in entry()) {
        same_both_ways(&e, encode_entry, decode_entry)?;
    }

    #[test]
    fn hard_state_matches_protobuf2(hs in hard_state()) {
        same_both_ways(&hs, encode_hard_state, decode_hard_state)?;
    }

    #[test]
    fn conf_state_matches_protobuf2(cs in conf_state()) {
        same_both_ways(&cs, encode_conf_state, decode_conf_state)?;
        // A packed encoding (what other protobuf 3 encoders write) reads the same.
        let mut only_voters = rp::ConfState::default();
        only_voters.voters = cs.voters.clone();
        prop_assert_eq!(decode_conf_state(&packed_voters(&cs.voters)), Ok(only_voters));
    }

    #[test]
    fn snapshot_matches_protobuf2(s in snapshot()) {
        same_both_ways(&s, encode_snapshot, decode_snapshot)?;
    }

    #[test]
    fn conf_change_matches_protobuf2(cc in conf_change()) {
        same_both_ways(&cc, encode_conf_change, decode_conf_change)?;
    }

    #[test]
    fn conf_change_v2_matches_protobuf2(cc in conf_change_v2()) {
        same_both_ways(&cc, encode_conf_change_v2, decode_conf_change_v2)?;
    }

    /// Any bytes: an error or a value, never a panic; what decodes re-encodes to bytes that
    /// decode to the same value.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(m) = decode_message(&bytes) {
            let mut again = Vec::new();
            encode_message(&m, &mut again);
            prop_assert_eq!(decode_message(&again), Ok(m));
        }
        let _ = decode_entry(&bytes);
        let _ = decode_conf_state(&bytes);
        let _ = decode_conf_change_v2(&bytes);
    }
}

/// Field 1 (voters) as one packed run.
fn packed_voters(voters: &[u64]) -> Vec<u8> {
    if voters.is_empty() {
        return Vec::new();
    }
    let mut run = Vec::new();
    for &v in voters {
        prost::encoding::encode_varint(v, &mut run);
    }
    let mut out = vec![0x0a];
    prost::encoding::encode_varint(run.len() as u64, &mut out);
    out.extend_from_slice(&run);
    out
}

#[test]
fn known_encodings() {
    let mut hs = rp::HardState::default();
    hs.term = 3;
    hs.vote = 2;
    hs.commit = 7;
    let mut out = Vec::new();
    encode_hard_state(&hs, &mut out);
    assert_eq!(out, [0x08, 3, 0x10, 2, 0x18, 7]);
    // protobuf 2's order, not field-number order: context (6) before sync_log (5), id (1)
    // last in a ConfChange.
    let mut e = rp::Entry::default();
    e.context = vec![9].into();
    e.sync_log = true;
    let mut out = Vec::new();
    encode_entry(&e, &mut out);
    assert_eq!(out, [0x32, 1, 9, 0x28, 1]);
    let mut cc = rp::ConfChange::default();
    cc.id = 5;
    cc.node_id = 4;
    let mut out = Vec::new();
    encode_conf_change(&cc, &mut out);
    assert_eq!(out, [0x18, 4, 0x08, 5]);
}

#[test]
fn unknown_enum_values_are_refused_naming_the_field() {
    // Message { msg_type: 19 }
    assert_eq!(
        decode_message(&[0x08, 19]),
        Err(DecodeError::UnknownEnum {
            field: "Message.msg_type",
            value: 19
        })
    );
    // Message { entries: [Entry { entry_type: 3 }] }
    let err = decode_message(&[0x3a, 2, 0x08, 3]).unwrap_err();
    assert_eq!(err.to_string(), "raft Entry.entry_type has unknown value 3");
    // ConfChange { change_type: -1 } (ten bytes)
    let mut neg = vec![0x10];
    prost::encoding::encode_varint(-1i64 as u64, &mut neg);
    assert_eq!(
        decode_conf_change(&neg),
        Err(DecodeError::UnknownEnum {
            field: "ConfChange.change_type",
            value: -1
        })
    );
    // ConfChangeV2 { transition: 3 }, and a single change of type 7.
    assert!(matches!(
        decode_conf_change_v2(&[0x08, 3]),
        Err(DecodeError::UnknownEnum {
            field: "ConfChangeV2.transition",
            ..
        })
    ));
    assert!(matches!(
        decode_conf_change_v2(&[0x12, 2, 0x08, 7]),
        Err(DecodeError::UnknownEnum {
            field: "ConfChangeSingle.change_type",
            ..
        })
    ));
}

/// `depth` nested start-group tags of field 100 (wire type 3), then their end tags.
fn nested_groups(depth: usize, closed: bool) -> Vec<u8> {
    let start = [0xa3, 0x06]; // (100 << 3) | 3
    let end = [0xa4, 0x06]; // (100 << 3) | 4
    let mut out = start.repeat(depth);
    if closed {
        out.extend(end.repeat(depth));
    }
    out
}

/// The input RUSTSEC-2024-0437 is about: protobuf 2 recurses once per nesting level.
#[test]
fn deeply_nested_input_is_refused() {
    for bytes in [
        nested_groups(100_000, false),
        nested_groups(100_000, true),
        nested_groups(1_000, true),
    ] {
        assert!(matches!(
            decode_message(&bytes),
            Err(DecodeError::Wire { .. })
        ));
        assert!(decode_entry(&bytes).is_err());
        assert!(decode_hard_state(&bytes).is_err());
        assert!(decode_conf_state(&bytes).is_err());
        assert!(decode_snapshot(&bytes).is_err());
        assert!(decode_conf_change(&bytes).is_err());
        assert!(decode_conf_change_v2(&bytes).is_err());
        // Inside a snapshot inside a message, and inside an entry.
        let mut inner = Vec::new();
        inner.push(0x12); // Snapshot.metadata
        prost::encoding::encode_varint(bytes.len() as u64, &mut inner);
        inner.extend_from_slice(&bytes);
        let mut outer = vec![0x4a]; // Message.snapshot
        prost::encoding::encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        assert!(decode_message(&outer).is_err());
        let mut outer = vec![0x3a]; // Message.entries
        prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
        outer.extend_from_slice(&bytes);
        assert!(decode_message(&outer).is_err());
    }
    // A few levels of nested unknown groups are skipped, as protobuf allows.
    assert_eq!(
        decode_hard_state(&[&[0x08, 3][..], &nested_groups(5, true)].concat())
            .unwrap()
            .term,
        3
    );
}

#[test]
fn conf_change_payloads_from_peers_are_rewritten_by_us() {
    let mut cc = rp::ConfChange::default();
    cc.change_type = rp::ConfChangeType::AddLearnerNode;
    cc.node_id = 7;
    cc.id = 9;
    cc.context = vec![1, 2].into();
    let theirs = cc.write_to_bytes().unwrap();
    let mut m = rp::Message::default();
    m.msg_type = rp::MessageType::MsgPropose;
    let mut e = rp::Entry::default();
    e.entry_type = rp::EntryType::EntryConfChange;
    // Protobuf 2's bytes plus an unknown field, which we drop.
    e.data = [&theirs[..], &[0xf8, 0x06, 1][..]].concat().into();
    let normal = rp::Entry {
        data: vec![0xff, 0xff].into(),
        ..Default::default()
    };
    m.entries = vec![normal.clone(), e].into();
    canonicalize_conf_changes(&mut m).unwrap();
    assert_eq!(m.entries[0], normal, "normal entries are left alone");
    assert_eq!(m.entries[1].data.as_ref(), &theirs[..]);

    // An honest peer's payload comes out byte-identical.
    let mut v2 = rp::ConfChangeV2::default();
    v2.transition = rp::ConfChangeTransition::Explicit;
    v2.changes = vec![rp::ConfChangeSingle {
        change_type: rp::ConfChangeType::RemoveNode,
        node_id: 3,
        ..Default::default()
    }]
    .into();
    let theirs = v2.write_to_bytes().unwrap();
    m.entries[1].entry_type = rp::EntryType::EntryConfChangeV2;
    m.entries[1].data = theirs.clone().into();
    canonicalize_conf_changes(&mut m).unwrap();
    assert_eq!(m.entries[1].data.as_ref(), &theirs[..]);

    // Crafted payloads never reach raft-rs.
    for bad in [
        nested_groups(100_000, true),
        vec![0xff, 0xff, 0xff],
        vec![0x08, 9],
    ] {
        m.entries[1].data = bad.into();
        assert!(canonicalize_conf_changes(&mut m).is_err());
    }
}
