// Generates the protobuf messages (etcd's wire types and detcd's own) with a vendored protoc,
// so a fresh machine needs no system protobuf compiler.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    let mut cfg = prost_build::Config::new();
    cfg.compile_protos(
        &["proto/kv.proto", "proto/rpc.proto", "proto/detcd.proto"],
        &["proto"],
    )
    .expect("compile protos");
    println!("cargo:rerun-if-changed=proto");
}
