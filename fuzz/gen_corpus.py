#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (small valid and invalid inputs for each target).
Re-run after changing it; the fuzzer's own finds are not kept here, only these seeds and crash
inputs worth replaying in `cargo test` (core/tests/fuzz_corpus.rs)."""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def field_varint(num, v):
    return varint(num << 3) + varint(v)

def field_bytes(num, b):
    return varint((num << 3) | 2) + varint(len(b)) + b

def raft_msg(msg_type, to, frm, term=3, entries=(), extra=b""):
    m = field_varint(1, msg_type) + field_varint(2, to) + field_varint(3, frm) + field_varint(4, term)
    for e in entries:
        m += field_bytes(7, e)
    return m + extra

def entry(term, index, data):
    return field_varint(2, term) + field_varint(3, index) + field_bytes(4, data)

def batch(cluster, frm, msgs):
    b = field_varint(1, cluster) + field_varint(2, frm)
    for m in msgs:
        b += field_bytes(3, m)
    return b

def group_start(num):
    return varint((num << 3) | 3)

def group_end(num):
    return varint((num << 3) | 4)

# RUSTSEC-2024-0437's shape: thousands of nested start-group tags (field 100), which protobuf 2's
# parser recursed into once per level. detcd's decoder (core/src/raftpb.rs) refuses them.
NESTED_GROUPS = group_start(100) * 10000 + group_end(100) * 10000

def conf_change(change_type, node_id):
    return field_varint(2, change_type) + field_varint(3, node_id)

def conf_entry(term, index, data, entry_type=1):
    return field_varint(1, entry_type) + entry(term, index, data)

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

# The raft log file (core/src/wal.rs): magic, then `len u32 LE | crc32c(kind, payload) u32 LE |
# kind u8 | payload` records, the first a base (kind 1: index, term as u64 LE).
WAL_MAGIC = b"detcdwl1"

def wal_record(kind, payload):
    return struct.pack("<II", len(payload), crc32c(bytes([kind]) + payload)) + bytes([kind]) + payload

def wal_base(index, term):
    return wal_record(1, struct.pack("<QQ", index, term))

def wal_entry(payload):
    return wal_record(2, payload)

def wal_hard_state(term, vote, commit):
    return wal_record(3, field_varint(1, term) + field_varint(2, vote) + field_varint(3, commit))

WAL_LOG = (WAL_MAGIC + wal_base(5, 2) + wal_entry(entry(2, 6, b"put foo"))
           + wal_hard_state(2, 1, 6) + wal_entry(conf_entry(2, 7, conf_change(1, 3))))

CLUSTER, MEMBER = 0x1000, 1  # as detcd_fuzz::CLUSTER / MEMBER

# The snapshot file (core/src/state/snapshot.rs): magic, then `len u32 LE | crc32c(payload) u32 LE
# | payload` frames, each a SnapshotFrame: head (1), rows (2), end (3, the row count).
SNAP_MAGIC = b"detcd-snapshot-1\n"

def snap_frame(payload):
    return struct.pack("<II", len(payload), crc32c(payload)) + payload

def snap_head(current_rev, compact_rev):
    # int64 fields as varints (compact -1 is ten bytes, two's complement).
    data = field_varint(1, CLUSTER) + field_varint(4, current_rev) + field_varint(5, compact_rev & (2**64 - 1))
    return snap_frame(field_bytes(1, data))

def mvcc_key(main, sub):
    return struct.pack(">QQ", main, sub)

def snap_rows(rows):
    body = b"".join(field_bytes(1, field_bytes(1, k) + field_bytes(2, v)) for k, v in rows)
    return snap_frame(field_bytes(2, body))

def snap_end(count):
    return snap_frame(varint(3 << 3) + varint(count))

KV = field_bytes(1, b"foo") + field_varint(2, 2) + field_varint(3, 2) + field_varint(4, 1) + field_bytes(5, b"bar")
SNAP_FILE = SNAP_MAGIC + snap_head(2, -1) + snap_rows([(mvcc_key(2, 0), KV)]) + snap_end(1)

def pad512(data):
    return data + b"\0" * (-len(data) % 512)

def with_sha(data):
    return data + hashlib.sha256(data).digest()

def saved(snapshot_file):
    return with_sha(pad512(snapshot_file))

def snapshot_chunk(cluster, frm, message, data=b""):
    return field_varint(1, cluster) + field_varint(2, frm) + field_bytes(3, message) + field_bytes(4, data)

def snapshot_msg(to, frm, data, index=50):
    # MsgSnapshot (7) with snapshot (field 9): data (1), metadata (2) {index (2), term (3)}.
    snap = field_bytes(1, data) + field_bytes(2, field_varint(2, index) + field_varint(3, 2))
    return raft_msg(7, to, frm, extra=field_bytes(9, snap))

SNAP_REF = field_varint(1, len(SNAP_FILE)) + field_varint(2, crc32c(SNAP_FILE))

SEEDS = {
    "url_parse": {
        "ok_http": "http://127.0.0.1:2380",
        "ok_https_name": "https://infra0.example.com:2379",
        "ok_ipv6": "http://[::1]:2380",
        "ok_ipv6_zone": "http://[fe80::1%25eth0]:2380",
        "ok_list": "http://10.0.0.2:2380, HTTP://10.0.0.1:2380",
        "ok_empty_host": "http://:2380",
        "bad_path": "http://127.0.0.1:2380/",
        "bad_no_port": "http://127.0.0.1",
        "bad_scheme": "ftp://127.0.0.1:21",
        "ok_unix": "unix://localhost:2379",
        "bad_unix_no_port": "unix://etcd.unix",
        "bad_userinfo": "http://user@host:1",
        "bad_ipv6_unbracketed": "http://::1:2380",
        "bad_port_range": "http://a:65536",
        "bad_empty_list_item": "http://a:1,,http://b:2",
        "bad_empty": "",
    },
    "initial_cluster": {
        "ok_guide": "infra0=http://10.0.1.10:2380,infra1=http://10.0.1.11:2380,infra2=http://10.0.1.12:2380",
        "ok_two_urls": "infra0=http://10.0.1.10:2380,infra0=http://10.0.1.10:7001",
        "ok_trailing_comma": "a=http://127.0.0.1:2380,",
        "ok_empty": "",
        "ok_ipv6": "m=https://[2001:db8::1]:2380",
        "bad_no_url": "infra0",
        "bad_empty_url": "infra0=",
        "bad_no_name": "=http://127.0.0.1:2380",
        "bad_url": "infra0=http://127.0.0.1",
        "bad_url_path": "infra0=http://127.0.0.1:2380/x",
    },
    "peer_batch": {
        "ok_heartbeat": batch(CLUSTER, 2, [raft_msg(8, MEMBER, 2)]),
        "ok_append": batch(CLUSTER, 3, [raft_msg(3, MEMBER, 3, entries=[entry(3, 7, b"put foo")]),
                                        raft_msg(8, MEMBER, 3)]),
        "ok_empty_batch": batch(CLUSTER, 2, []),
        "bad_other_cluster": batch(0x2000, 2, [raft_msg(8, MEMBER, 2)]),
        "bad_stranger": batch(CLUSTER, 9, [raft_msg(8, MEMBER, 9)]),
        "bad_spoofed_from": batch(CLUSTER, 2, [raft_msg(8, MEMBER, 3)]),
        "bad_not_for_us": batch(CLUSTER, 2, [raft_msg(8, 3, 2)]),
        "bad_garbage_message": batch(CLUSTER, 2, [b"\xff\xff\xff"]),
        "bad_truncated": batch(CLUSTER, 2, [raft_msg(8, MEMBER, 2)])[:-3],
        "bad_huge_length": b"\x1a\xff\xff\xff\xff\x0f",
        "empty": b"",
        # A follower forwarding a conf change proposal: raft-rs (as leader) parses its payload.
        "ok_propose_conf_change": batch(CLUSTER, 2, [raft_msg(2, MEMBER, 2, entries=[
            conf_entry(0, 0, conf_change(1, 3))])]),
        "bad_nested_groups": batch(CLUSTER, 2, [NESTED_GROUPS]),
        "bad_nested_groups_in_entry": batch(CLUSTER, 2, [raft_msg(3, MEMBER, 2, entries=[NESTED_GROUPS])]),
        "bad_nested_groups_in_snapshot": batch(CLUSTER, 2, [raft_msg(7, MEMBER, 2, extra=field_bytes(
            9, field_bytes(2, field_bytes(1, NESTED_GROUPS))))]),
        "bad_nested_groups_in_conf_change": batch(CLUSTER, 2, [raft_msg(2, MEMBER, 2, entries=[
            conf_entry(0, 0, NESTED_GROUPS)])]),
        "bad_unknown_message_type": batch(CLUSTER, 2, [raft_msg(19, MEMBER, 2)]),
    },
    "snapshot_file": {
        "ok_one_row": SNAP_FILE,
        "ok_no_rows": SNAP_MAGIC + snap_head(1, -1) + snap_end(0),
        "bad_magic": b"detcd-snapshot-0\n" + SNAP_FILE[len(SNAP_MAGIC):],
        "bad_cut_before_end": SNAP_FILE[:-12],
        "bad_count": SNAP_MAGIC + snap_head(2, -1) + snap_rows([(mvcc_key(2, 0), KV)]) + snap_end(2),
        "bad_trailing": SNAP_FILE + b"\0",
        "bad_flipped": SNAP_FILE[:30] + bytes([SNAP_FILE[30] ^ 1]) + SNAP_FILE[31:],
        "bad_rows_first": SNAP_MAGIC + snap_rows([(mvcc_key(2, 0), KV)]) + snap_end(1),
        "bad_huge_frame": SNAP_MAGIC + struct.pack("<II", 0xFFFFFFFF, 0),
        "bad_nested_groups": SNAP_MAGIC + snap_frame(NESTED_GROUPS),
        "empty": b"",
    },
    # A saved snapshot (net/src/snapshot_save.rs): the snapshot file zero-padded to a multiple
    # of 512 bytes, then its SHA-256.
    "saved_snapshot": {
        "ok_one_row": saved(SNAP_FILE),
        "ok_no_rows": saved(SNAP_MAGIC + snap_head(1, -1) + snap_end(0)),
        "bad_missing_hash": pad512(SNAP_FILE),
        "bad_wrong_hash": saved(SNAP_FILE)[:-1] + bytes([saved(SNAP_FILE)[-1] ^ 1]),
        "bad_flipped_content": bytes([SNAP_FILE[0] ^ 1]) + saved(SNAP_FILE)[1:],
        "bad_nonzero_padding": with_sha(pad512(SNAP_FILE)[:-1] + b"\x01"),
        "bad_damaged_file": saved(SNAP_FILE[:30] + bytes([SNAP_FILE[30] ^ 1]) + SNAP_FILE[31:]),
        "bad_only_a_hash": with_sha(b""),
        "empty": b"",
    },
    "peer_snapshot": {
        "ok_snapshot": snapshot_chunk(CLUSTER, 2, snapshot_msg(MEMBER, 2, SNAP_REF), SNAP_FILE[:10]),
        "bad_other_cluster": snapshot_chunk(0x2000, 2, snapshot_msg(MEMBER, 2, SNAP_REF)),
        "bad_stranger": snapshot_chunk(CLUSTER, 9, snapshot_msg(MEMBER, 9, SNAP_REF)),
        "bad_spoofed_from": snapshot_chunk(CLUSTER, 2, snapshot_msg(MEMBER, 3, SNAP_REF)),
        "bad_not_a_snapshot": snapshot_chunk(CLUSTER, 2, raft_msg(8, MEMBER, 2)),
        "bad_index_zero": snapshot_chunk(CLUSTER, 2, snapshot_msg(MEMBER, 2, SNAP_REF, index=0)),
        "bad_reference": snapshot_chunk(CLUSTER, 2, snapshot_msg(MEMBER, 2, b"\xff")),
        "bad_nested_groups": snapshot_chunk(CLUSTER, 2, NESTED_GROUPS),
        "empty": b"",
    },
    "wal_records": {
        "ok_empty": b"",
        "ok_base_only": WAL_MAGIC + wal_base(0, 0),
        "ok_log": WAL_LOG,
        "ok_torn_tail": WAL_LOG[:-5],
        "ok_zero_filled_tail": WAL_LOG + bytes(64),
        "bad_magic": b"detcdwl0" + wal_base(0, 0),
        "bad_no_base": WAL_MAGIC + wal_hard_state(1, 1, 1),
        "bad_nested_groups_entry": WAL_MAGIC + wal_base(0, 0) + wal_entry(NESTED_GROUPS),
        "bad_nested_groups_hard_state": WAL_MAGIC + wal_base(0, 0) + wal_record(3, NESTED_GROUPS),
        "bad_unknown_entry_type": WAL_MAGIC + wal_base(0, 0) + wal_entry(conf_entry(1, 1, b"", 3)),
        "bad_mid_log_damage": WAL_LOG[:30] + bytes([WAL_LOG[30] ^ 0x40]) + WAL_LOG[31:],
        "bad_unknown_kind": WAL_MAGIC + wal_base(0, 0) + wal_record(9, b"future"),
    },
}

def member_record(mid, peer, client=b"", learner=False):
    r = field_varint(1, mid) + field_bytes(3, peer)
    if client:
        r += field_bytes(2, b"m") + field_bytes(4, client)
    if learner:
        r += field_varint(5, 1)
    return r

def members_response(cluster, records, removed=()):
    b = field_varint(1, cluster) + field_varint(2, 1)
    for r in records:
        b += field_bytes(3, r)
    for r in removed:
        b += field_varint(4, r)
    return b

RUNNING = [member_record(1, b"http://10.0.1.10:2380", b"http://10.0.1.10:2379"),
           member_record(2, b"http://10.0.1.11:2380", b"http://10.0.1.11:2379"),
           member_record(3, b"http://10.0.1.12:2380", b"http://10.0.1.12:2379")]

SEEDS["remote_cluster"] = {
    "ok_join": members_response(0x1000, RUNNING + [member_record(77, b"http://10.0.1.13:2380", learner=True)], [9]),
    "bad_count": members_response(0x1000, RUNNING),
    "bad_no_match": members_response(0x1000, RUNNING + [member_record(77, b"http://10.0.1.99:2380")]),
    "bad_already_started": members_response(0x1000, RUNNING + [member_record(77, b"http://10.0.1.13:2380", b"http://10.0.1.13:2379")]),
    "bad_nested_groups": members_response(0x1000, [NESTED_GROUPS]),
    "empty": b"",
}

def watch_create(key, end=b"", start=0, watch_id=0):
    c = field_bytes(1, key) + field_bytes(2, end)
    if start:
        c += field_varint(3, start)
    if watch_id:
        c += field_varint(7, watch_id)
    return field_bytes(1, c)

SEEDS["watch_request"] = {
    "ok_single_key": watch_create(b"a"),
    "ok_prefix": watch_create(b"a/", b"a0", start=5),
    "ok_every_key": watch_create(b"", b"\x00"),
    "bad_empty_range": watch_create(b"b", b"a"),
    "bad_equal_ends": watch_create(b"a", b"a", watch_id=3),
    "cancel": field_bytes(2, field_varint(1, 7)),
    "progress": field_bytes(3, b""),
    "empty": b"",
}

for target, seeds in SEEDS.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
