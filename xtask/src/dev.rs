//! `cargo xtask dev`: configuration, checks, the tunnel, a Redis proof, then
//! the services with their logs multiplexed, until Ctrl+C.

use crate::context::Context;
use crate::output::{paint, DIM, ERROR, WARN};
use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use mesh_config::Config;
use mesh_doctor::{Category, Severity};
use mesh_supervisor::{Event, Manifest, Outcome, StopHandle, Supervisor};
use mesh_tunnel::control::{self, ControlError, SharedTunnel, StateDir};
use mesh_tunnel::State;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The stand-in services' manifest, written into the sandbox directory.
const SANDBOX_MANIFEST: &str = include_str!("../sandbox-services.toml");
/// Where [`SANDBOX_MANIFEST`] lives in the workspace, to name it in messages.
const SANDBOX_MANIFEST_SOURCE: &str = "xtask/sandbox-services.toml";

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Run the whole loop locally: our bastion, a local redis-server and stand-in services.
    #[arg(long)]
    sandbox: bool,
    /// With --sandbox, run the sandbox's Redis with TLS only (a throwaway CA).
    #[arg(long)]
    tls: bool,
    /// Start without running the doctor's checks first.
    #[arg(long)]
    skip_checks: bool,
    /// Run only these services, with what they depend on.
    #[arg(long, value_name = "NAME", num_args = 1..)]
    only: Vec<String>,
    /// The service manifest to run (default: services.toml in the workspace root).
    #[arg(long, value_name = "PATH")]
    manifest: Option<PathBuf>,
    /// Start each log line with the time.
    #[arg(long)]
    timestamps: bool,
    /// Trust and record the bastion's host key if known_hosts has none (trust on first use).
    #[arg(long)]
    accept_new: bool,
    /// Allow TUNNEL_BIND_ADDRESS to be a non-loopback address.
    #[arg(long)]
    allow_remote_bind: bool,
}

pub fn run(args: DevArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(dev(args, ctx))
}

async fn dev(args: DevArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    if args.tls && !args.sandbox {
        return Err(crate::context::UsageError(
            "--tls only applies to the sandbox's Redis: add --sandbox, or set \
             REDIS_TLS_ENABLED=true for a real endpoint"
                .into(),
        )
        .into());
    }
    check_manifest_args(&args, ctx)?;
    // Until the services run, Ctrl+C (or SIGTERM/SIGHUP) abandons the start-up: what was
    // started (the sandbox, the tunnel) is dropped, which stops it and removes its files.
    let interrupted = early_signal();
    tokio::pin!(interrupted);
    if !args.sandbox {
        return tokio::select! {
            biased; // the listeners are registered before anything else starts
            name = &mut interrupted => Ok(abandoned(ctx, name)),
            result = pipeline(&args, ctx, None) => result,
        };
    }
    let spinner = Spinner::start(ctx, "starting the sandbox: bastion and redis-server");
    let options = mesh_sandbox::SandboxOptions { tls: args.tls, ..Default::default() };
    let sandbox = tokio::select! {
        biased; // the listeners are registered before anything else starts
        name = &mut interrupted => {
            spinner.finish();
            return Ok(abandoned(ctx, name));
        }
        sandbox = mesh_sandbox::Sandbox::up(options) => sandbox,
    };
    spinner.finish();
    let sandbox = sandbox.context("start the sandbox")?;
    ctx.out.say(&format!(
        "sandbox: bastion 127.0.0.1:{} serving `{}` (a local redis-server), files in {}",
        sandbox.bastion().map_or(0, |b| b.port()),
        sandbox.endpoint(),
        sandbox.dir().display()
    ));
    let result = tokio::select! {
        biased;
        name = &mut interrupted => Ok(abandoned(ctx, name)),
        result = pipeline(&args, ctx, Some(&sandbox)) => result,
    };
    let down = sandbox.shutdown().await.context("stop the sandbox");
    let code = result?;
    down?;
    Ok(code)
}

