//! The supervisor: starts the selected services in dependency order, waits for
//! each one's readiness, restarts per policy, streams their logs as events, and
//! stops them all in reverse order (stop signal, grace, SIGKILL to the group).

use crate::logs::{pump, LogFile, LogLine, LogStyle, Sink, Stream, Tail};
use crate::manifest::{Check, Condition, Manifest, ManifestError, Restart, Service};
use crate::process::{group_alive, terminate_group, Ended};
use crate::reaper::ReaperPipe;
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// A run that lasted this long resets the restart count: the crashes before it
/// are history, not a crash loop.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// How long a child's output readers may take to drain after it ended.
const DRAIN: Duration = Duration::from_secs(1);

/// What the caller decides about a run.
#[derive(Debug)]
pub struct Options {
    /// Variables every child gets on top of the inherited environment (the
    /// configuration); env files and the manifest's `env` win over them.
    pub vars: BTreeMap<String, String>,
    /// Run only these services and what they depend on; empty runs all.
    pub only: Vec<String>,
    /// Where `<service>.log` files are written (created when missing).
    pub log_dir: PathBuf,
    /// Colour the name prefixes (ANSI).
    pub color: bool,
    /// Start each rendered log line with the local time.
    pub timestamps: bool,
    /// The reaper, a helper that stops the services should this process die
    /// without stopping them (SIGKILL, the OOM killer): a command whose body
    /// calls [`crate::reaper::run`] with the grace in milliseconds the
    /// supervisor appends as its last argument (the longest `stop_grace` of the
    /// selected services). It is spawned once per run in its own session; when
    /// it cannot be, the run goes on with a warning. None: no reaper.
    pub reaper: Option<std::process::Command>,
}

/// What happens, in order, for the CLI to draw: spinners while `Waiting`,
/// plain lines for `Log`. Every event names its service.
#[derive(Debug, Clone)]
pub enum Event {
    /// About to spawn `command` in `cwd`.
    Starting {
        service: String,
        command: String,
        cwd: PathBuf,
    },
    Started {
        service: String,
        pid: u32,
    },
    /// Readiness is being awaited; `probe` says what is checked.
    Waiting {
        service: String,
        probe: String,
    },
    /// A probe try failed; more follow until `retries`.
    NotYet {
        service: String,
        attempt: u32,
        retries: u32,
        reason: String,
    },
    Ready {
        service: String,
        after: Duration,
    },
    Log(LogLine),
    /// The process ended on its own (not stopped by us).
    Exited {
        service: String,
        status: String,
        ready: bool,
    },
    Restarting {
        service: String,
        attempt: u32,
        max: u32,
        delay: Duration,
    },
    /// The run will end with this failure; details are in the [`Outcome`].
    Failed {
        service: String,
        reason: String,
    },
    Stopping {
        service: String,
        signal: Signal,
    },
    /// The group outlived its grace period (or the stop was escalated) and was SIGKILLed.
    Killed {
        service: String,
        after: Duration,
    },
    Stopped {
        service: String,
    },
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stopped on request; every service ended.
    Stopped,
    /// A service failed; all others were stopped.
    Failed(Failure),
}

/// The service whose failure ended the run, why, and its last lines.
#[derive(Debug, Clone)]
pub struct Failure {
    pub service: String,
    pub reason: FailureReason,
    /// Up to the last 20 lines it printed, as shown (without prefix).
    pub last_lines: Vec<String>,
    pub log_file: PathBuf,
}

