//! detcd-net: the async member. It drives detcd-core with real I/O in production and with
//! madsim's simulated network, clock and disk under `--cfg madsim` (same code, other crates
//! behind the `tokio` and `tonic` names).

pub mod api;
pub mod coalesce;
pub mod compactor;
pub mod concurrency;
#[cfg(not(madsim))]
pub mod defrag;
pub mod discovery;
pub mod dns;
pub mod errors;
#[cfg(not(madsim))]
pub mod gateway;
#[cfg(not(madsim))]
pub mod h2_authority;
#[cfg(not(madsim))]
pub mod hpack;
pub mod http;
pub mod json_api;
pub mod lease;
#[cfg(not(madsim))]
pub mod listener;
pub mod log_file;
pub mod member;
pub mod metrics;
pub mod mutation;
pub mod node;
pub mod proto;
pub mod snapshot_files;
#[cfg(not(madsim))]
pub mod snapshot_save;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;
pub mod v2_keys;
pub mod v2_members;
pub mod watch;

#[cfg(not(madsim))]
pub use member::run_member;
pub use member::{run_member_with, run_member_with_dns, MemberError};
