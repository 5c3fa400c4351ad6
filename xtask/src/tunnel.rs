//! `cargo xtask tunnel`: start (foreground or detached), stop, restart, status,
//! logs, and the user service that keeps the tunnel running.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use mesh_config::Config;
use mesh_tunnel::control::{
    self, ControlError, DetachRequest, Reply, Request, ServiceSpec, SharedTunnel, SignalReason,
    StateDir, StateRoot, StatusReply, StopOutcome, StopVia, TunnelId, TunnelOwner, TunnelRecord,
};
use serde_json::json;

use crate::context::{number_in, Context, UsageError};
use crate::output::{table, BOLD, DIM, WARN};

/// `tunnel status` exit codes, as `systemctl` has them.
const STATUS_EXIT_CODES: &str = "\
Exit codes of `status`: 0 up and healthy, 1 up but degraded, reconnecting or starting,
3 not running, 4 unknown (the state could not be read).";

/// How long `stop` waits for a graceful exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Subcommand, Debug)]
pub enum TunnelCmd {
    /// Open the tunnel and keep it up until Ctrl+C (or in the background with --detach).
    Start(StartArgs),
    /// Stop the tunnel of this configuration (every tunnel with --all).
    Stop(StopArgs),
    /// Stop the tunnel of this configuration, then start it again, detached if it was.
    Restart(StartArgs),
    /// Show every running tunnel: state, forwards, bytes, connections, errors.
    #[command(after_help = STATUS_EXIT_CODES)]
    Status,
    /// Print the tunnel's log.
    Logs(LogsArgs),
    /// Install a user service (systemd on Linux, launchd on macOS) that keeps the tunnel up.
    Install,
    /// Remove the user service written by `install`.
    Uninstall,
    /// Run the tunnel in the foreground as a detached child (used by --detach).
    #[command(hide = true)]
    Serve(StartArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct StartArgs {
    /// Run in the background; return once every forward is verified.
    #[arg(short, long)]
    pub(crate) detach: bool,
    /// Trust and record the bastion's host key if known_hosts has none (trust on first use).
    #[arg(long)]
    pub(crate) accept_new: bool,
    /// Allow TUNNEL_BIND_ADDRESS to be a non-loopback address (others can then use the tunnel).
    #[arg(long)]
    pub(crate) allow_remote_bind: bool,
    /// With --detach, how long to wait for the forwards to be verified.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = number_in::<u64>(1, 3600))]
    pub(crate) wait: u64,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Stop every running tunnel, whatever its configuration (not those `dev` runs).
    #[arg(long)]
    all: bool,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Keep printing lines as they are written (Ctrl+C ends).
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
    lines: usize,
}

pub fn run(cmd: TunnelCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        TunnelCmd::Start(args) if args.detach => start_detached(&args, ctx),
        TunnelCmd::Start(args) => run_foreground(&args, ctx, false),
        TunnelCmd::Serve(args) => run_foreground(&args, ctx, true),
        TunnelCmd::Stop(args) => stop(&args, ctx),
        TunnelCmd::Restart(args) => {
            // Like `systemctl restart`: a detached tunnel comes back detached.
            let detach = args.detach || was_detached(ctx);
            stop(&StopArgs { all: false }, ctx)?;
            if detach {
                start_detached(&args, ctx)
            } else {
                run_foreground(&args, ctx, false)
            }
        }
        TunnelCmd::Status => status(ctx),
        TunnelCmd::Logs(args) => logs(&args, ctx),
        TunnelCmd::Install => install(ctx),
        TunnelCmd::Uninstall => uninstall(ctx),
    }
}

/// True when this configuration's tunnel runs and was started detached.
fn was_detached(ctx: &Context) -> bool {
    setup(ctx).ok().and_then(|setup| setup.state.running_record()).is_some_and(|r| r.detached)
}

/// The loaded configuration and where its tunnel keeps its state.
struct Setup {
    config: Config,
    root: StateRoot,
    state: StateDir,
}

fn setup(ctx: &Context) -> anyhow::Result<Setup> {
    let config = ctx.config()?;
    let root = StateRoot::from_config(&config);
    let bastion = config.require_bastion()?;
    if config.forwards.is_empty() {
        return Err(UsageError(
            "no forward is configured: set ELASTICACHE_ENDPOINT (see .env.example)".into(),
        )
        .into());
    }
    let id = TunnelId::new(&bastion.host, bastion.port, &bastion.user, &config.forwards);
    let state = root.tunnel(&id);
    Ok(Setup { config, root, state })
}

/// Stops the tunnel that `--env-file env_file tunnel start` would have started, if one runs
/// (`sandbox down` uses it for the tunnel `sandbox up` suggests); says what it stopped.
pub(crate) fn stop_configured_by(env_file: &Path, ctx: &Context) -> anyhow::Result<()> {
    // Loaded without printing its warnings again: the user saw them when starting it.
    let config = mesh_config::load(&ctx.load_options(vec![env_file.to_path_buf()], Vec::new()))?;
    let Ok(bastion) = config.require_bastion() else { return Ok(()) };
    let id = TunnelId::new(&bastion.host, bastion.port, &bastion.user, &config.forwards);
    let state = StateRoot::from_config(&config).tunnel(&id);
    let exes: Vec<PathBuf> = std::env::current_exe().into_iter().collect();
    let outcome = match runtime()?.block_on(control::stop(&state, &exes, STOP_GRACE)) {
        Err(e @ ControlError::OwnedByDev { .. }) => {
            ctx.out.say(&e.to_string());
            return Ok(());
        }
        outcome => outcome?,
    };
    if let StopOutcome::Stopped { pid, .. } = outcome {
        let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
        ctx.out.say(&format!("tunnel {id}{pid} through the sandbox stopped"));
    }
    Ok(())
}

/// The state root without a valid configuration (for `status`, `stop --all`).
fn state_root_or_env(ctx: &Context) -> anyhow::Result<StateRoot> {
    match ctx.config() {
        Ok(config) => Ok(StateRoot::from_config(&config)),
        Err(_) => Ok(StateRoot::from_env()?),
    }
}

/// The runtime of every tunnel command, the tunnel process included. One
/// thread: a forward is I/O bound, and a minimal russh forward measured here
/// was faster on the single-threaded runtime (1.0-1.1x OpenSSH) than on the
/// multi-threaded one (0.9x); the engine's benchmark compares both.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// The addresses to bind: empty (both loopbacks) for the default, the
/// configured one otherwise, refused when not loopback without the flag.
pub(crate) fn bind_addrs(
    config: &Config,
    args: &StartArgs,
    ctx: &Context,
) -> anyhow::Result<Vec<IpAddr>> {
    let bind = config.tunnel.bind;
    if bind == IpAddr::from([127, 0, 0, 1]) {
        return Ok(Vec::new());
    }
    if !bind.is_loopback() {
        if !args.allow_remote_bind {
            return Err(UsageError(format!(
                "TUNNEL_BIND_ADDRESS={bind} would expose Redis to other machines: pass \
                 --allow-remote-bind if that is intended, or unset it to bind loopback only"
            ))
            .into());
        }
        ctx.out.warn(&format!(
            "binding {bind}: anyone who reaches this machine on the forwarded ports reaches Redis"
        ));
    }
    Ok(vec![bind])
}

pub(crate) fn spec(
    config: &Config,
    args: &StartArgs,
    bind_addrs: Vec<IpAddr>,
) -> anyhow::Result<mesh_tunnel::TunnelSpec> {
    let bastion = config.require_bastion()?;
    let mut spec = mesh_tunnel::TunnelSpec::new(bastion.host.clone(), config.forwards.clone());
    // Left unset (0, empty), the port and user come from a `Host` alias of
    // ~/.ssh/config when there is one, else 22 and ec2-user.
    if config.is_set("BASTION_PORT") {
        spec.port = bastion.port;
    }
    if config.is_set("BASTION_USER") {
        spec.user = bastion.user.clone();
    }
    spec.key_file = bastion.key_file.clone();
    spec.passphrase = bastion.passphrase.clone();
    spec.known_hosts = bastion.known_hosts.clone();
    spec.accept_new = args.accept_new;
    spec.bind_addrs = bind_addrs;
    spec.keepalive_interval = config.tunnel.keepalive_interval;
    spec.keepalive_count = config.tunnel.keepalive_count;
    spec.connect_timeout = config.tunnel.connect_timeout;
    if let Some(home) = config.shell_var("HOME") {
        spec.ssh_config = Some(Path::new(home).join(".ssh/config"));
    }
    Ok(spec)
}

/// Runs the tunnel in this process until Ctrl+C, SIGTERM, SIGHUP or a `stop`
/// on the control socket; exit 0 after a clean stop.
fn run_foreground(
    args: &StartArgs,
    ctx: &Context,
    detached_child: bool,
) -> anyhow::Result<ExitCode> {
    let Setup { config, state, .. } = setup(ctx)?;
    let bind_addrs = bind_addrs(&config, args, ctx)?;
    let mut spec = spec(&config, args, bind_addrs)?;
    if detached_child {
        // No terminal: a passphrase comes from the environment or not at all.
        spec.interactive = false;
    }
    let lock = match state.lock() {
        Ok(lock) => lock,
        Err(ControlError::AlreadyRunning { .. }) => return already_running(ctx, &state),
        Err(e) => return Err(e.into()),
    };

    let rt = runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new()?;
        let bound = mesh_tunnel::bind(spec.clone()).await?;
        if !detached_child {
            ctx.out.say(&format!("tunnel: listening, connecting to {} ...", spec.destination()));
        }
        // Ctrl+C while connecting is a clean stop too.
        let tunnel = tokio::select! {
            started = bound.start() => started?,
            reason = signals.next() => {
                ctx.out.say(&format!("tunnel {} not started ({reason})", state.id));
                return Ok(ExitCode::SUCCESS);
            }
        };
        let (shared, guard, record) =
            serve_as(TunnelOwner::Tunnel, detached_child, tunnel, &config, &state, &spec, lock)
                .await?;
        tracing::info!(id = %state.id, pid = record.pid, "tunnel up, every forward verified");
        if !detached_child {
            say_up(ctx, &state, &record);
        }

        let reason = tokio::select! {
            reason = signals.next() => reason,
            _ = guard.stopped() => "stop requested",
        };
        tracing::info!(reason, "stopping the tunnel");
        shared.shutdown_now().await;
        drop(guard);
        ctx.out.say(&format!("tunnel {} stopped ({reason})", state.id));
        Ok(ExitCode::SUCCESS)
    })
}