/// Set when the supervisor's ordered shutdown takes the signals over (see `early_signal`).
static SUPERVISING: AtomicBool = AtomicBool::new(false);

/// The first Ctrl+C, SIGTERM or SIGHUP that arrives before the services run; pending forever
/// after (the supervisor's `forward_signals` answers them then).
async fn early_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        let name = tokio::select! {
            _ = int.recv() => "Ctrl+C",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        if !SUPERVISING.load(Ordering::SeqCst) {
            return name;
        }
    }
}

/// The line and exit code (130, as a shell reports an interrupted command) of a start-up
/// abandoned by a signal.
fn abandoned(ctx: &Context, signal: &str) -> ExitCode {
    ctx.out.say(&paint(
        ctx.out.color,
        DIM,
        &format!("{signal}: start-up abandoned, nothing left running"),
    ));
    ExitCode::from(130)
}

/// `--manifest` and `--only`, checked before anything starts (the sandbox, the tunnel): the
/// manifest given must be readable and every `--only` service in it. Errors name the manifest
/// the user gave, or the default one (the sandbox's as it is in the workspace).
fn check_manifest_args(args: &DevArgs, ctx: &Context) -> anyhow::Result<()> {
    let read = |path: PathBuf| match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(mesh_supervisor::ManifestError::Read { path, source }),
    };
    let (path, text) = match (&args.manifest, args.sandbox) {
        (Some(path), _) => read(ctx.cwd.join(path))?,
        (None, _) if args.only.is_empty() => return Ok(()),
        (None, true) => (ctx.root.join(SANDBOX_MANIFEST_SOURCE), SANDBOX_MANIFEST.to_string()),
        (None, false) => read(ctx.root.join(mesh_supervisor::DEFAULT_MANIFEST_FILE))?,
    };
    if args.only.is_empty() {
        return Ok(());
    }
    // Names only: the `${VAR}`s are filled once the configuration (the sandbox's) is known.
    let table: BTreeMap<String, toml::Value> = match toml::from_str(&text) {
        Ok(table) => table,
        Err(_) => {
            // The supervisor's own parser says what is wrong, and where, in its words.
            Manifest::parse(&text, &path, &BTreeMap::new())?;
            return Ok(());
        }
    };
    let mut known: Vec<String> = table
        .get("services")
        .and_then(toml::Value::as_table)
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default();
    known.sort();
    match args.only.iter().find(|name| !known.contains(name)) {
        None => Ok(()),
        Some(name) => Err(mesh_supervisor::ManifestError::UnknownService {
            path,
            name: name.clone(),
            suggestion: closest(name, &known),
            known,
        }
        .into()),
    }
}

/// The known name within two edits of `name`, if one is.
fn closest(name: &str, known: &[String]) -> Option<String> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let substitution = previous + usize::from(ca != *cb);
                previous = row[j + 1];
                row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
            }
        }
        row[b.len()]
    };
    known
        .iter()
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k.clone())
}

/// Everything after the sandbox (if any) is up; the tunnel this starts is
/// closed before it returns.
async fn pipeline(
    args: &DevArgs,
    ctx: &Context,
    sandbox: Option<&mesh_sandbox::Sandbox>,
) -> anyhow::Result<ExitCode> {
    let load = match sandbox {
        Some(sandbox) => {
            ctx.load_options(vec![sandbox.env_file().to_path_buf()], sandbox_layer(sandbox))
        }
        None => ctx.load_options(ctx.global.env_files.clone(), Vec::new()),
    };
    let config = ctx.load(&load)?;
    // Without Redis there is nothing to run: say so before the manifest's own needs.
    config.require_redis()?;
    let vars = ServiceVars::new(&config);
    let manifest = load_manifest(args, ctx, &vars.vars, sandbox)?;
    let selected = manifest.select(&args.only)?;
    mesh_supervisor::check_selected_paths(&manifest, &selected)?;
    if !args.skip_checks {
        quick_checks(args, ctx, load, sandbox.is_some()).await?;
    }

    let tunnel = if config.tunnel.enabled {
        Some(open_tunnel(args, ctx, &config, sandbox.is_some()).await?)
    } else {
        None
    };
    let result = async {
        prove_redis(ctx, &config, tunnel.as_ref()).await?;
        run_services(args, ctx, &config, manifest, vars, tunnel.as_ref(), sandbox).await
    }
    .await;
    if let Some(tunnel) = tunnel {
        tunnel.close(ctx).await;
    }
    result
}