#[derive(Debug, Clone)]
pub enum FailureReason {
    /// The program could not be started (not installed, bad directory).
    Spawn {
        program: String,
        cwd: PathBuf,
        error: String,
    },
    /// An `env_files` entry could not be read.
    EnvFile {
        path: PathBuf,
        error: String,
    },
    ExitedBeforeReady {
        status: String,
    },
    NotReady {
        tries: u32,
        last: String,
    },
    /// It exited after being ready and no restart was left.
    Exited {
        status: String,
        restarts: u32,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, log) = (&self.service, self.log_file.display());
        match &self.reason {
            FailureReason::Spawn { program, cwd, error } => write!(
                f,
                "service `{name}` could not start `{program}` in {}: {error}; check that \
                 `{program}` is installed and on PATH",
                cwd.display()
            ),
            FailureReason::EnvFile { path, error } => write!(
                f,
                "service `{name}`: env file {} could not be read: {error}; create it or remove \
                 it from `env_files`",
                path.display()
            ),
            FailureReason::ExitedBeforeReady { status } => write!(
                f,
                "service `{name}` exited ({status}) before it was ready; its last lines are \
                 above, all of them in {log}"
            ),
            FailureReason::NotReady { tries, last } => write!(
                f,
                "service `{name}` was not ready after {tries} tries (last: {last}); check its \
                 log {log}, or give it more `retries` in the manifest"
            ),
            FailureReason::Exited { status, restarts } => {
                write!(f, "service `{name}` exited ({status}) after {restarts} restarts; see {log}")
            }
        }
    }
}

impl std::error::Error for Failure {}

/// Why a run could not begin.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(transparent)]
    Select(#[from] ManifestError),
    #[error("could not create the log directory {}: {source}", path.display())]
    LogDir { path: PathBuf, source: std::io::Error },
    #[error("could not create the log file {}: {source}", path.display())]
    LogFile { path: PathBuf, source: std::io::Error },
    #[error(
        "service `{service}` needs port {port}, which another process is using: stop that \
         process (`ss -ltnp 'sport = :{port}'` or `lsof -i :{port}` names it) or change `port` \
         in the manifest"
    )]
    PortInUse { service: String, port: u16 },
}

/// Asks a running supervisor to stop: the first request stops gracefully, a
/// second one SIGKILLs what is left at once. Cheap to clone; usable from a
/// signal handler task.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<watch::Sender<u32>>);

impl StopHandle {
    pub fn request(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// How many stops were requested so far (1: stopping, 2 or more: killing).
    pub fn requests(&self) -> u32 {
        *self.0.borrow()
    }
}

/// The services of one manifest, run until stopped or until one fails.
pub struct Supervisor {
    manifest: Arc<Manifest>,
    options: Options,
    stop: Arc<watch::Sender<u32>>,
}

/// Where a service is in its life, as its dependents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Started,
    Ready,
}

/// State every service task shares.
struct Shared {
    manifest: Arc<Manifest>,
    vars: BTreeMap<String, String>,
    events: mpsc::Sender<Event>,
    style: LogStyle,
    /// Per manifest index: what dependents wait on.
    phases: Vec<watch::Sender<Phase>>,
    /// Per manifest index: true once the service's task is done (stopped,
    /// failed, or never started); dependencies wait on it to stop in order.
    stopped: Vec<watch::Sender<bool>>,
    /// Per manifest index: the selected services depending on it.
    dependents: Vec<Vec<usize>>,
    tails: Vec<Tail>,
    files: Vec<Option<LogFile>>,
    /// True once the run is ending (stop request or a failure).
    shutdown: watch::Receiver<bool>,
    /// True once the stop must not wait any more (second request).
    escalate: watch::Receiver<bool>,
    failures: mpsc::UnboundedSender<Failure>,
    /// The reaper's pipe from spawn to the run's clean end, told of every
    /// group created and gone; None when there is no reaper.
    reaper: Mutex<Option<ReaperPipe>>,
}

impl Shared {
    fn tell_reaper(&self, tell: impl FnOnce(&mut ReaperPipe)) {
        if let Some(pipe) = self.reaper.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            tell(pipe);
        }
    }

    /// Tells the reaper a group is gone, once none of it is alive.
    fn group_gone(&self, pgid: i32) {
        if !group_alive(pgid) {
            self.tell_reaper(|pipe| pipe.gone(pgid));
        }
    }

    async fn emit(&self, event: Event) {
        // A receiver that went away only means nobody watches any more.
        let _ = self.events.send(event).await;
    }

    fn service(&self, idx: usize) -> &Service {
        &self.manifest.services()[idx]
    }

    fn file(&self, idx: usize) -> &LogFile {
        self.files[idx].as_ref().expect("log file of a selected service")
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn fail(&self, idx: usize, reason: FailureReason) {
        let failure = Failure {
            service: self.service(idx).name.clone(),
            reason,
            last_lines: self.tails[idx].lines(),
            log_file: self.file(idx).path.clone(),
        };
        tracing::error!(service = %failure.service, "service failed");
        self.emit(Event::Failed { service: failure.service.clone(), reason: failure.to_string() })
            .await;
        let _ = self.failures.send(failure);
    }
}