/// Serves a tunnel `dev` runs in its own process on the control socket, so
/// `tunnel status` sees it; recorded as `dev`'s, so `tunnel stop` leaves it to
/// `dev` (a stop would leave `dev` running without it).
pub(crate) async fn serve(
    tunnel: mesh_tunnel::Tunnel,
    config: &Config,
    state: &StateDir,
    spec: &mesh_tunnel::TunnelSpec,
    lock: control::PidLock,
) -> anyhow::Result<(Arc<SharedTunnel>, control::ControlGuard, TunnelRecord)> {
    serve_as(TunnelOwner::Dev, false, tunnel, config, state, spec, lock).await
}

/// Serves a started tunnel on its control socket (status, health with the
/// configured Redis AUTH, stop), recording who runs it and whether detached.
async fn serve_as(
    owner: TunnelOwner,
    detached: bool,
    tunnel: mesh_tunnel::Tunnel,
    config: &Config,
    state: &StateDir,
    spec: &mesh_tunnel::TunnelSpec,
    lock: control::PidLock,
) -> anyhow::Result<(Arc<SharedTunnel>, control::ControlGuard, TunnelRecord)> {
    let (user, password) = match &config.redis {
        Some(redis) => (redis.username.clone(), redis.password.clone()),
        None => (None, None),
    };
    let shared = Arc::new(SharedTunnel::new(tunnel).with_redis_auth(user, password));
    let record = TunnelRecord { owner, detached, ..TunnelRecord::new(state, spec) };
    let guard = control::serve_control(shared.clone(), lock, record.clone()).await?;
    Ok((shared, guard, record))
}

