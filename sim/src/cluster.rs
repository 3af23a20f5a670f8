//! A detcd cluster on madsim nodes: each member is the production `detcd-net` member
//! (`run_member_with`, the function the binary reaches) on its own simulated host with the
//! guide's address, over a `SimDisk` that survives kill and restart.

use crate::disk::SimDisk;
use detcd_core::config::{parse_initial_cluster, parse_urls, Config};
use detcd_net::proto::etcdserverpb::cluster_client::ClusterClient;
use detcd_net::proto::etcdserverpb::kv_client::KvClient;
use detcd_net::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

/// The guide's three members (10.0.1.10-12 stand for themselves here: the simulated network
/// is private to the process, and madsim treats loopback as "this node").
pub const GUIDE_MEMBERS: [(&str, &str); 3] = [
    ("infra0", "10.0.1.10"),
    ("infra1", "10.0.1.11"),
    ("infra2", "10.0.1.12"),
];

/// The guide's static configuration for member `i` of `members`, with `token`.
pub fn guide_config(members: &[(&str, &str)], i: usize, token: &str) -> Config {
    let (name, ip) = members[i];
    let initial = members
        .iter()
        .map(|(n, a)| format!("{n}=http://{a}:2380"))
        .collect::<Vec<_>>()
        .join(",");
    let mut cfg = Config::default();
    cfg.name = name.to_string();
    cfg.data_dir = format!("{name}.etcd");
    cfg.initial_advertise_peer_urls = parse_urls(&format!("http://{ip}:2380")).unwrap();
    cfg.listen_peer_urls = cfg.initial_advertise_peer_urls.clone();
    cfg.listen_client_urls = parse_urls(&format!("http://{ip}:2379")).unwrap();
    cfg.advertise_client_urls = cfg.listen_client_urls.clone();
    cfg.initial_cluster_token = token.to_string();
    cfg.initial_cluster = parse_initial_cluster(&initial).unwrap();
    cfg
}

/// How a member process ended, if it did (a fatal error, or a clean return).
pub type ExitNote = Arc<Mutex<Option<String>>>;

/// Runs one incarnation of a member on its simulated disk and snapshot files, resolving names
/// through `dns`; when it ends (or its data file cannot be opened), `exit` says how.
pub(crate) async fn run_on_disk(
    cfg: Config,
    disk: SimDisk,
    snapshots: detcd_net::snapshot_files::MemSnapshots,
    dns: detcd_net::dns::SharedDns,
    exit: ExitNote,
) {
    let db = match redb::Builder::new().create_with_backend(disk.open()) {
        Ok(db) => db,
        Err(e) => {
            *exit.lock().unwrap() = Some(format!("cannot open data file: {e}"));
            return;
        }
    };
    let size_disk = disk.clone();
    let res = detcd_net::run_member_with_dns(
        cfg,
        db,
        Box::new(disk.open_log()),
        Arc::new(move || size_disk.len()),
        Arc::new(snapshots),
        None,
        dns,
    )
    .await;
    let note = match res {
        Ok(()) => "stopped".to_string(),
        Err(e) => e.to_string(),
    };
    tracing::info!("member exited: {note}");
    *exit.lock().unwrap() = Some(note);
}

pub struct SimMember {
    pub name: String,
    pub ip: IpAddr,
    pub node: NodeHandle,
    pub disk: SimDisk,
    /// The flags the next (re)start uses; tests change them to check they are ignored.
    pub config: Arc<Mutex<Config>>,
    pub exit: ExitNote,
    /// How many times a process started on this member's host (the first start included).
    pub starts: Arc<AtomicU64>,
    pub alive: bool,
}

impl SimMember {
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
}

pub struct SimCluster {
    pub handle: Handle,
    pub members: Vec<SimMember>,
    /// A host for the harness's own queries (who leads?), outside the members.
    control: NodeHandle,
}

/// Starts one member process on a new simulated host.
pub fn start_member(handle: &Handle, cfg: Config, ip: IpAddr, disk: SimDisk) -> SimMember {
    let name = cfg.name.clone();
    let config = Arc::new(Mutex::new(cfg));
    let exit: ExitNote = Arc::new(Mutex::new(None));
    let starts = Arc::new(AtomicU64::new(0));
    // Snapshot files outlive restarts (they are synced when committed), like the disk.
    let snapshots = detcd_net::snapshot_files::MemSnapshots::default();
    let node = {
        let config = config.clone();
        let disk = disk.clone();
        let exit = exit.clone();
        let starts = starts.clone();
        handle
            .create_node()
            .name(name.clone())
            .ip(ip)
            .init(move || {
                let cfg = config.lock().unwrap().clone();
                let disk = disk.clone();
                let exit = exit.clone();
                let snapshots = snapshots.clone();
                starts.fetch_add(1, Ordering::Relaxed);
                async move {
                    *exit.lock().unwrap() = None;
                    // Under madsim a member resolves no names (NoDns), as run_member_with does.
                    let dns = Arc::new(detcd_net::dns::NoDns);
                    run_on_disk(cfg, disk, snapshots, dns, exit).await;
                }
            })
            .build()
    };
    SimMember {
        name,
        ip,
        node,
        disk,
        config,
        exit,
        starts,
        alive: true,
    }
}

