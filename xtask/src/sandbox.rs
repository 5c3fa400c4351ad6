//! `cargo xtask sandbox up|down|status`: our bastion and a local Redis kept
//! running in the background, with the env file that points `tunnel`, `doctor`
//! and `redis` at them; and the hidden `__standin` service bodies.

use crate::context::Context;
use anyhow::{bail, Context as _};
use mesh_sandbox::daemon::{self, DaemonPaths, Running, Started, Status};
use mesh_sandbox::{Env, Role};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The `tunnel status` convention: 3 means not running.
const EXIT_NOT_RUNNING: u8 = 3;

#[derive(clap::Subcommand, Debug)]
pub enum SandboxCmd {
    /// Start the sandbox bastion and Redis in the background and print the env file to use.
    Up {
        /// Run Redis with TLS only, its certificate from a throwaway CA for the endpoint's name.
        #[arg(long)]
        tls: bool,
    },
    /// Stop the background sandbox and remove its files.
    Down,
    /// Say whether the background sandbox runs, and where (exit 0 running, 3 not running).
    Status,
    /// Run the sandbox in the foreground until SIGTERM (what `up` starts, detached).
    #[command(hide = true)]
    Serve {
        /// The directory the background sandbox lives in.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
        /// Run Redis with TLS only.
        #[arg(long)]
        tls: bool,
    },
}

pub fn run(cmd: SandboxCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    if let SandboxCmd::Serve { dir, tls } = cmd {
        daemon::serve(&DaemonPaths::in_dir(dir), tls).context("run the sandbox")?;
        return Ok(ExitCode::SUCCESS);
    }
    let state_root = ctx.config()?.state_root;
    let paths = DaemonPaths::under_state_root(&state_root);
    match cmd {
        SandboxCmd::Up { tls } => up(&paths, tls, ctx),
        SandboxCmd::Down => down(&paths, ctx),
        SandboxCmd::Status => status(&paths, ctx),
        SandboxCmd::Serve { .. } => unreachable!("handled above"),
    }
}

fn up(paths: &DaemonPaths, tls: bool, ctx: &Context) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("find the xtask binary to start the sandbox")?;
    let mut serve = Command::new(exe);
    serve.args(["sandbox", "serve", "--dir"]).arg(paths.dir());
    if tls {
        serve.arg("--tls");
    }
    if !ctx.out.json {
        ctx.out.say("starting the sandbox bastion and redis-server...");
    }
    let (running, new) = match daemon::start(paths, serve).context("start the sandbox")? {
        Started::New(running) => (running, true),
        Started::AlreadyRunning(running) => (running, false),
    };
    if running.ca_cert.is_some() != tls {
        let (has, wants) = if tls { ("without", "with") } else { ("with", "without") };
        bail!(
            "a sandbox {has} TLS is already running (pid {}); stop it with `cargo xtask \
             sandbox down`, then start the one {wants} TLS",
            running.pid
        );
    }

    if ctx.out.json {
        ctx.out.json(&running_json(&running, paths, Some(new)))?;
        return Ok(ExitCode::SUCCESS);
    }
    let state = if new { "sandbox up" } else { "sandbox already running" };
    ctx.out.say(&format!("{state} (pid {})", running.pid));
    describe(&running, paths, ctx);
    let env_file = shell_quote(&running.env_file);
    ctx.out.say(&format!("next: cargo xtask --env-file {env_file} tunnel start"));
    ctx.out.say("stop: cargo xtask sandbox down");
    Ok(ExitCode::SUCCESS)
}

