//! The `detcd` binary: etcd's command line in front of a detcd member.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod cli;
mod config_file;
mod gateway;
mod inert_flags;
mod logging;
mod snapshot;

use std::process::ExitCode;

use cli::Cli;

/// No transparent huge pages for this process's anonymous memory. mimalloc advises its
/// arenas for huge pages (`MADV_HUGEPAGE`) and returns freed memory in 64 KiB pieces, so on a
/// kernel with THP in `madvise` mode (this machine's, and Debian's default) the next touch of
/// a returned piece faults in and zeroes a whole 2 MiB page: `perf` put 19% of a leader's CPU
/// in `clear_page_erms` under 64-client puts. Three alternating pairs (BENCHMARKS.md run 23):
/// 64-client puts 6,417 -> 7,812 req/s, follower CPU -30%. It is mimalloc's `allow_thp=0`
/// option (which does the same `prctl`, but only when read at its start-up); the page cache
/// and redb are unaffected.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    disable_transparent_huge_pages();
    // etcdctl's `snapshot restore|status`, for detcd's saved snapshots (no member flags).
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        return ExitCode::from(snapshot::run(std::env::args().skip(2).collect()));
    }
    let (cli, warnings) = match cli::parse_with_warnings(std::env::args(), std::env::vars()) {
        Ok(parsed) => parsed,
        Err(e) if e.exit_code() == 2 => {
            // Go's flag package: the error, then the usage, exit 2 (as etcd).
            eprintln!("{e}");
            eprint!("{}", cli::help_text());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("detcd: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match cli {
        Cli::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            print!("{}", cli::version_text());
            ExitCode::SUCCESS
        }
        Cli::Bench(args) => ExitCode::from(bench::run(args).await),
        Cli::Gateway(args) => ExitCode::from(gateway::run(args).await),
        Cli::Run(config) => {
            if let Err(e) = logging::init(config.logger, &config.log_outputs, &config.log_level) {
                eprintln!("detcd: {e}");
                return ExitCode::FAILURE;
            }
            for w in warnings {
                tracing::warn!("{w}");
            }
            let fallback = config.discovery.fallback_proxy.then(|| config.clone());
            match detcd_net::run_member(config).await {
                Ok(()) => ExitCode::SUCCESS,
                // etcd stops a removed member and exits 0 (etcdmain: `<-stopped`, Exit(0)).
                Err(detcd_net::MemberError::Node(detcd_net::node::NodeError::Removed)) => {
                    tracing::warn!("the data-dir used by this member must be removed");
                    ExitCode::SUCCESS
                }
                // etcd's osutil.HandleInterrupts: after the handlers, the signal again with
                // its default action, so the process ends by it (systemd counts a SIGTERM
                // death as a clean stop, unlike exit code 143).
                Err(detcd_net::MemberError::Signaled(signal)) => end_by_signal(signal),
                Err(e) if e.is_full_discovery_cluster() && fallback.is_some() => {
                    let cfg = fallback.expect("checked");
                    match detcd_net::discovery::run_fallback_proxy(cfg).await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(p) => {
                            eprintln!("detcd: {e}; {p}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(e) => {
                    eprintln!("detcd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Ends the process by `signal` with its default action (for SIGTERM and SIGINT: terminate),
/// or, should it survive that, with the shell's code for it (128 + the number); exit 0 as
/// PID 1.
fn end_by_signal(signal: i32) -> ExitCode {
    // As the init process of a PID namespace (a container) a signal's default action would
    // not end it: etcd exits 0 there (pkg/osutil/interrupt_unix.go).
    if std::process::id() == 1 {
        return ExitCode::SUCCESS;
    }
    // SAFETY: resetting a signal's disposition and raising it touch no Rust state; the
    // runtime's own handler for it is replaced first, so the default action (terminate) runs.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    ExitCode::from((128 + signal).clamp(0, 255) as u8)
}
