// Generates the protobuf messages (etcd's wire types, detcd's own, and detcd's mirror of
// raft's) with a vendored protoc, so a fresh machine needs no system protobuf compiler.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    let mut cfg = prost_build::Config::new();
    // raft's messages (raftpb.proto, see src/raftpb.rs) carry their byte fields as
    // `bytes::Bytes`, as raft-rs's own types do, so converting between them copies nothing.
    cfg.bytes([".detcd.raftpb"]);
    cfg.compile_protos(
        &[
            "proto/kv.proto",
            "proto/rpc.proto",
            "proto/detcd.proto",
            "proto/raftpb.proto",
            "proto/v3lock.proto",
            "proto/v3election.proto",
        ],
        &["proto"],
    )
    .expect("compile protos");
    println!("cargo:rerun-if-changed=proto");
}
