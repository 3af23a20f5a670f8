//! etcd's configuration model: the flags a member starts with, already parsed and validated.
//! The CLI (server crate) fills this from flags and `ETCD_*` variables; everything else reads it.

use std::fmt;

/// A member URL as etcd accepts it: `scheme://host:port`, nothing more (etcd's types.NewURLs).
/// `Display` gives the normalised string etcd hashes into member IDs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Url {
    pub scheme: Scheme,
    /// Host as written: an IPv4 address, a name, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}://[{}]:{}", self.scheme.as_str(), self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// One `name=url` entry group of `--initial-cluster`; a name listed twice collects both URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<Url>,
}

/// Everything a member is started with. Defaults are etcd 3.4's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: String,
    pub listen_peer_urls: Vec<Url>,
    pub listen_client_urls: Vec<Url>,
    pub initial_advertise_peer_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    /// Members in the order given on the command line.
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub snapshot_count: u64,
    /// Milliseconds.
    pub heartbeat_interval: u64,
    /// Milliseconds.
    pub election_timeout: u64,
    pub quota_backend_bytes: i64,
    pub max_request_bytes: u32,
    pub log_level: String,
}
