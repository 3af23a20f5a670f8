//! etcd's gRPC error messages, as a client library sees them.

use detcd_tests::etcd_client::{CompactionOptions, GetOptions};
use detcd_tests::{connect, grpc_message, runtime, subnet, within, Cluster, GUIDE_TOKEN};

#[test]
fn grpc_error_messages() {
    let c = Cluster::start_guide(
        "grpc_errors",
        subnet::GRPC_ERRORS,
        3,
        GUIDE_TOKEN,
        &["--max-request-bytes", "1024"],
    );
    let urls = c.client_urls();
    runtime().block_on(within(60, "the gRPC error scenario", async {
        let mut cl = connect(&urls).await;

        // A range at a compacted revision.
        let first = cl
            .put("k", "v1", None)
            .await
            .expect("put")
            .header()
            .unwrap()
            .revision();
        cl.put("k", "v2", None).await.expect("put");
        let third = cl
            .put("k", "v3", None)
            .await
            .expect("put")
            .header()
            .unwrap()
            .revision();
        cl.compact(third, Some(CompactionOptions::new().with_physical()))
            .await
            .expect("compact");
        let err = cl
            .get("k", Some(GetOptions::new().with_revision(first)))
            .await
            .expect_err("get at a compacted revision");
        assert_eq!(
            grpc_message(&err),
            "etcdserver: mvcc: required revision has been compacted",
            "{err:?}"
        );
        let ok = cl
            .get("k", Some(GetOptions::new().with_revision(third)))
            .await
            .expect("get at the compaction revision");
        assert_eq!(ok.kvs()[0].value(), b"v3");

        // A request over --max-request-bytes.
        let big = "x".repeat(2048);
        let err = cl
            .put("big", big, None)
            .await
            .expect_err("put over --max-request-bytes");
        assert_eq!(
            grpc_message(&err),
            "etcdserver: request is too large",
            "{err:?}"
        );
        assert!(cl.get("big", None).await.expect("get").kvs().is_empty());
        cl.put("small", "x".repeat(512), None)
            .await
            .expect("a put under the limit");

        // An empty key.
        let err = cl
            .put("", "v", None)
            .await
            .expect_err("put with an empty key");
        assert_eq!(
            grpc_message(&err),
            "etcdserver: key is not provided",
            "{err:?}"
        );
    }));
    drop(c);
}