fn down(paths: &DaemonPaths, ctx: &Context) -> anyhow::Result<ExitCode> {
    // The tunnel `up` suggests starting by hand goes first: left running, it would try to
    // reconnect forever to a bastion that no longer exists.
    if let Status::Running(running) = daemon::status(paths) {
        crate::tunnel::stop_configured_by(&running.env_file, ctx)
            .context("stop the tunnel through the sandbox")?;
    }
    let stopped = daemon::stop(paths).context("stop the sandbox")?;
    if ctx.out.json {
        let report = serde_json::json!({ "stopped_pid": stopped, "removed": paths.dir() });
        ctx.out.json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    match stopped {
        Some(pid) => {
            let dir = paths.dir().display();
            ctx.out.say(&format!("sandbox stopped (pid {pid}); removed {dir}"))
        }
        None => ctx.out.say("sandbox was not running; nothing to stop"),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(paths: &DaemonPaths, ctx: &Context) -> anyhow::Result<ExitCode> {
    let status = daemon::status(paths);
    if ctx.out.json {
        let report = match &status {
            Status::Running(running) => running_json(running, paths, None),
            Status::NotRunning => serde_json::json!({ "state": "not running" }),
            Status::Stale { pid } => {
                serde_json::json!({ "state": "not running", "stale_pid": pid })
            }
        };
        ctx.out.json(&report)?;
    }
    match status {
        Status::Running(running) => {
            if !ctx.out.json {
                ctx.out.say(&format!("sandbox running (pid {})", running.pid));
                describe(&running, paths, ctx);
            }
            Ok(ExitCode::SUCCESS)
        }
        Status::NotRunning => {
            if !ctx.out.json {
                ctx.out.say("sandbox not running; start it with `cargo xtask sandbox up`");
            }
            Ok(ExitCode::from(EXIT_NOT_RUNNING))
        }
        Status::Stale { pid } => {
            if !ctx.out.json {
                ctx.out.say(&format!(
                    "sandbox not running (its process {pid} is gone); \
                     `cargo xtask sandbox down` removes what it left"
                ));
            }
            Ok(ExitCode::from(EXIT_NOT_RUNNING))
        }
    }
}

/// Where the running sandbox is, one aligned line per piece.
fn describe(running: &Running, paths: &DaemonPaths, ctx: &Context) {
    let tls = match &running.ca_cert {
        Some(ca) => format!("on, Redis speaks TLS only; CA {}", ca.display()),
        None => "off, Redis speaks plain text".to_string(),
    };
    let lines = [
        ("bastion", format!("127.0.0.1:{} (publickey only)", running.bastion_port)),
        ("redis", format!("{}:6379 -> 127.0.0.1:{}", running.endpoint, running.redis_port)),
        ("tls", tls),
        ("env file", running.env_file.display().to_string()),
        ("log", paths.log_file().display().to_string()),
    ];
    for (name, value) in lines {
        ctx.out.say(&format!("  {name:<9} {value}"));
    }
}

fn running_json(running: &Running, paths: &DaemonPaths, new: Option<bool>) -> serde_json::Value {
    let mut report = serde_json::json!({
        "state": "running",
        "pid": running.pid,
        "bastion_port": running.bastion_port,
        "redis_port": running.redis_port,
        "endpoint": running.endpoint,
        "tls": running.ca_cert.is_some(),
        "ca_cert": running.ca_cert,
        "env_file": running.env_file,
        "log": paths.log_file(),
    });
    if let Some(new) = new {
        report["started"] = serde_json::Value::Bool(new);
    }
    report
}

/// A path as a shell word: quoted when it holds anything but safe characters.
fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+:@".contains(c);
    if text.chars().all(safe) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Arguments of the hidden `__standin` subcommand, the body of each stand-in
/// service under `dev --sandbox` (so no extra binary is built).
#[derive(clap::Args, Debug)]
pub struct StandinArgs {
    /// The service to stand in for: rest-api, mcp-server or worker.
    #[arg(value_parser = |name: &str| name.parse::<Role>())]
    pub role: Role,
}

/// Runs a stand-in service until SIGTERM, reading its ports and Redis from the
/// environment the supervisor gives it.
pub fn run_standin(args: StandinArgs) -> anyhow::Result<ExitCode> {
    let env = Env::from_process();
    mesh_sandbox::run_standin(args.role, &env)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_paths_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote(Path::new("/tmp/mesh-sandbox-x1/sandbox.env")),
            "/tmp/mesh-sandbox-x1/sandbox.env"
        );
        assert_eq!(shell_quote(Path::new("/home/a b/sandbox.env")), "'/home/a b/sandbox.env'");
        assert_eq!(shell_quote(Path::new("/it's/x")), r"'/it'\''s/x'");
    }
}