impl Supervisor {
    pub fn new(manifest: Manifest, options: Options) -> Supervisor {
        Supervisor { manifest: Arc::new(manifest), options, stop: Arc::new(watch::channel(0).0) }
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Runs the services until a stop request or a failure, then stops every
    /// one of them. Events go to `events` (bounded: a slow reader slows the
    /// children's output, it never loses it).
    pub async fn run(mut self, events: mpsc::Sender<Event>) -> Result<Outcome, SuperviseError> {
        let manifest = self.manifest.clone();
        let selected = manifest.select(&self.options.only)?;
        for &idx in &selected {
            let service = &manifest.services()[idx];
            if let Some(port) = service.port {
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                    return Err(SuperviseError::PortInUse { service: service.name.clone(), port });
                }
            }
        }
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (escalate_tx, escalate) = watch::channel(false);
        let (failures, mut failures_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(self.shared(&selected, events, shutdown, escalate, failures)?);
        if let Some(command) = self.options.reaper.take() {
            let services = manifest.services();
            let grace = selected.iter().map(|&i| services[i].stop_grace).max().unwrap_or_default();
            match ReaperPipe::spawn(command, grace) {
                Ok(pipe) => {
                    *shared.reaper.lock().unwrap_or_else(PoisonError::into_inner) = Some(pipe)
                }
                Err(error) => tracing::warn!(
                    %error,
                    "could not start the reaper: services will outlive this process if it is killed"
                ),
            }
        }

        // Dropping the set (this future cancelled) aborts every service task,
        // and each one's `Running` then kills its group.
        let mut tasks = JoinSet::new();
        for &idx in &selected {
            tasks.spawn(run_service(shared.clone(), idx));
        }
        let mut stop_rx = self.stop.subscribe();
        stop_rx.mark_changed();
        let mut failure = None;
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    None => break,
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        tracing::error!(%error, "service task panicked, stopping the others");
                        shutdown_tx.send_replace(true);
                    }
                },
                Ok(()) = stop_rx.changed() => {
                    let requests = *stop_rx.borrow_and_update();
                    if requests >= 1 && !*shutdown_tx.borrow() {
                        tracing::info!("stopping services");
                        shutdown_tx.send_replace(true);
                    }
                    if requests >= 2 {
                        tracing::info!("stop escalated, killing every service now");
                        escalate_tx.send_replace(true);
                    }
                }
                Some(failed) = failures_rx.recv() => {
                    failure.get_or_insert(failed);
                    shutdown_tx.send_replace(true);
                }
            }
        }
        if let Ok(failed) = failures_rx.try_recv() {
            failure.get_or_insert(failed);
        }
        let reaper = shared.reaper.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(pipe) = reaper {
            pipe.finish().await;
        }
        Ok(failure.map_or(Outcome::Stopped, Outcome::Failed))
    }

    fn shared(
        &self,
        selected: &[usize],
        events: mpsc::Sender<Event>,
        shutdown: watch::Receiver<bool>,
        escalate: watch::Receiver<bool>,
        failures: mpsc::UnboundedSender<Failure>,
    ) -> Result<Shared, SuperviseError> {
        let services = self.manifest.services();
        let log_dir = &self.options.log_dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(log_dir)
            .map_err(|source| SuperviseError::LogDir { path: log_dir.clone(), source })?;
        let mut files = vec![None; services.len()];
        let mut dependents = vec![Vec::new(); services.len()];
        for &idx in selected {
            let path = log_dir.join(format!("{}.log", services[idx].name));
            files[idx] = Some(
                LogFile::create(path.clone())
                    .map_err(|source| SuperviseError::LogFile { path, source })?,
            );
            for dep in &services[idx].depends_on {
                let dep_idx = services.iter().position(|s| s.name == dep.service).expect("checked");
                dependents[dep_idx].push(idx);
            }
        }
        let width = selected.iter().map(|&i| services[i].name.len()).max().unwrap_or(0);
        Ok(Shared {
            manifest: self.manifest.clone(),
            vars: self.options.vars.clone(),
            events,
            style: LogStyle {
                width,
                color: self.options.color,
                timestamps: self.options.timestamps,
            },
            phases: services.iter().map(|_| watch::channel(Phase::Down).0).collect(),
            stopped: services.iter().map(|_| watch::channel(false).0).collect(),
            dependents,
            tails: services.iter().map(|_| Tail::default()).collect(),
            files,
            shutdown,
            escalate,
            failures,
            reaper: Mutex::new(None),
        })
    }
}

