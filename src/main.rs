//! The `availdb` binary: parses the command line and runs a subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use availdb::cli::{
    backup, cert, cluster, listener, run_server, status, traffic, up, upgrade, Cli, Command,
};

/// Buffers of at least this size are their own memory mappings, given back
/// to the system when freed (see [`return_large_buffers`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 512 << 10;

/// Makes glibc's allocator give large buffers back to the system when they
/// are freed. By default glibc raises its mmap threshold each time a mapped
/// buffer is freed (up to 32 MiB), after which buffers of log parts, frames
/// and reads come from per-thread heaps that keep their peak: a node's
/// memory then grows with how many threads ever held a buffer, not with
/// what it holds (issue 16: ≈ 50 MB more on every node of a 3-replica group
/// loading one 330 MB transaction). A fixed threshold turns that off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers() {
    // SAFETY: called first thing in main, before any thread starts or
    // allocates concurrently; mallopt only changes allocator parameters.
    let done = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if done != 1 {
        eprintln!("availdb: warning: the allocator refused a fixed mmap threshold; memory may grow with the number of threads");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers() {}

fn main() -> std::process::ExitCode {
    return_large_buffers();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Cluster(_) | Command::Status(_))
        || matches!(&cli.command, Command::TrafficManager(a) if a.command.is_some())
    {
        // A short-lived report: piped into `head`, it ends quietly when the
        // reader goes away, like other command-line tools. (Servers keep
        // Rust's default of ignoring SIGPIPE: a client that hangs up must
        // not kill them.)
        // SAFETY: called before any thread starts; SIG_DFL is a valid
        // disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AVAILDB_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The traffic manager relays small messages both ways: on one thread a
    // socket's wake-up never goes to another worker (`scripts/bench
    // upgrade`, pgbench -S through it).
    let mut builder = if matches!(&cli.command, Command::TrafficManager(a) if a.command.is_none()) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("availdb: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => run_server(args.resolve()?).await,
            Command::Up(args) => up::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Listener(args) => listener::run(args).await,
            Command::TrafficManager(args) => traffic::run(args).await,
            Command::Upgrade(args) => upgrade::run(args).await,
            Command::Backup(args) => backup::run_backup(args).await,
            Command::Restore(args) => backup::run_restore(args).await,
            Command::Cert(args) => cert::run(args),
            Command::Verifier => {
                availdb::cli::verifier(std::io::stdin().lock()).map(|v| println!("{v}"))
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("availdb: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