/// The signals that stop a foreground tunnel cleanly, listened to from
/// before the first connect.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listen for SIGHUP")?,
        })
    }

    /// Waits for the next one; says which.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

pub(crate) fn say_up(ctx: &Context, state: &StateDir, record: &TunnelRecord) {
    let host = format!("{}@{}:{}", record.bastion_user, record.bastion_host, record.bastion_port);
    ctx.out.say(&format!("tunnel {} up through {host} (pid {})", state.id, record.pid));
    // Clients should dial the address itself: `localhost` may resolve to the other family.
    let local = record.bind_addrs.first().map_or("127.0.0.1".to_string(), ToString::to_string);
    for f in &record.forwards {
        ctx.out.say(&format!(
            "  {:<10} {local}:{} -> {}:{}",
            f.name, f.local_port, f.remote_host, f.remote_port
        ));
    }
}

/// Re-executes this binary as `tunnel serve` in its own session and returns
/// once it reports every forward verified.
fn start_detached(args: &StartArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let Setup { config, state, .. } = setup(ctx)?;
    bind_addrs(&config, args, ctx)?;
    let rt = runtime()?;
    if state.is_locked()? {
        return already_running(ctx, &state);
    }

    let bastion = config.require_bastion()?;
    let passphrase =
        control::passphrase_for_child(bastion.key_file.as_deref(), bastion.passphrase.as_ref())?;
    let request = detach_request(args, ctx, passphrase)?;
    let reply = rt.block_on(control::start_detached(&state, request))?;
    if ctx.out.json {
        ctx.out.json(&start_json(&reply, false))?;
    } else {
        say_up(ctx, &state, &reply.config);
        ctx.out.say(&ctx.out.paint(DIM, &format!("log: {}", state.log_file.display())));
    }
    Ok(ExitCode::SUCCESS)
}