/// Marks a service's task done however it returns, so its dependencies stop.
struct DoneGuard(Arc<Shared>, usize);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.phases[self.1].send_replace(Phase::Down);
        self.0.stopped[self.1].send_replace(true);
    }
}

/// A started process and its output readers.
struct Running {
    child: Child,
    pgid: i32,
    /// True once the whole group is known gone; until then dropping this
    /// (the run's future cancelled, the runtime shutting down) SIGKILLs the
    /// group, so no path leaves a service behind.
    ended: bool,
    pumps: Vec<JoinHandle<()>>,
    started: Instant,
    env: BTreeMap<String, String>,
    /// Turns true when a `log_line` probe's line was printed.
    ready_line: Option<watch::Receiver<bool>>,
}

/// How one process's life ended.
enum Life {
    Shutdown,
    NotReady { tries: u32, last: String },
    Exited { status: ExitStatus, ready: bool },
}

/// One service, from waiting on its dependencies to its stop.
async fn run_service(shared: Arc<Shared>, idx: usize) {
    let _done = DoneGuard(shared.clone(), idx);
    if !dependencies_met(&shared, idx).await {
        return;
    }
    let mut restarts = 0u32;
    loop {
        let mut running = match start(&shared, idx).await {
            Ok(running) => running,
            Err(reason) => return shared.fail(idx, reason).await,
        };
        match supervise(&shared, idx, &mut running).await {
            Life::Shutdown => return stop(&shared, idx, running).await,
            Life::NotReady { tries, last } => {
                shared.fail(idx, FailureReason::NotReady { tries, last }).await;
                return stop(&shared, idx, running).await;
            }
            Life::Exited { status, ready } => {
                let uptime = running.started.elapsed();
                reap_leftovers(&shared, idx, running).await;
                if shared.shutting_down() {
                    return;
                }
                if uptime >= STABLE_UPTIME {
                    restarts = 0;
                }
                let Some(delay) = restart_delay(shared.service(idx).restart, status, restarts)
                else {
                    let status = describe(status);
                    let reason = if ready {
                        FailureReason::Exited { status, restarts }
                    } else {
                        FailureReason::ExitedBeforeReady { status }
                    };
                    return shared.fail(idx, reason).await;
                };
                restarts += 1;
                if !backoff(&shared, idx, restarts, delay).await {
                    return;
                }
            }
        }
    }
}

/// Waits until every dependency reached its condition; false when the run
/// ended first.
async fn dependencies_met(shared: &Shared, idx: usize) -> bool {
    let services = shared.manifest.services();
    let mut shutdown = shared.shutdown.clone();
    for dep in &services[idx].depends_on {
        let dep_idx = services.iter().position(|s| s.name == dep.service).expect("checked");
        let mut phase = shared.phases[dep_idx].subscribe();
        let condition = dep.condition;
        let met = phase.wait_for(|p| match condition {
            Condition::Started => *p != Phase::Down,
            Condition::Ready => *p == Phase::Ready,
        });
        tokio::select! {
            _ = met => {}
            () = until(&mut shutdown) => return false,
        }
    }
    !shared.shutting_down()
}