/// The doctor's local checks (configuration, tools, key, ports, services); a
/// `[✗]` stops `dev` with the doctor's report and fixes.
async fn quick_checks(
    args: &DevArgs,
    ctx: &Context,
    load: mesh_config::LoadOptions,
    sandbox: bool,
) -> anyhow::Result<()> {
    let options = mesh_doctor::Options {
        sandbox,
        // The sandbox's stand-ins are this binary: nothing of the manifest to check.
        services: !sandbox,
        manifest: args.manifest.as_ref().map(|p| ctx.cwd.join(p)),
        ..mesh_doctor::Options::default()
    };
    let spinner = Spinner::start(ctx, "checking prerequisites");
    let report = mesh_doctor::quick(load, options).await;
    spinner.finish();
    if !report.ok {
        eprint!("{}", crate::doctor::render(&report, ctx.global.verbose > 0, ctx.out.color));
        let message = "the checks above found what would stop `dev`: apply their fixes (`cargo \
                       xtask doctor --fix` does the safe ones), or pass --skip-checks to start \
                       anyway";
        // Only the configuration or the key file it names at fault: exit 2, as `tunnel
        // start` and `dev --skip-checks` do for the same input.
        let configuration = report
            .categories
            .iter()
            .filter(|c| c.severity == Severity::Fail)
            .all(|c| matches!(c.category, Category::Configuration | Category::SshKey));
        if configuration {
            return Err(crate::context::UsageError(message.into()).into());
        }
        bail!("{message}");
    }
    let warnings = report.checks().filter(|(_, c)| c.severity == Severity::Warn).count();
    let note = match warnings {
        0 => "checks: all passed".to_string(),
        n => format!("checks: passed, {n} warning(s): `cargo xtask doctor` shows them"),
    };
    ctx.out.say(&paint(ctx.out.color, DIM, &note));
    Ok(())
}

/// The sandbox's values, plus blanks for every variable that could point the
/// sandbox somewhere else (an exported production variable never wins here).
fn sandbox_layer(sandbox: &mesh_sandbox::Sandbox) -> Vec<(String, String)> {
    let mut vars: BTreeMap<String, String> = [
        "RDS_ENDPOINT",
        "TUNNEL_EXTRA_FORWARDS",
        "REDIS_USERNAME",
        "REDIS_CA_CERT",
        "BASTION_KEY_PASSPHRASE",
        "TUNNEL_BIND_ADDRESS",
    ]
    .into_iter()
    .map(|name| (name.to_string(), String::new()))
    .collect();
    vars.extend(sandbox.vars());
    vars.into_iter().collect()
}

/// What every service gets from `dev`, also used to fill the manifest's `${VAR}`:
/// the configuration's values, plus the Redis address on the forward and the
/// effective TLS settings.
struct ServiceVars {
    vars: BTreeMap<String, String>,
    /// `dev` set REDIS_TLS_SKIP_VERIFY=true itself (and must say so).
    skip_verify_given: bool,
}

