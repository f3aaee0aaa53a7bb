//! The `availdb` binary: parses the command line and runs a subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use availdb::cli::{backup, cluster, listener, run_server, traffic, up, upgrade, Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Cluster(_))
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
            Command::Listener(args) => listener::run(args).await,
            Command::TrafficManager(args) => traffic::run(args).await,
            Command::Upgrade(args) => upgrade::run(args).await,
            Command::Backup(args) => backup::run_backup(args).await,
            Command::Restore(args) => backup::run_restore(args).await,
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