/// What `start --json` prints: the status reply with the state on top and
/// whether the tunnel already ran.
fn start_json(reply: &StatusReply, already_running: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(reply).expect("a status reply always serializes");
    value["state"] = json!(reply.state().unwrap_or("unknown"));
    value["already_running"] = json!(already_running);
    value
}

/// `start` when this configuration's tunnel already runs: say so (exit 0), in
/// `--json` with the same fields a start prints.
fn already_running(ctx: &Context, state: &StateDir) -> anyhow::Result<ExitCode> {
    let pid = state.read_pid().ok().flatten();
    if ctx.out.json {
        let reply = runtime()?.block_on(control::request(
            &state.socket,
            Request::Status,
            Duration::from_secs(3),
        ));
        let value = match reply {
            Ok(Reply::Status(status)) => start_json(&status, true),
            // Locked but not answering yet: a start still verifying its forwards.
            _ => json!({ "id": state.id.as_str(), "pid": pid, "state": "starting",
                         "already_running": true }),
        };
        ctx.out.json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    ctx.out.say(&format!(
        "tunnel {} is already running{pid}: `cargo xtask tunnel status` shows it",
        state.id
    ));
    Ok(ExitCode::SUCCESS)
}

/// The child's command line: the same env files and verbosity, `tunnel
/// serve` with the same flags. `--set` values go in its environment, where
/// they still win over the files (and a secret stays out of `ps`).
fn detach_request(
    args: &StartArgs,
    ctx: &Context,
    passphrase: Option<mesh_config::Secret>,
) -> anyhow::Result<DetachRequest> {
    let program = std::env::current_exe().context("find the path of this binary")?;
    let mut argv: Vec<OsString> = Vec::new();
    for file in &ctx.global.env_files {
        argv.push("--env-file".into());
        argv.push(ctx.cwd.join(file).into());
    }
    for _ in 0..ctx.global.verbose {
        argv.push("-v".into());
    }
    argv.extend(["tunnel".into(), "serve".into()]);
    if args.accept_new {
        argv.push("--accept-new".into());
    }
    if args.allow_remote_bind {
        argv.push("--allow-remote-bind".into());
    }
    let mut env: Vec<(OsString, OsString)> =
        ctx.global.set.iter().map(|(k, v)| (k.into(), v.into())).collect();
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG".into(), "info".into()));
    }
    // Asked here on our terminal; the child reads it like a configured one.
    if let Some(passphrase) = passphrase {
        env.push(("BASTION_KEY_PASSPHRASE".into(), passphrase.expose().into()));
    }
    Ok(DetachRequest { program, args: argv, env, wait: Duration::from_secs(args.wait) })
}

