//! Member and cluster IDs, computed exactly as etcd computes them (etcd-facts §1–2), so that a
//! detcd cluster started with the same flags reports the same IDs as etcd would.

use sha1::{Digest, Sha1};

use crate::config::Url;

/// etcd's member ID: SHA-1 over the member's peer URL strings sorted bytewise and concatenated
/// without a separator, then the token, then (for `member add` only) the Unix time in decimal
/// seconds; the ID is the first 8 bytes of the digest, big-endian. The name is not hashed.
pub fn member_id(peer_urls: &[Url], token: &str, now_unix_secs: Option<u64>) -> u64 {
    let mut urls: Vec<String> = peer_urls.iter().map(|u| u.to_string()).collect();
    urls.sort();
    let mut hasher = Sha1::new();
    for u in &urls {
        hasher.update(u.as_bytes());
    }
    hasher.update(token.as_bytes());
    if let Some(secs) = now_unix_secs {
        hasher.update(secs.to_string().as_bytes());
    }
    first_u64(&hasher.finalize())
}

/// etcd's cluster ID: SHA-1 over the member IDs sorted ascending, each as 8 big-endian bytes;
/// the first 8 bytes of the digest, big-endian.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

/// An ID as etcd prints it: lowercase hex, no padding.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses an ID printed by `format_id` (as `etcdctl member remove <id>` takes it).
pub fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|s| Url::parse(s).unwrap()).collect()
    }

    #[test]
    fn etcd_unit_test_vectors() {
        assert_eq!(
            member_id(&urls(&["http://10.0.0.8:2379"]), "", None),
            14544069596553697298
        );
        assert_eq!(
            member_id(
                &urls(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"]),
                "",
                None
            ),
            16552244735972308939
        );
        assert_eq!(
            member_id(
                &urls(&["http://10.0.0.2:2379", "http://10.0.0.1:2379"]),
                "",
                None
            ),
            16552244735972308939
        );
    }

    #[test]
    fn guide_cluster_vectors() {
        let token = "etcd-cluster-1";
        let infra0 = member_id(&urls(&["http://127.0.1.10:2380"]), token, None);
        let infra1 = member_id(&urls(&["http://127.0.1.11:2380"]), token, None);
        let infra2 = member_id(&urls(&["http://127.0.1.12:2380"]), token, None);
        assert_eq!(format_id(infra0), "2029998aabe7a1e");
        assert_eq!(format_id(infra1), "e649a9c81f668aa5");
        assert_eq!(format_id(infra2), "3a557c8ef1cd433d");
        assert_eq!(
            format_id(cluster_id(&[infra0, infra1, infra2])),
            "c8f9219ce82804b2"
        );
        // Order of the member IDs does not matter.
        assert_eq!(
            format_id(cluster_id(&[infra2, infra0, infra1])),
            "c8f9219ce82804b2"
        );
    }

    #[test]
    fn default_config_vectors() {
        let id = member_id(&urls(&["http://localhost:2380"]), "etcd-cluster", None);
        assert_eq!(format_id(id), "8e9e05c52164694d");
        assert_eq!(format_id(cluster_id(&[id])), "cdf818194e3a8c32");
    }

    #[test]
    fn token_and_time_change_the_id() {
        let u = urls(&["http://10.0.0.8:2379"]);
        let plain = member_id(&u, "", None);
        assert_ne!(member_id(&u, "etcd-cluster", None), plain);
        let t1 = member_id(&u, "", Some(1_700_000_000));
        assert_ne!(t1, plain);
        assert_ne!(t1, member_id(&u, "", Some(1_700_000_001)));
        // The time is appended as decimal text after the token: "" + "1" == "1" + nothing.
        assert_eq!(member_id(&u, "", Some(1)), member_id(&u, "1", None));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_id(0), "0");
        assert_eq!(format_id(0x2029998aabe7a1e), "2029998aabe7a1e");
        assert_eq!(format_id(u64::MAX), "ffffffffffffffff");
        assert_eq!(parse_id("2029998aabe7a1e"), Some(0x2029998aabe7a1e));
        assert_eq!(parse_id("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(parse_id("10000000000000000"), None);
    }
}