/// The environment a child gets on top of the inherited one: the caller's
/// variables, then its env files, then the manifest's `env`.
fn child_env(
    service: &Service,
    vars: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, FailureReason> {
    let mut env = vars.clone();
    for path in &service.env_files {
        let error =
            |e: dotenvy::Error| FailureReason::EnvFile { path: path.clone(), error: e.to_string() };
        for item in dotenvy::from_path_iter(path).map_err(error)? {
            let (name, value) = item.map_err(error)?;
            env.insert(name, value);
        }
    }
    env.extend(service.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

async fn start(shared: &Arc<Shared>, idx: usize) -> Result<Running, FailureReason> {
    let service = shared.service(idx);
    let env = child_env(service, &shared.vars)?;
    let argv = service.program.argv();
    let command = argv.join(" ");
    shared
        .emit(Event::Starting {
            service: service.name.clone(),
            command: command.clone(),
            cwd: service.cwd.clone(),
        })
        .await;

    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&service.cwd)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| FailureReason::Spawn {
            program: argv[0].clone(),
            cwd: service.cwd.clone(),
            error: e.to_string(),
        })?;
    let pid = child.id().expect("a just-spawned child has a pid");
    shared.tell_reaper(|pipe| pipe.created(pid as i32, service.stop_signal));
    tracing::info!(service = %service.name, pid, "service started");
    shared
        .file(idx)
        .line(std::time::SystemTime::now(), &format!("--- started pid {pid}: {command}"));
    shared.phases[idx].send_replace(Phase::Started);
    shared.emit(Event::Started { service: service.name.clone(), pid }).await;

    let (ready_line, ready_rx) = match &service.ready {
        Some(crate::Probe { check: Check::LogLine(pattern), .. }) => {
            let (tx, rx) = watch::channel(false);
            (Some((pattern.clone(), tx)), Some(rx))
        }
        _ => (None, None),
    };
    let sink = Sink {
        service: service.name.clone(),
        color_index: idx,
        style: shared.style.clone(),
        events: shared.events.clone(),
        tail: shared.tails[idx].clone(),
        file: shared.file(idx).clone(),
        ready_line,
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, Stream::Stdout, sink.clone())));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(err, Stream::Stderr, sink)));
    }
    Ok(Running {
        ended: false,
        child,
        pgid: pid as i32,
        pumps,
        started: Instant::now(),
        env,
        ready_line: ready_rx,
    })
}

/// Watches a running process until it exits, fails its probe, or the run ends.
async fn supervise(shared: &Shared, idx: usize, running: &mut Running) -> Life {
    let service = shared.service(idx);
    let probing = readiness(shared, service, &running.env, running.ready_line.clone());
    tokio::pin!(probing);
    let mut shutdown = shared.shutdown.clone();
    let mut ready = false;
    loop {
        tokio::select! {
            status = running.child.wait() => {
                let status = status.unwrap_or_else(|_| ExitStatus::default());
                tracing::warn!(service = %service.name, status = %status, "service exited");
                shared.phases[idx].send_replace(Phase::Down);
                let (service, status_text) = (service.name.clone(), describe(status));
                shared.emit(Event::Exited { service, status: status_text, ready }).await;
                return Life::Exited { status, ready };
            }
            result = &mut probing, if !ready => match result {
                Ok(()) => {
                    ready = true;
                    tracing::info!(service = %service.name, "service ready");
                    shared.phases[idx].send_replace(Phase::Ready);
                    let after = running.started.elapsed();
                    shared.emit(Event::Ready { service: service.name.clone(), after }).await;
                }
                Err((tries, last)) => return Life::NotReady { tries, last },
            },
            () = until(&mut shutdown) => return Life::Shutdown,
        }
    }
}

/// Probes until ready; `Err((tries, last reason))` when the retries ran out.
async fn readiness(
    shared: &Shared,
    service: &Service,
    env: &BTreeMap<String, String>,
    ready_line: Option<watch::Receiver<bool>>,
) -> Result<(), (u32, String)> {
    let Some(probe) = &service.ready else { return Ok(()) };
    let name = service.name.clone();
    shared
        .emit(Event::Waiting { service: name.clone(), probe: crate::probe::describe(probe) })
        .await;
    if let Some(mut seen) = ready_line {
        let total = probe.interval * probe.retries;
        return match tokio::time::timeout(total, seen.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err((
                probe.retries,
                format!("no such line within {}", humantime::format_duration(total)),
            )),
        };
    }
    let mut last = String::new();
    for attempt in 1..=probe.retries {
        match crate::probe::try_once(probe, &service.cwd, env).await {
            Ok(()) => return Ok(()),
            Err(reason) => {
                tracing::debug!(service = %name, attempt, %reason, "not ready yet");
                shared
                    .emit(Event::NotYet {
                        service: name.clone(),
                        attempt,
                        retries: probe.retries,
                        reason: reason.clone(),
                    })
                    .await;
                last = reason;
            }
        }
        if attempt < probe.retries {
            tokio::time::sleep(probe.interval).await;
        }
    }
    Err((probe.retries, last))
}

