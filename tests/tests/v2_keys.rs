//! The v2 keys API (`--enable-v2`) side by side with real etcd 3.4: the same requests to a
//! detcd member and an etcd member, and the same answers: HTTP status, action, keys, values,
//! directories, TTLs, error codes, messages and causes. Indexes are left out of the comparison
//! (etcd's v2 index also counts its own member bookkeeping, so it starts higher).

use detcd_tests::{
    etcd_server_path, have_etcd_server, http_request, ip, subnet, Cluster, HEALTHY_TIMEOUT,
};
use serde_json::Value;
use std::time::Duration;

/// Drops what differs between two servers by design: indexes, expiry times, and the index
/// part of in-order keys.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["modifiedIndex", "createdIndex", "index", "expiration"] {
                m.remove(k);
            }
            if let Some(Value::String(key)) = m.get_mut("key") {
                if let Some(rest) = key.strip_prefix("/queue/") {
                    if rest.chars().all(|c| c.is_ascii_digit()) && rest.len() == 20 {
                        *key = "/queue/<in-order>".into();
                    }
                }
            }
            for (_, x) in m.iter_mut() {
                normalize(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn ask(addr: &str, method: &str, path: &str, form: Option<&str>) -> (u16, Value) {
    let (code, body) = http_request(addr, method, path, form, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    let mut v = serde_json::from_str(&body).unwrap_or(Value::String(body.trim().to_string()));
    normalize(&mut v);
    (code, v)
}

#[test]
fn v2_keys_answers_as_etcd_3_4_does() {
    if !have_etcd_server() {
        return;
    }
    let s = subnet::V2_KEYS_VS_ETCD;
    let mut c = Cluster::empty("v2-keys-vs-etcd", s);
    for (i, name) in ["detcd", "etcd"].iter().enumerate() {
        let me = ip(s, i);
        let mut args = detcd_tests::guide_args(c.dir(), s, i, 1, "v2");
        let peer = format!("http://{me}:2380");
        detcd_tests::set_flag(&mut args, "--name", name);
        detcd_tests::set_flag(&mut args, "--initial-cluster", &format!("{name}={peer}"));
        args.push("--enable-v2".into());
        let m = c.add(name, me, args, vec![]);
        if i == 1 {
            c.members[m].bin = etcd_server_path();
        }
        c.members[m].start();
    }
    c.wait_healthy(HEALTHY_TIMEOUT);
    let detcd = c.members[0].client_addr();
    let etcd = c.members[1].client_addr();
    let steps: &[(&str, &str, Option<&str>)] = &[
        ("PUT", "/v2/keys/foo", Some("value=bar")),
        ("GET", "/v2/keys/foo", None),
        ("PUT", "/v2/keys/foo?prevExist=false", Some("value=x")),
        ("PUT", "/v2/keys/foo?prevValue=nope", Some("value=y")),
        ("PUT", "/v2/keys/foo?prevValue=bar", Some("value=baz")),
        ("PUT", "/v2/keys/foo?prevExist=true", Some("value=qux")),
        ("PUT", "/v2/keys/missing?prevExist=true", Some("value=1")),
        ("PUT", "/v2/keys/dir/a", Some("value=1")),
        ("PUT", "/v2/keys/dir/_hidden", Some("value=h")),
        ("PUT", "/v2/keys/dir/sub/b", Some("value=2")),
        ("GET", "/v2/keys/dir?sorted=true", None),
        ("GET", "/v2/keys/dir?recursive=true&sorted=true", None),
        ("GET", "/v2/keys/dir/_hidden", None),
        ("DELETE", "/v2/keys/dir", None),
        ("DELETE", "/v2/keys/dir?dir=true", None),
        ("PUT", "/v2/keys/dir", Some("value=over-a-dir")),
        ("PUT", "/v2/keys/emptydir?dir=true", None),
        ("DELETE", "/v2/keys/emptydir?dir=true", None),
        ("POST", "/v2/keys/queue", Some("value=job")),
        ("PUT", "/v2/keys/qux/bar", Some("value=1")),
        ("PUT", "/v2/keys/foo/bar", Some("value=1")),
        ("GET", "/v2/keys/foo/bar", None),
        ("GET", "/v2/keys/missing", None),
        ("PUT", "/v2/keys/t?ttl=abc", Some("value=1")),
        ("PUT", "/v2/keys/t?ttl=100", Some("value=1")),
        ("GET", "/v2/keys/t", None),
        ("PUT", "/v2/keys/t?refresh=true", None),
        ("PUT", "/v2/keys/t?refresh=true&ttl=50", Some("value=x")),
        ("GET", "/v2/keys/foo?wait=true&waitIndex=abc", None),
        ("GET", "/v2/keys/foo?recursive=maybe", None),
        ("PUT", "/v2/keys/x?wait=true", Some("value=1")),
        ("PUT", "/v2/keys/x?prevValue=", Some("value=1")),
        ("DELETE", "/v2/keys/foo?prevValue=nope", None),
        ("DELETE", "/v2/keys/foo?prevValue=qux", None),
        ("DELETE", "/v2/keys/dir?recursive=true", None),
        ("DELETE", "/v2/keys/", None),
        ("PATCH", "/v2/keys/foo", None),
        ("PUT", "/v2/keys/sp%20ace/x%2Fy", Some("value=decoded")),
        ("GET", "/v2/keys/sp%20ace?recursive=true", None),
        ("PUT", "/v2/keys/form", Some("value=a%2Bb+c")),
        ("GET", "/v2/keys/form", None),
        ("GET", "/v2/keys/?recursive=true&sorted=true", None),
    ];
    let mut differences = Vec::new();
    for (method, path, form) in steps {
        let ours = ask(&detcd, method, path, *form);
        let theirs = ask(&etcd, method, path, *form);
        eprintln!("{method} {path}: {} {}", theirs.0, theirs.1);
        if ours != theirs {
            differences.push(format!(
                "{method} {path} {form:?}:\n  detcd {} {}\n  etcd  {} {}",
                ours.0, ours.1, theirs.0, theirs.1
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
