// gRPC service stubs for etcd's client API and detcd's peer protocol. The message types are
// detcd-core's (extern_path), so core's state machine and the services share one set of types.
fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    tonic_build::configure()
        .extern_path(".mvccpb", "::detcd_core::proto::mvccpb")
        .extern_path(".etcdserverpb", "::detcd_core::proto::etcdserverpb")
        .extern_path(".detcdpb", "::detcd_core::proto::detcdpb")
        .extern_path(".v3lockpb", "::detcd_core::proto::v3lockpb")
        .extern_path(".v3electionpb", "::detcd_core::proto::v3electionpb")
        .compile_protos(
            &[
                "../core/proto/rpc.proto",
                "../core/proto/detcd.proto",
                "../core/proto/v3lock.proto",
                "../core/proto/v3election.proto",
            ],
            &["../core/proto"],
        )
        .expect("compile protos");
    println!("cargo:rerun-if-changed=../core/proto");
}
