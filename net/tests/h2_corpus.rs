//! Replays the committed `h2_rewriter` fuzz corpus (`fuzz/corpus/h2_rewriter/`) through the
//! check the fuzz target runs, so every seed and past crash input stays a regression test.
#![cfg(not(madsim))]

#[test]
fn h2_rewriter_corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/h2_rewriter");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let res = std::panic::catch_unwind(|| detcd_net::h2_authority::fuzz_check(&data));
        assert!(res.is_ok(), "{} failed the check", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}
