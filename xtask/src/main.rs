//! `cargo xtask`: the developer workflow for the platform, from prerequisites
//! and the SSH tunnel to Redis checks and the services.
//!
//! This file only parses flags, finds the workspace root and dispatches; each
//! subcommand lives in its own module and the work itself in `crates/`.

mod ci;
mod completions;
mod context;
mod dev;
mod doctor;
mod env;
mod output;
mod redis;
mod sandbox;
mod tunnel;

use clap::{CommandFactory, Parser, Subcommand};
use context::{Context, GlobalArgs, UsageError};
use mesh_tunnel::control::ControlError;
use mesh_tunnel::TunnelError;
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the thing checked is not right (a doctor [✗], a failed check, a service failed)
  2  usage or configuration error (a missing or unusable key file included)
  130  dev interrupted before its services ran (what it started is stopped)
  tunnel status: 0 up and healthy, 1 degraded or reconnecting, 3 not running, 4 unknown";

/// The developer workflow: checks, SSH tunnel to Redis, and the platform's services.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the checks, the tunnel, a Redis proof, then the services until Ctrl+C.
    Dev(dev::DevArgs),
    /// Show every effective variable, its value (secrets redacted) and where it came from.
    Env(env::EnvArgs),
    /// Check every prerequisite at once, each problem with its fix.
    Doctor(doctor::DoctorArgs),
    /// Install what the tests need, then run fmt, clippy and the whole test suite.
    Ci(ci::CiArgs),
    /// Open, inspect and stop the SSH tunnel to Redis.
    #[command(subcommand)]
    Tunnel(tunnel::TunnelCmd),
    /// Check Redis through the tunnel: ping, info, bench.
    Redis {
        #[command(subcommand)]
        cmd: redis::RedisCmd,
    },
    /// Run our bastion and a local Redis in the background, to try the commands by hand.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCmd),
    /// Stop the services of a `dev` killed outright (started by `dev` itself).
    #[command(name = "__reaper", hide = true)]
    Reaper {
        /// How long the services get between SIGTERM and SIGKILL, in milliseconds.
        grace_ms: u64,
    },
    /// Run a stand-in service (used by `dev --sandbox`).
    #[command(name = "__standin", hide = true)]
    Standin(sandbox::StandinArgs),
    /// Print a shell completion script (bash: completes `cargo xtask ...`).
    Completions {
        /// The shell to generate completions for.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Reaper { grace_ms } = cli.command {
        // Before anything that could fail: the reaper needs no configuration.
        return dev::reap(std::time::Duration::from_millis(grace_ms));
    }
    if !matches!(cli.command, Command::Dev(_)) {
        // `cargo xtask env | head` ends quietly, as command-line tools do. `dev` keeps
        // SIGPIPE ignored: it must outlive its reader to stop the services it started.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    let ctx = match Context::new(cli.global) {
        Ok(ctx) => ctx,
        Err(err) => return report(&err, None),
    };
    let result = match cli.command {
        Command::Dev(args) => dev::run(args, &ctx),
        Command::Env(args) => env::run(args, &ctx),
        Command::Doctor(args) => doctor::run(args, &ctx),
        Command::Ci(args) => ci::run(args, &ctx),
        Command::Tunnel(cmd) => tunnel::run(cmd, &ctx),
        Command::Redis { cmd } => redis::run(cmd, &ctx),
        Command::Sandbox(cmd) => sandbox::run(cmd, &ctx),
        Command::Reaper { .. } => unreachable!("handled above"),
        Command::Standin(args) => sandbox::run_standin(args),
        Command::Completions { shell } => completions::run(shell, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => report(&err, Some(&ctx)),
    }
}

/// The one place that prints an error and picks its exit code.
fn report(err: &anyhow::Error, ctx: Option<&Context>) -> ExitCode {
    let color = ctx.is_some_and(|c| c.out.color);
    output::error_line(color, &chain_text(err));
    let usage = err.chain().any(|cause| {
        cause.is::<mesh_config::ConfigError>()
            || cause.is::<UsageError>()
            || cause.is::<mesh_supervisor::ManifestError>()
            || cause.is::<mesh_supervisor::PathError>()
            || cause.downcast_ref().is_some_and(local_key_problem)
            || cause.downcast_ref().is_some_and(|e| matches!(e, TunnelError::SshConfig(_)))
            || cause.downcast_ref().is_some_and(|e| {
                // A detached tunnel that stopped on a configuration error exited 2 itself.
                matches!(e, ControlError::ChildFailed { status, .. } if status.code() == Some(2))
            })
    });
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Key problems are configuration: the file BASTION_KEY_FILE names is missing, not a file,
/// readable by others, in a format we cannot read or needs a passphrase (the doctor files them
/// all under `SSH key`); no network was involved.
fn local_key_problem(err: &TunnelError) -> bool {
    matches!(
        err,
        TunnelError::KeyUnreadable { .. }
            | TunnelError::KeyPermissions { .. }
            | TunnelError::KeyNeedsPassphrase { .. }
            | TunnelError::WrongPassphrase { .. }
            | TunnelError::UnsupportedKeyFormat { .. }
            | TunnelError::NoCredentials { .. }
    )
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the
/// message already carries (our errors name their OS cause in their own words).
fn chain_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}