/// After the leader exited on its own: ends what it left in its group (a
/// `go run` child, say) and drains the output.
async fn reap_leftovers(shared: &Shared, idx: usize, mut running: Running) {
    let service = shared.service(idx);
    terminate_group(running.pgid, service.stop_signal, service.stop_grace, shared.escalate.clone())
        .await;
    running.ended = true;
    shared.group_gone(running.pgid);
    drain(std::mem::take(&mut running.pumps)).await;
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            tracing::warn!(pgid = self.pgid, "service dropped while running, killing its group");
            crate::process::signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// The delay before the next start, or None when the policy allows no more.
fn restart_delay(policy: Restart, status: ExitStatus, restarts: u32) -> Option<Duration> {
    match policy {
        Restart::OnFailure { max, backoff_max } if !status.success() && restarts < max => {
            let delay = Duration::from_secs(1).saturating_mul(1 << restarts.min(16));
            Some(delay.min(backoff_max))
        }
        _ => None,
    }
}

/// Announces a restart and sleeps; false when the run ended meanwhile.
async fn backoff(shared: &Shared, idx: usize, attempt: u32, delay: Duration) -> bool {
    let service = shared.service(idx);
    let Restart::OnFailure { max, .. } = service.restart else { return false };
    let delay_ms = delay.as_millis() as u64;
    tracing::info!(service = %service.name, attempt, max, delay_ms, "restarting service");
    shared
        .file(idx)
        .line(std::time::SystemTime::now(), &format!("--- restarting ({attempt} of {max})"));
    shared.emit(Event::Restarting { service: service.name.clone(), attempt, max, delay }).await;
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(delay) => !shared.shutting_down(),
        () = until(&mut shutdown) => false,
    }
}

/// Stops a running service once its dependents are stopped: the stop signal to
/// its group, the grace period, SIGKILL, reaping.
async fn stop(shared: &Shared, idx: usize, mut running: Running) {
    let service = shared.service(idx);
    let mut escalate = shared.escalate.clone();
    for &dependent in &shared.dependents[idx] {
        let mut stopped = shared.stopped[dependent].subscribe();
        tokio::select! {
            () = until(&mut stopped) => {}
            () = until(&mut escalate) => break,
        }
    }
    let signal = service.stop_signal;
    tracing::info!(service = %service.name, %signal, "stopping service");
    shared.emit(Event::Stopping { service: service.name.clone(), signal }).await;
    let began = Instant::now();
    let (ended, _) = tokio::join!(
        terminate_group(running.pgid, signal, service.stop_grace, shared.escalate.clone()),
        running.child.wait()
    );
    running.ended = true;
    shared.group_gone(running.pgid);
    if ended == Ended::Killed {
        let after = began.elapsed();
        if *shared.escalate.borrow() && after < service.stop_grace {
            tracing::warn!(
                service = %service.name,
                ?after,
                "service killed: a second stop request forced it before its grace period ended"
            );
        } else {
            tracing::warn!(service = %service.name, "service killed after its grace period");
        }
        shared.emit(Event::Killed { service: service.name.clone(), after }).await;
    }
    drain(std::mem::take(&mut running.pumps)).await;
    shared.file(idx).line(std::time::SystemTime::now(), "--- stopped");
    shared.emit(Event::Stopped { service: service.name.clone() }).await;
}

/// Lets the output readers finish what the pipes still hold; a reader kept
/// open by a process that escaped the group is abandoned.
async fn drain(pumps: Vec<JoinHandle<()>>) {
    for mut pump in pumps {
        if tokio::time::timeout(DRAIN, &mut pump).await.is_err() {
            pump.abort();
        }
    }
}

/// Waits until a flag turns true (or its sender is gone).
async fn until(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// "exit code 3" or "killed by SIGKILL".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}
