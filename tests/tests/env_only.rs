//! Configuration through ETCD_* environment variables only, and the error for an option given
//! both ways.

use detcd_tests::{
    connect, ip, runtime, subnet, within, Cluster, CLIENT_PORT, HEALTHY_TIMEOUT, PEER_PORT,
};
use std::time::Duration;

fn env_config(c: &Cluster, subnet: u8) -> Vec<(String, String)> {
    let me = ip(subnet, 0);
    [
        ("ETCD_NAME", "infra0".to_string()),
        (
            "ETCD_DATA_DIR",
            c.dir().join("infra0.etcd").to_string_lossy().into_owned(),
        ),
        (
            "ETCD_LISTEN_CLIENT_URLS",
            format!("http://{me}:{CLIENT_PORT}"),
        ),
        (
            "ETCD_ADVERTISE_CLIENT_URLS",
            format!("http://{me}:{CLIENT_PORT}"),
        ),
        ("ETCD_LISTEN_PEER_URLS", format!("http://{me}:{PEER_PORT}")),
        (
            "ETCD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://{me}:{PEER_PORT}"),
        ),
        (
            "ETCD_INITIAL_CLUSTER",
            format!("infra0=http://{me}:{PEER_PORT}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn env_only_member_serves() {
    let mut c = Cluster::empty("env_only", subnet::ENV_ONLY);
    let env = env_config(&c, c.subnet);
    let i = c.add("infra0", ip(c.subnet, 0), vec![], env);
    c.members[i].start();
    c.members[i].wait_healthy(HEALTHY_TIMEOUT);
    let url = c.members[i].client_url();
    runtime().block_on(within(30, "put/get on the env-configured member", async {
        let mut cl = connect(&[url]).await;
        cl.put("configured-by", "environment", None)
            .await
            .expect("put");
        let r = cl.get("configured-by", None).await.expect("get");
        assert_eq!(r.kvs()[0].value(), b"environment");
        let list = cl.member_list().await.expect("member_list");
        assert_eq!(list.members().len(), 1);
        assert_eq!(list.members()[0].name(), "infra0");
    }));
    assert!(
        c.members[i].data_dir.is_dir(),
        "ETCD_DATA_DIR was not used: {}",
        c.members[i].data_dir.display()
    );
}

#[test]
fn env_shadowed_by_flag() {
    let mut c = Cluster::empty("env_shadowed", subnet::ENV_SHADOWED);
    let env = env_config(&c, c.subnet);
    // The name is given both ways; everything else only through the environment.
    let i = c.add(
        "infra0",
        ip(c.subnet, 0),
        vec!["--name".into(), "infra0".into()],
        env,
    );
    c.members[i].start();
    let status = c.members[i].wait_exit(Duration::from_secs(10));
    let stderr = c.members[i].stderr();
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains(r#"conflicting environment variable "ETCD_NAME" is shadowed by corresponding command-line flag"#),
        "stderr:\n{stderr}"
    );
}