fn stop(args: &StopArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let states = if args.all {
        state_root_or_env(ctx)?.list()?
    } else {
        let setup = setup(ctx).context(
            "cannot tell which tunnel to stop from this configuration; \
             `cargo xtask tunnel stop --all` stops every running tunnel",
        )?;
        vec![setup.state]
    };
    let rt = runtime()?;
    let exes: Vec<PathBuf> = std::env::current_exe().into_iter().collect();
    let mut stopped = Vec::new();
    let mut skipped = Vec::new();
    for state in &states {
        let outcome = match rt.block_on(control::stop(state, &exes, STOP_GRACE)) {
            Err(e @ ControlError::OwnedByDev { .. }) if args.all => {
                ctx.out.say(&e.to_string());
                skipped.push(state.id.to_string());
                continue;
            }
            outcome => outcome?,
        };
        match &outcome {
            StopOutcome::NotRunning { cleaned } if cleaned.is_empty() => {
                if !args.all {
                    ctx.out.say(&format!("tunnel {} is not running", state.id));
                }
            }
            StopOutcome::NotRunning { cleaned } => {
                let files: Vec<String> = cleaned.iter().map(|p| p.display().to_string()).collect();
                ctx.out.say(&format!(
                    "tunnel {} was not running; removed what a crashed run left: {}",
                    state.id,
                    files.join(", ")
                ));
            }
            StopOutcome::Stopped { pid, via } => {
                let pid = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                let how = match via {
                    StopVia::ControlSocket => "",
                    StopVia::Sigterm(SignalReason::NoAnswer) => {
                        " with SIGTERM (its control socket did not answer)"
                    }
                    StopVia::Sigterm(SignalReason::NotExited) => {
                        " with SIGTERM (it answered the stop but had not exited)"
                    }
                    StopVia::Sigterm(SignalReason::UnexpectedReply) => {
                        " with SIGTERM (its control socket answered the stop unexpectedly)"
                    }
                    StopVia::Sigkill => " with SIGKILL (it ignored SIGTERM)",
                };
                ctx.out.say(&format!("tunnel {}{pid} stopped{how}", state.id));
                stopped.push(state.id.to_string());
            }
        }
    }
    if args.all && stopped.is_empty() && skipped.is_empty() {
        ctx.out.say("no tunnel was running");
    }
    if ctx.out.json {
        ctx.out.json(&json!({ "stopped": stopped, "skipped": skipped }))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One tunnel as `status` sees it.
#[derive(serde::Serialize)]
struct TunnelReport {
    id: String,
    /// `up`, `reconnecting`, `starting`, `degraded`, `unknown`.
    state: String,
    pid: Option<u32>,
    /// The command running it (`tunnel` or `dev`), when its record says.
    owner: Option<TunnelOwner>,
    /// Started with `tunnel start --detach`.
    detached: Option<bool>,
    status: Option<StatusReply>,
    health: Option<control::HealthReply>,
    error: Option<String>,
    /// Files removed because a crashed run left them.
    cleaned: Vec<PathBuf>,
}

impl TunnelReport {
    /// This tunnel's `systemctl`-like code: 0 up, 1 degraded, reconnecting or
    /// starting, 3 not running (stale files cleaned), 4 unknown.
    fn exit_code(&self) -> u8 {
        match self.state.as_str() {
            "up" => 0,
            "not running" => 3,
            "unknown" => 4,
            _ => 1,
        }
    }
}

/// The code for all tunnels: 4 if any state is unreadable, 3 if none runs,
/// else the worst of the running ones.
fn overall_exit_code(reports: &[TunnelReport]) -> u8 {
    let codes: Vec<u8> = reports.iter().map(TunnelReport::exit_code).collect();
    if codes.contains(&4) {
        return 4;
    }
    codes.into_iter().filter(|c| *c != 3).max().unwrap_or(3)
}

fn status(ctx: &Context) -> anyhow::Result<ExitCode> {
    let root = state_root_or_env(ctx)?;
    let states = match root.list() {
        Ok(states) => states,
        Err(e) => {
            crate::output::error_line(ctx.out.color, &format!("cannot read the tunnel state: {e}"));
            return Ok(ExitCode::from(4));
        }
    };
    let rt = runtime()?;
    let mut reports = Vec::new();
    for state in &states {
        if let Some(report) = rt.block_on(ask(state)) {
            reports.push(report);
        }
    }

    let code = overall_exit_code(&reports);
    if ctx.out.json {
        ctx.out.json(&json!({ "tunnels": reports, "exit_code": code }))?;
    } else {
        print_status(ctx, &reports);
    }
    Ok(ExitCode::from(code))
}

/// Asks one configuration's tunnel; `None` when it does not run (stale files
/// of a crashed run are removed and reported as such).
async fn ask(state: &StateDir) -> Option<TunnelReport> {
    let mut report = TunnelReport {
        id: state.id.to_string(),
        state: "unknown".into(),
        pid: None,
        owner: None,
        detached: None,
        status: None,
        health: None,
        error: None,
        cleaned: Vec::new(),
    };
    match state.is_locked() {
        Ok(false) => {
            report.cleaned = state.remove_stale().ok()?;
            if report.cleaned.is_empty() {
                return None;
            }
            report.state = "not running".into();
            return Some(report);
        }
        Ok(true) => {}
        Err(e) => {
            report.error = Some(e.to_string());
            return Some(report);
        }
    }
    report.pid = state.read_pid().ok().flatten();
    if let Some(record) = state.running_record() {
        (report.owner, report.detached) = (Some(record.owner), Some(record.detached));
    }

    let timeout = Duration::from_secs(3);
    match control::request(&state.socket, Request::Status, timeout).await {
        Ok(Reply::Status(status)) => {
            report.state = status.state().unwrap_or("unknown").to_owned();
            report.pid = Some(status.pid);
            report.owner = Some(status.config.owner);
            report.detached = Some(status.config.detached);
            report.status = Some(status);
        }
        Ok(other) => report.error = Some(format!("unexpected reply {other:?}")),
        Err(ControlError::Connect { .. }) => {
            // Locked but no socket yet: the forwards are still being verified.
            report.state = "starting".into();
            return Some(report);
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    if report.state == "up" {
        // The tunnel bounds its PING by 5 s; give the socket more, so a hung Redis is
        // reported as the degraded tunnel it is, not as an unanswered socket.
        match control::request(&state.socket, Request::Health, Duration::from_secs(8)).await {
            Ok(Reply::Health(health)) => {
                if !health.ok {
                    report.state = "degraded".into();
                }
                report.health = Some(health);
            }
            Ok(other) => report.error = Some(format!("unexpected reply {other:?}")),
            Err(e) => {
                report.state = "degraded".into();
                report.error = Some(e.to_string());
            }
        }
    }
    Some(report)
}

fn print_status(ctx: &Context, reports: &[TunnelReport]) {
    if reports.is_empty() {
        ctx.out.say("no tunnel is running: start one with `cargo xtask tunnel start --detach`");
        return;
    }
    for (i, report) in reports.iter().enumerate() {
        if i > 0 {
            ctx.out.say("");
        }
        let style = if report.state == "up" { BOLD } else { WARN };
        let pid = report.pid.map(|p| format!("pid {p}")).unwrap_or_default();
        let owner = match (report.owner, report.detached) {
            (Some(TunnelOwner::Dev), _) => ", run by `cargo xtask dev`",
            (Some(TunnelOwner::Tunnel), Some(true)) => ", detached",
            (Some(TunnelOwner::Tunnel), _) => ", foreground",
            (None, _) => "",
        };
        ctx.out.say(&format!(
            "{}  {}  {pid}{owner}",
            ctx.out.paint(BOLD, &report.id),
            ctx.out.paint(style, &report.state)
        ));
        if !report.cleaned.is_empty() {
            let files: Vec<String> =
                report.cleaned.iter().map(|p| p.display().to_string()).collect();
            ctx.out.say(&format!("  removed what a crashed run left: {}", files.join(", ")));
        }
        if let Some(error) = &report.error {
            ctx.out.say(&format!("  cannot read its state: {error}"));
        }
        if let Some(status) = &report.status {
            print_tunnel(ctx, status, report.health.as_ref());
        }
    }
}

fn print_tunnel(ctx: &Context, status: &StatusReply, health: Option<&control::HealthReply>) {
    let t = &status.tunnel;
    let rtt = t["keepalive_rtt_ms"]
        .as_f64()
        .map(|ms| format!("{ms:.1} ms"))
        .unwrap_or_else(|| "-".into());
    let uptime = t["uptime_secs"].as_u64().map(human_duration).unwrap_or_else(|| "-".into());
    let c = &status.config;
    ctx.out.say(&format!(
        "  bastion {}@{}:{}, up {uptime}, {} reconnects, keepalive rtt {rtt}",
        c.bastion_user,
        c.bastion_host,
        c.bastion_port,
        t["reconnects"].as_u64().unwrap_or(0)
    ));

    let header = ["FORWARD", "LOCAL", "REMOTE", "UP", "DOWN", "ACTIVE", "TOTAL", "FAILED"];
    let mut rows =
        vec![header.iter().map(|h| format!("  {}", ctx.out.paint(DIM, h))).collect::<Vec<_>>()];
    rows[0].iter_mut().skip(1).for_each(|h| *h = h.trim_start().to_owned());
    let forwards = t["forwards"].as_array().cloned().unwrap_or_default();
    for f in &forwards {
        let num = |key: &str| f[key].as_u64().unwrap_or(0);
        rows.push(vec![
            format!("  {}", f["name"].as_str().unwrap_or("?")),
            // The first address actually bound (IPv4 loopback before ::1).
            f["bound"]
                .as_array()
                .and_then(|bound| bound.first())
                .and_then(|addr| addr.as_str())
                .map_or_else(|| format!("127.0.0.1:{}", num("local_port")), str::to_string),
            format!("{}:{}", f["remote_host"].as_str().unwrap_or("?"), num("remote_port")),
            human_bytes(num("bytes_up")),
            human_bytes(num("bytes_down")),
            num("active_connections").to_string(),
            num("total_connections").to_string(),
            num("failed_connections").to_string(),
        ]);
    }
    ctx.out.say(table(&rows).trim_end());

    if let Some(reason) = t["reason"].as_str() {
        ctx.out.say(&format!("  reconnecting: {reason}"));
    }
    if let Some(error) = t["last_error"].as_str() {
        ctx.out.say(&format!("  last error: {error}"));
    }
    for f in &forwards {
        if let Some(message) = f["last_channel_error"]["message"].as_str() {
            ctx.out.say(&format!(
                "  {} last channel error: {message}",
                f["name"].as_str().unwrap_or("?")
            ));
        }
    }
    if let Some(h) = health {
        let latency = h.latency_ms.map(|ms| format!(" in {ms:.1} ms")).unwrap_or_default();
        ctx.out.say(&format!("  health: {}{latency}", h.detail));
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn human_duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn logs(args: &LogsArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    if ctx.out.json {
        return Err(UsageError(
            "`tunnel logs` has no --json output: the log is plain text, one line per event; \
             run it without --json"
                .into(),
        )
        .into());
    }
    let state = match setup(ctx) {
        Ok(setup) => setup.state,
        Err(err) => {
            // Without a configuration, the one tunnel that has a log will do.
            let mut states = state_root_or_env(ctx)?.list()?;
            states.retain(|s| s.log_file.exists());
            match states.len() {
                1 => states.remove(0),
                _ => return Err(err),
            }
        }
    };
    let log = &state.log_file;
    if !log.exists() {
        bail!(
            "no log at {}: a tunnel started with `cargo xtask tunnel start --detach` writes one",
            log.display()
        );
    }
    let lines =
        control::tail_lines(log, args.lines).with_context(|| format!("read {}", log.display()))?;
    for line in lines {
        println!("{line}");
    }
    if args.follow {
        let mut out = std::io::stdout();
        control::follow(log, &mut out, Duration::from_millis(250), || true)
            .with_context(|| format!("follow {}", log.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the service file goes on this system, and the commands around it.
struct ServiceFile {
    path: PathBuf,
    text: String,
    enable: String,
    disable: String,
}

fn service_file(ctx: &Context) -> anyhow::Result<ServiceFile> {
    let Setup { config, root, .. } = setup(ctx)?;
    let home = config.shell_var("HOME").map(PathBuf::from).context("HOME is not set")?;
    let mut command: Vec<String> = match std::env::var("CARGO") {
        // Run through cargo, as users do, so a rebuild never strands the service.
        Ok(cargo) => vec![cargo, "xtask".into()],
        Err(_) => vec![std::env::current_exe()?.display().to_string()],
    };
    for file in &ctx.global.env_files {
        command.push("--env-file".into());
        command.push(ctx.cwd.join(file).display().to_string());
    }
    command.extend(["tunnel".into(), "start".into()]);
    let mut env = vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())];
    if config.get("XTASK_STATE_DIR").is_some() {
        env.push(("XTASK_STATE_DIR".into(), root.dir.display().to_string()));
    }
    if !ctx.global.set.is_empty() {
        ctx.out.warn(&format!(
            "--set values are not written into the service; put them in {}",
            service_env_file(ctx).display()
        ));
    }
    let spec = ServiceSpec {
        command,
        working_dir: ctx.root.clone(),
        env,
        log_file: root.dir.join("service.log"),
    };

    if cfg!(target_os = "macos") {
        let path =
            home.join("Library/LaunchAgents").join(format!("{}.plist", control::LAUNCHD_LABEL));
        let shown = path.display();
        Ok(ServiceFile {
            text: control::launchd_plist(&spec),
            enable: format!("launchctl bootstrap gui/$(id -u) {shown}"),
            disable: format!("launchctl bootout gui/$(id -u)/{}", control::LAUNCHD_LABEL),
            path,
        })
    } else {
        let config_home = config.shell_var("XDG_CONFIG_HOME").filter(|v| !v.is_empty());
        let dir = config_home.map(PathBuf::from).unwrap_or_else(|| home.join(".config"));
        let unit = control::SYSTEMD_UNIT_NAME;
        Ok(ServiceFile {
            path: dir.join("systemd/user").join(unit),
            text: control::systemd_unit(&spec),
            enable: format!(
                "systemctl --user daemon-reload && systemctl --user enable --now {unit}"
            ),
            disable: format!("systemctl --user stop {unit} && systemctl --user daemon-reload"),
        })
    }
}

/// The file the service reads that wins over the others: the last
/// `--env-file` it is started with, else the workspace's `.env.local`.
fn service_env_file(ctx: &Context) -> PathBuf {
    match ctx.global.env_files.last() {
        Some(file) => ctx.cwd.join(file),
        None => ctx.root.join(".env.local"),
    }
}

fn install(ctx: &Context) -> anyhow::Result<ExitCode> {
    let file = service_file(ctx)?;
    let dir = file.path.parent().expect("a service file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(&file.path, &file.text)
        .with_context(|| format!("write {}", file.path.display()))?;
    ctx.out.say(&format!("wrote {}", file.path.display()));
    ctx.out.say(&format!("start it now and at every login with:\n  {}", file.enable));
    ctx.out.say(&format!(
        "the service has no terminal: the key must be unencrypted, in ssh-agent, or its passphrase in \
         BASTION_KEY_PASSPHRASE in {}",
        service_env_file(ctx).display()
    ));
    if ctx.out.json {
        ctx.out.json(&json!({ "path": file.path, "enable": file.enable }))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(ctx: &Context) -> anyhow::Result<ExitCode> {
    let file = service_file(ctx)?;
    if !file.path.exists() {
        ctx.out.say(&format!("no service installed ({} does not exist)", file.path.display()));
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::remove_file(&file.path).with_context(|| format!("remove {}", file.path.display()))?;
    // What `systemctl --user enable` linked; gone with the unit, so nothing
    // starts it at the next login.
    if let Some(dir) = file.path.parent() {
        let wanted = dir.join("default.target.wants").join(control::SYSTEMD_UNIT_NAME);
        let _ = std::fs::remove_file(wanted);
    }
    ctx.out.say(&format!("removed {}", file.path.display()));
    ctx.out.say(&format!("if it is running, stop it with:\n  {}", file.disable));
    Ok(ExitCode::SUCCESS)
}
