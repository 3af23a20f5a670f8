//! gRPC service stubs (client and server) over detcd-core's message types.
#![allow(clippy::all, missing_docs)]

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod detcdpb {
    tonic::include_proto!("detcdpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
