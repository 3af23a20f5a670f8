#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (small valid and invalid inputs for each target).
Re-run after changing it; the fuzzer's own finds are not kept here, only these seeds and crash
inputs worth replaying in `cargo test` (core/tests/fuzz_corpus.rs)."""
import os

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

CLUSTER, MEMBER = 0x1000, 1  # as detcd_fuzz::CLUSTER / MEMBER

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
        "bad_unix": "unix://localhost:2379",
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
    },
}

for target, seeds in SEEDS.items():
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