impl SimCluster {
    /// The guide's static three-member cluster with token `etcd-cluster-1`.
    pub fn guide() -> SimCluster {
        SimCluster::start(&GUIDE_MEMBERS, "etcd-cluster-1")
    }

    pub fn start(members: &[(&str, &str)], token: &str) -> SimCluster {
        SimCluster::start_with(members, token, |_| {})
    }

    /// Like `start`, with a chance to change each member's flags first.
    pub fn start_with(
        members: &[(&str, &str)],
        token: &str,
        tweak: impl Fn(&mut Config),
    ) -> SimCluster {
        if std::env::var_os("RUST_LOG").is_some() {
            // The members' logs, e.g. RUST_LOG=info (printed with --nocapture, or on failure).
            madsim::runtime::init_logger();
        }
        let handle = Handle::current();
        let members = (0..members.len())
            .map(|i| {
                let mut cfg = guide_config(members, i, token);
                tweak(&mut cfg);
                start_member(&handle, cfg, members[i].1.parse().unwrap(), SimDisk::new())
            })
            .collect();
        let control = handle
            .create_node()
            .name("control")
            .ip("10.0.1.200".parse().unwrap())
            .build();
        SimCluster {
            handle,
            members,
            control,
        }
    }

    /// The member ID etcd derives for member `i` from its flags.
    pub fn member_id(&self, i: usize) -> u64 {
        let cfg = self.members[i].config.lock().unwrap();
        detcd_core::ids::member_id(
            &cfg.initial_advertise_peer_urls,
            &cfg.initial_cluster_token,
            None,
        )
    }

    /// The member most members name as leader right now, if any.
    pub async fn leader_index(&self) -> Option<usize> {
        let endpoints = self.endpoints();
        let leaders = self
            .control
            .spawn(async move {
                let mut seen = Vec::new();
                for url in endpoints {
                    let Some(mut c) = Client::connect(&url).await else {
                        continue;
                    };
                    let req = detcd_core::proto::etcdserverpb::StatusRequest {};
                    if let Ok(Ok(r)) =
                        madsim::time::timeout(Duration::from_millis(500), c.maintenance.status(req))
                            .await
                    {
                        seen.push(r.into_inner().leader);
                    }
                }
                seen
            })
            .await
            .ok()?;
        let ids: Vec<u64> = (0..self.members.len()).map(|i| self.member_id(i)).collect();
        let mut best = None;
        for (i, id) in ids.iter().enumerate() {
            let votes = leaders.iter().filter(|l| *l == id).count();
            if votes * 2 > self.members.len() - 1 && self.members[i].alive {
                best = Some(i);
            }
        }
        best
    }

    pub fn node_id(&self, i: usize) -> madsim::task::NodeId {
        self.members[i].node.id()
    }

    /// kill -9 plus power loss: unsynced writes are gone.
    pub fn crash(&mut self, i: usize) {
        self.handle.kill(self.node_id(i));
        self.members[i].disk.crash();
        self.members[i].alive = false;
    }

    pub fn restart(&mut self, i: usize) {
        self.handle.restart(self.node_id(i));
        self.members[i].alive = true;
    }

    /// Cuts member `i` off from everyone, both directions.
    pub fn isolate(&self, i: usize) {
        NetSim::current().clog_node(self.node_id(i));
    }

    pub fn heal_all(&self) {
        let net = NetSim::current();
        for m in &self.members {
            net.unclog_node(m.node.id());
            for o in &self.members {
                if m.node.id() != o.node.id() {
                    net.unclog_link(m.node.id(), o.node.id());
                }
            }
        }
    }

    /// One-way cut: messages from `a` to `b` are lost.
    pub fn cut_link(&self, a: usize, b: usize) {
        NetSim::current().clog_link(self.node_id(a), self.node_id(b));
    }

    pub fn exit_of(&self, i: usize) -> Option<String> {
        self.members[i].exit.lock().unwrap().clone()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }
}

/// gRPC clients for one endpoint.
#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub cluster: ClusterClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
}

impl Client {
    pub async fn connect(url: &str) -> Option<Client> {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        Some(Client {
            kv: KvClient::new(ch.clone()),
            cluster: ClusterClient::new(ch.clone()),
            maintenance: MaintenanceClient::new(ch),
        })
    }
}