impl ServiceVars {
    fn new(config: &Config) -> ServiceVars {
        let mut vars = config.child_env();
        let mut skip_verify_given = false;
        if let Some(redis) = &config.redis {
            let via_tunnel = config.tunnel.enabled;
            let port = if via_tunnel { redis.local_port } else { redis.port };
            let host = if via_tunnel { "127.0.0.1" } else { redis.host.as_str() };
            let addr = format!("{host}:{port}");
            vars.entry("REDIS_ADDR".into()).or_insert_with(|| addr.clone());
            vars.entry("REDIS_ADDRESS".into()).or_insert(addr);
            // The effective TLS setting, also when it came from a `rediss://` endpoint.
            vars.insert("REDIS_TLS_ENABLED".into(), redis.tls.to_string());
            // Through 127.0.0.1 the services' clients cannot match the endpoint's name; `dev`
            // verifies it before they start. An explicit setting is the user's to keep.
            let explicit = vars.contains_key("REDIS_TLS_SKIP_VERIFY")
                || config.shell_var("REDIS_TLS_SKIP_VERIFY").is_some();
            if redis.tls && via_tunnel && !explicit {
                vars.insert("REDIS_TLS_SKIP_VERIFY".into(), "true".into());
                skip_verify_given = true;
            }
        }
        ServiceVars { vars, skip_verify_given }
    }
}

/// The manifest with `${VAR}` taken from the configuration.
fn load_manifest(
    args: &DevArgs,
    ctx: &Context,
    vars: &BTreeMap<String, String>,
    sandbox: Option<&mesh_sandbox::Sandbox>,
) -> anyhow::Result<Manifest> {
    let mut vars = vars.clone();
    let exe = std::env::current_exe().context("find the xtask binary")?;
    vars.insert("XTASK_EXE".into(), exe.display().to_string());
    let path = match (&args.manifest, sandbox) {
        (Some(path), _) => ctx.cwd.join(path),
        (None, Some(sandbox)) => {
            let path = sandbox.dir().join("services.toml");
            std::fs::write(&path, SANDBOX_MANIFEST)
                .with_context(|| format!("write the sandbox manifest {}", path.display()))?;
            vars.insert("SANDBOX_DIR".into(), sandbox.dir().display().to_string());
            path
        }
        (None, None) => ctx.root.join(mesh_supervisor::DEFAULT_MANIFEST_FILE),
    };
    Ok(Manifest::load(&path, &vars)?)
}

/// The tunnel `dev` uses: a running detached one of the same configuration, or
/// one run inside this process for the session.
enum DevTunnel {
    Reused,
    Owned(Box<OwnedTunnel>),
}

/// A tunnel run inside `dev`, served on the control socket like any other.
struct OwnedTunnel {
    shared: Arc<SharedTunnel>,
    /// Removes the socket and pid file when dropped.
    guard: control::ControlGuard,
    /// The engine's state, for the outage and recovery lines.
    state: watch::Receiver<State>,
    /// Removed after closing when the tunnel only existed for a sandbox.
    throwaway_state: Option<PathBuf>,
}

impl DevTunnel {
    async fn close(self, ctx: &Context) {
        if let DevTunnel::Owned(owned) = self {
            owned.shared.shutdown_now().await;
            drop(owned.guard);
            if let Some(dir) = owned.throwaway_state {
                if let Err(err) = std::fs::remove_dir_all(&dir) {
                    ctx.out.warn(&format!("could not remove {}: {err}", dir.display()));
                }
            }
            ctx.out.say(&paint(ctx.out.color, DIM, "tunnel closed"));
        }
    }
}

async fn open_tunnel(
    args: &DevArgs,
    ctx: &Context,
    config: &Config,
    sandbox: bool,
) -> anyhow::Result<DevTunnel> {
    let bastion = config.require_bastion()?;
    let root = control::StateRoot::from_config(config);
    let id = control::TunnelId::new(&bastion.host, bastion.port, &bastion.user, &config.forwards);
    let state_dir: StateDir = root.tunnel(&id);
    let lock = match state_dir.lock() {
        Ok(lock) => lock,
        Err(ControlError::AlreadyRunning { pid, .. }) => {
            let pid_text = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
            ctx.out.say(&format!("tunnel: reusing the running tunnel {id}{pid_text}"));
            return Ok(DevTunnel::Reused);
        }
        Err(e) => return Err(e.into()),
    };

    let start_args = crate::tunnel::StartArgs {
        detach: false,
        accept_new: args.accept_new,
        allow_remote_bind: args.allow_remote_bind,
        wait: 60,
    };
    let bind_addrs = crate::tunnel::bind_addrs(config, &start_args, ctx)?;
    let spec = crate::tunnel::spec(config, &start_args, bind_addrs)?;
    let spinner = Spinner::start(ctx, &format!("tunnel: connecting to {}", spec.destination()));
    // Its own thread and current-thread runtime: on this 2-worker runtime, shared with the
    // supervisor, the forward was 1.4-1.8x slower (crates/tunnel/BENCH.md).
    let started = mesh_tunnel::start_on_own_thread(spec.clone()).await;
    spinner.finish();
    let tunnel = started?;
    let state = tunnel.watch();
    let (shared, guard, record) =
        crate::tunnel::serve(tunnel, config, &state_dir, &spec, lock).await?;
    crate::tunnel::say_up(ctx, &state_dir, &record);
    // A sandbox's tunnel (a random bastion port) is never seen again: leave no state.
    let throwaway_state = sandbox.then(|| state_dir.dir.clone());
    Ok(DevTunnel::Owned(Box::new(OwnedTunnel { shared, guard, state, throwaway_state })))
}

