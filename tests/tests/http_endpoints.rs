//! etcd's plain HTTP endpoints on the client port.

use detcd_tests::{http_get, subnet, Cluster, GUIDE_TOKEN};
use std::time::Duration;

#[test]
fn health_and_version() {
    let c = Cluster::start_guide(
        "http_endpoints",
        subnet::HTTP_ENDPOINTS,
        3,
        GUIDE_TOKEN,
        &[],
    );
    for m in &c.members {
        let (code, body) =
            http_get(&m.client_addr(), "/health", Duration::from_secs(5)).expect("GET /health");
        assert_eq!(code, 200, "/health on {}: {body}", m.name);
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            compact.starts_with(r#"{"health":"true""#) && compact.ends_with('}'),
            "/health on {}: {body:?}",
            m.name
        );

        let (code, body) =
            http_get(&m.client_addr(), "/version", Duration::from_secs(5)).expect("GET /version");
        assert_eq!(code, 200, "/version on {}: {body}", m.name);
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            compact.starts_with('{') && compact.ends_with('}'),
            "/version on {}: {body:?}",
            m.name
        );
        for field in ["etcdserver", "etcdcluster"] {
            let pat = format!("\"{field}\":\"");
            let at = compact
                .find(&pat)
                .unwrap_or_else(|| panic!("/version on {} lacks {field}: {body:?}", m.name));
            let value: String = compact[at + pat.len()..]
                .chars()
                .take_while(|c| *c != '"')
                .collect();
            assert!(
                value.split('.').count() == 3 && value.split('.').all(|p| p.parse::<u32>().is_ok()),
                "/version on {}: {field} is {value:?}, want a version x.y.z",
                m.name
            );
        }
    }
}
