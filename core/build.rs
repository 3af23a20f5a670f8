// Generates the protobuf messages (etcd's wire types, detcd's own, and detcd's mirror of
// raft's) with a vendored protoc, so a fresh machine needs no system protobuf compiler.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    let mut cfg = prost_build::Config::new();
    // raft's messages (raftpb.proto, see src/raftpb.rs) carry their byte fields as
    // `bytes::Bytes`, as raft-rs's own types do, so converting between them copies nothing.
    cfg.bytes([".detcd.raftpb"]);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let descriptors = out.join("descriptors.bin");
    cfg.file_descriptor_set_path(&descriptors);
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
    // serde for etcd's messages with grpc-gateway's JSON mapping (the JSON gateway, /v3/*):
    // proto field names as etcd's gateway sends them (OrigName), 64-bit integers as strings,
    // bytes as base64, enums by name, default values left out; unknown fields are ignored.
    let set = std::fs::read(&descriptors).expect("descriptor set");
    pbjson_build::Builder::new()
        .register_descriptors(&set)
        .expect("register descriptors")
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".mvccpb", ".etcdserverpb", ".v3lockpb", ".v3electionpb"])
        .expect("generate serde impls");
    println!("cargo:rerun-if-changed=proto");
}
