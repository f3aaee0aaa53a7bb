//! `availdb upgrade PLAN.toml`: the rolling upgrade orchestrator
//! (`src/upgrade/`), with `--dry-run`, and `status`, `resume`, `rollback`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::upgrade::{self, Options};

/// `availdb upgrade` options.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UpgradeArgs {
    /// Where the upgrade is, or continue or undo it.
    #[command(subcommand)]
    pub command: Option<UpgradeCommand>,
    /// The plan (TOML; see `docs/ARCHITECTURE.md`, rolling upgrades).
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// Print every step and what it would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `status`, `resume`, `rollback`.
#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Where the upgrade of PLAN is: its phase, each step's duration.
    Status {
        /// The plan.
        plan: PathBuf,
    },
    /// Continue an interrupted upgrade (the interrupted step runs again;
    /// an interrupted upgrade script rolls back).
    Resume {
        /// The plan.
        plan: PathBuf,
    },
    /// Undo the upgrade (refused once the switch to V2 is done).
    Rollback {
        /// The plan.
        plan: PathBuf,
    },
}

/// Runs the subcommand.
pub async fn run(args: UpgradeArgs) -> Result<(), String> {
    let options = Options {
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let outcome = match args.command {
        Some(UpgradeCommand::Status { plan }) => {
            print!("{}", upgrade::status(&plan).map_err(|e| e.to_string())?);
            return Ok(());
        }
        Some(UpgradeCommand::Resume { plan }) => upgrade::start(&plan, false, options).await,
        Some(UpgradeCommand::Rollback { plan }) => upgrade::rollback(&plan, options).await,
        None => {
            let plan = args
                .plan
                .ok_or("no plan: availdb upgrade PLAN.toml (see --help)")?;
            if args.dry_run {
                print!("{}", upgrade::dry_run(&plan).map_err(|e| e.to_string())?);
                return Ok(());
            }
            upgrade::start(&plan, true, options).await
        }
    };
    match outcome {
        Ok(outcome) => {
            print!("{}", outcome.summary);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}