/// A Redis PING through the forward (with AUTH, and with TLS verified as the
/// endpoint's name when TLS is on); a failure names its class and fix.
async fn prove_redis(
    ctx: &Context,
    config: &Config,
    tunnel: Option<&DevTunnel>,
) -> anyhow::Result<()> {
    let redis = config.require_redis()?;
    let target =
        mesh_probe::Target::from_config(redis, config.tunnel.bind, tunnel.is_none(), false);
    let diagnosis: Box<dyn mesh_probe::TunnelDiagnosis> =
        match (&target.route, crate::redis::tunnel_socket(config)) {
            (mesh_probe::Route::Forward(addr), Some(socket)) if tunnel.is_some() => {
                Box::new(crate::redis::ControlSocket { socket, local_port: addr.port() })
            }
            _ => Box::new(mesh_probe::NoTunnel),
        };
    let report = mesh_probe::ping(&target, diagnosis.as_ref()).await?;
    ctx.out.say(&format!(
        "redis: PONG from {} via {} in {:.1} ms, TLS {}",
        report.endpoint,
        report.via,
        report.rtt_ms,
        report.tls.describe(&redis.host)
    ));
    Ok(())
}

/// The services until they fail or the user stops them.
async fn run_services(
    args: &DevArgs,
    ctx: &Context,
    config: &Config,
    manifest: Manifest,
    vars: ServiceVars,
    tunnel: Option<&DevTunnel>,
    sandbox: Option<&mesh_sandbox::Sandbox>,
) -> anyhow::Result<ExitCode> {
    if vars.skip_verify_given {
        ctx.out.warn(
            "REDIS_TLS_SKIP_VERIFY=true for the services: their clients dial 127.0.0.1, where \
             the endpoint's certificate name cannot match (`dev` verified it above)",
        );
    }
    let log_dir = match sandbox {
        Some(sandbox) => sandbox.dir().join("logs"),
        None => config.state_root.join("logs"),
    };
    let options = mesh_supervisor::Options {
        vars: vars.vars,
        only: args.only.clone(),
        log_dir,
        color: ctx.out.color,
        timestamps: args.timestamps,
        reaper: reaper_command(),
    };
    let expected = manifest.select(&args.only)?.len();
    let graces = manifest.services().iter().map(|s| (s.name.clone(), s.stop_grace)).collect();
    let supervisor = Supervisor::new(manifest, options);
    let stop = supervisor.stop_handle();
    let (events_tx, events_rx) = mpsc::channel(256);
    let forced = Arc::new(std::sync::OnceLock::new());
    // The listeners exist before the early ones stand down: no signal falls between them.
    let listeners = signal_listeners();
    SUPERVISING.store(true, Ordering::SeqCst);
    let signals = tokio::spawn(forward_signals(listeners, stop.clone(), forced.clone()));
    let outages = tunnel_watch(ctx, tunnel);
    let demo = sandbox.map(|s| s.vars().get("REST_API_PORT").cloned().unwrap_or_default());
    let stops = Stops { graces, forced };
    let render = tokio::spawn(render_events(events_rx, ctx.out, expected, demo, stops));

    let outcome = tokio::select! {
        outcome = supervisor.run(events_tx) => outcome,
        _ = outages => unreachable!("the outage watcher never ends on its own"),
    };
    signals.abort();
    let killed = render.await.unwrap_or_default();
    match outcome? {
        // Still the user's stop, so exit 0 (README, Exit codes); the line says what it cost.
        Outcome::Stopped if !killed.is_empty() => {
            ctx.out.say(&format!("all services stopped; killed: {}", killed.join(", ")));
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Stopped => {
            ctx.out.say("all services stopped");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Failed(failure) => {
            for line in &failure.last_lines {
                eprintln!("  {}", paint(ctx.out.color, DIM, line));
            }
            bail!(failure)
        }
    }
}

/// The hidden `__reaper` (`dev` starts it): waits for `dev` to end and, when it
/// ended without stopping its services, stops them and says so on stderr.
pub fn reap(grace: Duration) -> ExitCode {
    use std::io::Write;
    let reaped = mesh_supervisor::reaper::run(grace);
    if let mesh_supervisor::Reaped::Orphans { stopped, killed } = reaped {
        if !stopped.is_empty() {
            let (n, k) = (stopped.len(), killed.len());
            // The terminal may be gone by now; nothing is lost if this line is.
            let _ = writeln!(
                std::io::stderr(),
                "`cargo xtask dev` was killed before stopping its services: its reaper stopped \
                 {n} process group(s), {k} of them with SIGKILL"
            );
        }
    }
    ExitCode::SUCCESS
}

/// This binary's hidden `__reaper`: it stops the services should `dev` be killed
/// outright (SIGKILL, the OOM killer) before stopping them itself.
fn reaper_command() -> Option<std::process::Command> {
    match std::env::current_exe() {
        Ok(exe) => {
            let mut command = std::process::Command::new(exe);
            command.arg("__reaper");
            Some(command)
        }
        Err(error) => {
            tracing::warn!(%error, "no reaper: services will outlive `dev` if it is killed");
            None
        }
    }
}

/// Ctrl+C, SIGTERM and SIGHUP ask the supervisor to stop; a second one escalates, and
/// `forced` records which signal did it, for the lines that say why a service was killed.
/// Ctrl+C, SIGTERM and SIGHUP listeners; None if one cannot be registered.
fn signal_listeners() -> Option<[tokio::signal::unix::Signal; 3]> {
    use tokio::signal::unix::{signal, SignalKind};
    Some([
        signal(SignalKind::interrupt()).ok()?,
        signal(SignalKind::terminate()).ok()?,
        signal(SignalKind::hangup()).ok()?,
    ])
}

async fn forward_signals(
    listeners: Option<[tokio::signal::unix::Signal; 3]>,
    stop: StopHandle,
    forced: Arc<std::sync::OnceLock<&'static str>>,
) {
    let Some([mut int, mut term, mut hup]) = listeners else { return };
    loop {
        let name = tokio::select! {
            _ = int.recv() => "Ctrl+C",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        if stop.requests() >= 1 {
            let _ = forced.set(name);
        }
        stop.request();
    }
}

/// What the stop lines need: each service's grace, and the signal that forced the stop.
struct Stops {
    graces: BTreeMap<String, Duration>,
    forced: Arc<std::sync::OnceLock<&'static str>>,
}

impl Stops {
    /// The line for a service SIGKILLed after `after`: because its grace ran out, or because
    /// a second signal forced the stop before it did.
    fn killed(&self, service: &str, after: Duration) -> String {
        let grace = self.graces.get(service).copied().unwrap_or_default();
        match self.forced.get() {
            Some(signal) if after < grace => format!(
                "{service} killed at the second {signal}, {:.1} s into its {} s stop grace",
                after.as_secs_f32(),
                grace.as_secs_f32()
            ),
            _ => format!(
                "{service} did not stop within its {} s stop grace: killed",
                grace.as_secs_f32()
            ),
        }
    }
}

/// One line when the tunnel goes down, one when it is back; never returns.
async fn tunnel_watch(ctx: &Context, tunnel: Option<&DevTunnel>) {
    let Some(DevTunnel::Owned(owned)) = tunnel else {
        return std::future::pending().await;
    };
    let mut state = owned.state.clone();
    let mut down = false;
    loop {
        if state.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = state.borrow_and_update().clone();
        match now {
            State::Reconnecting { reason, .. } if !down => {
                down = true;
                ctx.out
                    .warn(&format!("tunnel down ({reason}); reconnecting, services keep running"));
            }
            State::Up if down => {
                down = false;
                ctx.out.say(&paint(ctx.out.color, DIM, "tunnel back up"));
            }
            _ => {}
        }
    }
}

/// Spinners while a service is awaited, then plain log lines; returns the services that
/// had to be killed.
async fn render_events(
    mut events: mpsc::Receiver<Event>,
    out: crate::output::Output,
    expected: usize,
    demo_port: Option<String>,
    stops: Stops,
) -> Vec<String> {
    let mut spinner: Option<Spinner> = None;
    let mut ready = 0usize;
    let mut killed = Vec::new();
    while let Some(event) = events.recv().await {
        let line = match event {
            Event::Log(log) => Some(log.rendered),
            Event::Waiting { service, probe } => {
                spinner = Some(Spinner::start_raw(out, &format!("{service}: waiting for {probe}")));
                None
            }
            Event::Ready { service, after } => {
                if let Some(spinner) = spinner.take() {
                    spinner.finish();
                }
                ready += 1;
                let ms = after.as_millis();
                if ready == expected {
                    if let Some(port) = demo_port.as_deref() {
                        tokio::spawn(post_demo_event(port.to_string()));
                    }
                }
                Some(format!("{service} ready after {ms} ms"))
            }
            Event::Failed { service, reason } => {
                if let Some(spinner) = spinner.take() {
                    spinner.finish();
                }
                Some(paint(out.color, ERROR, &format!("{service} failed: {reason}")))
            }
            Event::Exited { service, status, .. } => {
                Some(paint(out.color, WARN, &format!("{service} exited ({status})")))
            }
            Event::Restarting { service, attempt, max, delay } => {
                Some(format!("{service}: restart {attempt}/{max} in {} s", delay.as_secs()))
            }
            Event::Stopping { service, signal } => {
                Some(paint(out.color, DIM, &format!("stopping {service} ({signal})")))
            }
            Event::Killed { service, after } => {
                let line = stops.killed(&service, after);
                killed.push(service);
                Some(paint(out.color, WARN, &line))
            }
            _ => None,
        };
        if let Some(line) = line {
            match &spinner {
                Some(s) => s.bar.suspend(|| crate::output::print_line(&line)),
                None => crate::output::print_line(&line),
            }
        }
    }
    if let Some(spinner) = spinner {
        spinner.finish();
    }
    killed
}

/// In the sandbox, once every service is ready: one webhook POSTed to rest-api,
/// so the logs show it accepted, then processed by the worker.
async fn post_demo_event(port: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body =
        r#"{"source":"sandbox","kind":"demo","message":"hello from cargo xtask dev --sandbox"}"#;
    let request = format!(
        "POST /api/v1/webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        std::io::Result::Ok(())
    };
    if let Err(err) = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        tracing::warn!(%err, "could not post the sandbox's demo event");
    }
}

/// An indicatif spinner on stderr, only on a terminal and never with --json/-q.
struct Spinner {
    bar: ProgressBar,
}

impl Spinner {
    fn start(ctx: &Context, message: &str) -> Spinner {
        Spinner::start_raw(ctx.out, message)
    }

    fn start_raw(out: crate::output::Output, message: &str) -> Spinner {
        let visible = !out.quiet && !out.json && std::io::stderr().is_terminal();
        let bar = if visible { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner { bar }
    }

    fn finish(self) {
        self.bar.finish_and_clear();
    }
}
