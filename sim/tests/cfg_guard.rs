//! `cargo sim` must really simulate. An environment RUSTFLAGS silently replaces the alias's
//! `--cfg madsim`; then every suite compiles to nothing and "0 passed" would look green.
//! The alias sets DETCD_CARGO_SIM, so a run without the cfg fails here, loudly.

#[test]
fn cargo_sim_runs_with_cfg_madsim() {
    if std::env::var_os("DETCD_CARGO_SIM").is_some() && !cfg!(madsim) {
        panic!(
            "cargo sim ran WITHOUT --cfg madsim: RUSTFLAGS (or CARGO_BUILD_RUSTFLAGS) in the \
             environment overrides the alias's rustflags, so nothing was simulated. \
             Unset it and run `cargo sim` again."
        );
    }
}
