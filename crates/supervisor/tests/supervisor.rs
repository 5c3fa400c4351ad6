//! The supervisor against real child processes written for each case: late
//! readiness, a crash before ready, a SIGTERM-ignoring service, a grandchild,
//! a 1 MB line, restarts, escalation, the environment's layers.

use mesh_supervisor::{
    Event, FailureReason, Manifest, Options, Outcome, StopHandle, SuperviseError, Supervisor,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest any one run may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(40);

struct Run {
    events: Vec<Event>,
    outcome: Result<Outcome, SuperviseError>,
    /// From the first stop request to the end of the run.
    stop_took: Option<Duration>,
}

impl Run {
    fn outcome(&self) -> &Outcome {
        self.outcome.as_ref().expect("the run should start")
    }

    fn position(&self, wanted: impl Fn(&Event) -> bool) -> Option<usize> {
        self.events.iter().position(wanted)
    }

    fn pids(&self) -> Vec<i32> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Started { pid, .. } => Some(*pid as i32),
                _ => None,
            })
            .collect()
    }

    fn lines(&self, service: &str) -> Vec<&mesh_supervisor::LogLine> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log(line) if line.service == service => Some(line),
                _ => None,
            })
            .collect()
    }

    /// Every process of every group the run started is gone (zombies left to
    /// a non-reaping init count as gone: they have exited).
    fn assert_no_process_alive(&self) {
        for pgid in self.pids() {
            let members = group_members(pgid);
            assert!(members.is_empty(), "group {pgid} still has live processes {members:?}");
        }
    }
}

/// Runs the manifest until it ends; `on_event` sees each event with the stop
/// handle and decides when to request a stop.
async fn run(
    dir: &Path,
    manifest: &str,
    only: &[&str],
    mut on_event: impl FnMut(&Event, &StopHandle),
) -> Run {
    require("python3", "apt-get install -y python3");
    let vars = BTreeMap::from([("TEST_DIR".to_string(), dir.display().to_string())]);
    run_with(dir, manifest, only, vars, &mut on_event).await
}

async fn run_with(
    dir: &Path,
    manifest: &str,
    only: &[&str],
    vars: BTreeMap<String, String>,
    on_event: &mut dyn FnMut(&Event, &StopHandle),
) -> Run {
    let path = dir.join("services.toml");
    std::fs::write(&path, manifest).unwrap();
    let manifest = Manifest::load(&path, &vars).unwrap();
    let options = Options {
        vars,
        only: only.iter().map(|s| s.to_string()).collect(),
        log_dir: dir.join("logs"),
        color: false,
        timestamps: false,
        reaper: None,
    };
    let supervisor = Supervisor::new(manifest, options);
    let stop = supervisor.stop_handle();
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(supervisor.run(tx));
    let began = Instant::now();
    let mut events = Vec::new();
    let mut first_stop: Option<Instant> = None;
    let watcher = stop.clone();
    loop {
        let remaining = HANG.saturating_sub(began.elapsed());
        let Some(event) = tokio::time::timeout(remaining, rx.recv()).await.unwrap_or_else(|_| {
            watcher.request();
            watcher.request();
            panic!("the supervisor hung; events so far: {events:#?}")
        }) else {
            break;
        };
        on_event(&event, &stop);
        if first_stop.is_none() && stop.requests() > 0 {
            first_stop = Some(Instant::now());
        }
        events.push(event);
    }
    let outcome = task.await.expect("supervisor task");
    Run { events, outcome, stop_took: first_stop.map(|t| t.elapsed()) }
}

fn is_ready(event: &Event, name: &str) -> bool {
    matches!(event, Event::Ready { service, .. } if service == name)
}

fn stop_once_ready(name: &'static str) -> impl FnMut(&Event, &StopHandle) {
    let mut asked = false;
    move |event, stop| {
        if !asked && is_ready(event, name) {
            asked = true;
            stop.request();
        }
    }
}

fn require(program: &str, install: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(found, "`{program}` is needed by this test and is not on PATH: {install}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").expect("these tests read /proc (Linux)");
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
            fields[2].parse::<i32>().ok() == Some(pgid) && !matches!(fields[0], "Z" | "X")
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    assert!(Path::new("/proc/self/stat").exists(), "these tests read /proc (Linux)");
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').unwrap().1.split_whitespace().next(), Some("Z"))
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_starts_only_after_a_late_dependency_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("readyz"), "ok").unwrap();
    let port = free_port();
    let manifest = format!(
        r#"
        [services.api]
        shell = "sleep 1; exec python3 -m http.server {port} --bind 127.0.0.1 --directory {www}"
        port = {port}
        ready = {{ http = "http://127.0.0.1:{port}/readyz", status = 200, interval = "100ms", retries = 100 }}
        stop_grace = "5s"

        [services.web]
        command = ["sleep", "300"]
        depends_on = ["api"]
        "#,
        www = www.display()
    );
    let run = run(dir.path(), &manifest, &[], stop_once_ready("web")).await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    let api_ready = run.position(|e| is_ready(e, "api")).expect("api ready");
    let web_starting = run
        .position(|e| matches!(e, Event::Starting { service, .. } if service == "web"))
        .expect("web started");
    assert!(api_ready < web_starting, "web started before api was ready: {:#?}", run.events);
    let Event::Ready { after, .. } = &run.events[api_ready] else { unreachable!() };
    assert!(*after >= Duration::from_secs(1), "api was ready after only {after:?}");
    assert!(run
        .events
        .iter()
        .any(|e| matches!(e, Event::NotYet { service, .. } if service == "api")));

    // Reverse order: web is stopped before api is asked to stop.
    let web_stopped = run.position(|e| matches!(e, Event::Stopped { service } if service == "web"));
    let api_stopping =
        run.position(|e| matches!(e, Event::Stopping { service, .. } if service == "api"));
    assert!(web_stopped.unwrap() < api_stopping.unwrap(), "{:#?}", run.events);
    run.assert_no_process_alive();
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "port {port} still taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_ready_skips_dependents_and_shows_last_lines() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = format!(
        r#"
        [services.api]
        shell = "for i in $$(seq 1 30); do echo line $$i; done; sleep 0.2; echo oops >&2; exit 3"
        ready = {{ tcp = "127.0.0.1:{port}", interval = "100ms", retries = 100 }}

        [services.web]
        command = ["sleep", "300"]
        depends_on = [{{ service = "api", condition = "ready" }}]
        "#,
        port = free_port()
    );
    let run = run(dir.path(), &manifest, &[], |_, _| {}).await;

    let Outcome::Failed(failure) = run.outcome() else { panic!("{:?}", run.outcome) };
    assert_eq!(failure.service, "api");
    assert!(
        matches!(&failure.reason, FailureReason::ExitedBeforeReady { status } if status == "exit code 3"),
        "{:?}",
        failure.reason
    );
    assert_eq!(failure.last_lines.len(), 20);
    assert_eq!(failure.last_lines.last().unwrap(), "oops");
    assert_eq!(failure.last_lines[0], "line 12");
    let log = dir.path().join("logs/api.log");
    assert_eq!(failure.log_file, log);
    assert_eq!(
        failure.to_string(),
        format!(
            "service `api` exited (exit code 3) before it was ready; its last lines are above, \
             all of them in {}",
            log.display()
        )
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains(" line 1\n"));
    // Services log what they see: only the owner reads the logs.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(&dir.path().join("logs")), 0o700);
    assert!(
        !run.events
            .iter()
            .any(|e| matches!(e, Event::Starting { service, .. } if service == "web")),
        "web must not start: {:#?}",
        run.events
    );
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ignoring_sigterm_is_killed_after_its_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
        [services.stubborn]
        shell = "trap '' TERM; echo up; while true; do sleep 0.1; done"
        ready = { log_line = "up", interval = "100ms", retries = 50 }
        stop_grace = "700ms"
    "#;
    let run = run(dir.path(), manifest, &[], stop_once_ready("stubborn")).await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    let killed = run.events.iter().find_map(|e| match e {
        Event::Killed { after, .. } => Some(*after),
        _ => None,
    });
    let after = killed.expect("a Killed event");
    assert!(after >= Duration::from_millis(700), "killed after only {after:?}");
    assert!(run.stop_took.unwrap() < Duration::from_secs(5), "stop took {:?}", run.stop_took);
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grandchild_dies_with_its_group_like_go_run() {
    let dir = tempfile::tempdir().unwrap();
    // Like `go run`: the leader starts the real server as a child and waits;
    // the server (here ignoring SIGTERM) outlives the leader's own exit.
    let manifest = r#"
        [services.gorun]
        shell = "sh -c 'trap \"\" TERM; sleep 300' & echo $$! > ${TEST_DIR}/grandchild.pid; echo server up; wait"
        ready = { log_line = "server up", interval = "100ms", retries = 50 }
        stop_grace = "500ms"
    "#;
    let run = run(dir.path(), manifest, &[], stop_once_ready("gorun")).await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    let grandchild: i32 =
        std::fs::read_to_string(dir.path().join("grandchild.pid")).unwrap().trim().parse().unwrap();
    assert!(!alive(grandchild), "grandchild {grandchild} survived the stop");
    assert!(run.pids().iter().all(|&pid| !alive(pid)));
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_line_is_cut_for_the_terminal_and_kept_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
        [services.noisy]
        command = ["python3", "-c", "import sys, time\nsys.stdout.write('x' * 1048576); sys.stdout.flush()\ntime.sleep(0.3)\nprint('!'); print('after', flush=True)\ntime.sleep(300)"]
        ready = { log_line = "after", interval = "100ms", retries = 100 }
        stop_grace = "2s"
    "#;
    let began = Instant::now();
    let run = run(dir.path(), manifest, &[], stop_once_ready("noisy")).await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    assert!(began.elapsed() < Duration::from_secs(15), "took {:?}", began.elapsed());
    let lines = run.lines("noisy");
    let cut = lines.iter().find(|l| l.truncated.is_some()).expect("a cut line");
    assert!(cut.text.len() <= mesh_supervisor::MAX_LINE_SHOWN);
    assert!(
        cut.rendered.contains("cut; all of it is in"),
        "{}",
        &cut.rendered[cut.rendered.len() - 120..]
    );
    assert!(lines.iter().any(|l| l.text == "after"));
    let log = std::fs::read_to_string(dir.path().join("logs/noisy.log")).unwrap();
    let long = log.lines().find(|l| l.len() > 1_000_000).expect("the full line in the file");
    assert!(long.ends_with(&format!("{}!", "x".repeat(1000))), "the line's end is kept");
    assert_eq!(long.matches('x').count(), 1_048_576);
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_ready_restarts_with_backoff_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
        [services.flaky]
        shell = "echo run; sleep 0.2; exit 1"
        restart = { on_failure = { max = 2, backoff_max = "100ms" } }
    "#;
    let run = run(dir.path(), manifest, &[], |_, _| {}).await;

    let restarts: Vec<(u32, Duration)> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Restarting { attempt, delay, .. } => Some((*attempt, *delay)),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [(1, Duration::from_millis(100)), (2, Duration::from_millis(100))]);
    let Outcome::Failed(failure) = run.outcome() else { panic!("{:?}", run.outcome) };
    assert!(matches!(&failure.reason, FailureReason::Exited { restarts: 2, .. }), "{failure:?}");
    assert_eq!(run.pids().len(), 3);
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_stop_request_kills_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
        [services.stubborn]
        shell = "trap '' TERM; echo up; while true; do sleep 0.1; done"
        ready = { log_line = "up", interval = "100ms", retries = 50 }
        stop_grace = "30s"
    "#;
    let mut requests = 0;
    let run = run(dir.path(), manifest, &[], |event, stop| {
        let again = matches!(event, Event::Stopping { .. }) && requests == 1;
        if (is_ready(event, "stubborn") && requests == 0) || again {
            requests += 1;
            stop.request();
        }
    })
    .await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    assert!(run.stop_took.unwrap() < Duration::from_secs(5), "stop took {:?}", run.stop_took);
    assert!(run.events.iter().any(|e| matches!(e, Event::Killed { .. })));
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_runs_the_subset_with_what_it_depends_on() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = r#"
        [services.db]
        command = ["sleep", "300"]
        [services.api]
        command = ["sleep", "300"]
        depends_on = ["db"]
        [services.docs]
        command = ["sleep", "300"]
    "#;
    let run = run(dir.path(), manifest, &["api"], stop_once_ready("api")).await;

    let started: Vec<&str> = run
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Started { service, .. } => Some(service.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["db", "api"]);
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_get_inherited_then_caller_then_file_then_manifest_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("extra.env"), "LAYER_C=file\nLAYER_B=file\n").unwrap();
    let manifest = r#"
        [services.dump]
        shell = "env > ${TEST_DIR}/env.txt; echo dumped; sleep 300"
        env_files = ["extra.env"]
        env = { LAYER_B = "manifest-${LAYER_A}" }
        ready = { log_line = "dumped", interval = "100ms", retries = 50 }
    "#;
    let vars = BTreeMap::from([
        ("TEST_DIR".to_string(), dir.path().display().to_string()),
        ("LAYER_A".to_string(), "caller".to_string()),
        ("LAYER_B".to_string(), "caller".to_string()),
        ("LAYER_C".to_string(), "caller".to_string()),
    ]);
    let mut stop = stop_once_ready("dump");
    let run = run_with(dir.path(), manifest, &[], vars, &mut stop).await;

    assert!(matches!(run.outcome(), Outcome::Stopped), "{:?}", run.outcome);
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    let has = |line: &str| env.lines().any(|l| l == line);
    assert!(has(&format!("PATH={}", std::env::var("PATH").unwrap())), "inherited PATH");
    assert!(has("LAYER_A=caller"));
    assert!(has("LAYER_C=file"));
    assert!(has("LAYER_B=manifest-caller"));
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_after_its_retries_fails_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let manifest = format!(
        r#"
        [services.mute]
        command = ["sleep", "300"]
        ready = {{ tcp = "127.0.0.1:{port}", interval = "50ms", timeout = "200ms", retries = 3 }}
        "#
    );
    let run = run(dir.path(), &manifest, &[], |_, _| {}).await;

    let Outcome::Failed(failure) = run.outcome() else { panic!("{:?}", run.outcome) };
    let FailureReason::NotReady { tries, last } = &failure.reason else { panic!("{failure:?}") };
    assert_eq!(*tries, 3);
    assert!(last.starts_with(&format!("connect to 127.0.0.1:{port}: ")), "{last}");
    run.assert_no_process_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_port_in_use_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let manifest = format!("[services.api]\ncommand = [\"sleep\", \"300\"]\nport = {port}\n");
    let run = run(dir.path(), &manifest, &[], |_, _| {}).await;

    let error = run.outcome.as_ref().expect_err("port is taken").to_string();
    assert_eq!(
        error,
        format!(
            "service `api` needs port {port}, which another process is using: stop that process \
             (`ss -ltnp 'sport = :{port}'` or `lsof -i :{port}` names it) or change `port` in the \
             manifest"
        )
    );
    assert!(run.pids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_missing_program_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[services.api]\ncommand = [\"mesh-no-such-program\", \"serve\"]\n";
    let run = run(dir.path(), manifest, &[], |_, _| {}).await;

    let Outcome::Failed(failure) = run.outcome() else { panic!("{:?}", run.outcome) };
    let message = failure.to_string();
    assert!(
        message.starts_with("service `api` could not start `mesh-no-such-program` in "),
        "{message}"
    );
    assert!(
        message.ends_with("check that `mesh-no-such-program` is installed and on PATH"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_run_kills_every_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.toml");
    let text = r#"
        [services.a]
        shell = "sleep 300 & echo up; wait"
        ready = { log_line = "up", interval = "100ms", retries = 50 }
        [services.b]
        command = ["sleep", "300"]
        depends_on = ["a"]
    "#;
    std::fs::write(&path, text).unwrap();
    let vars = BTreeMap::new();
    let manifest = Manifest::load(&path, &vars).unwrap();
    let log_dir = dir.path().join("logs");
    let options =
        Options { vars, only: vec![], log_dir, color: false, timestamps: false, reaper: None };
    let (tx, mut rx) = mpsc::channel(64);
    let task = tokio::spawn(Supervisor::new(manifest, options).run(tx));
    let mut pids = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(HANG, rx.recv()).await {
        match event {
            Event::Started { pid, .. } => pids.push(pid as i32),
            Event::Ready { service, .. } if service == "b" => break,
            _ => {}
        }
    }
    assert_eq!(pids.len(), 2, "both services should have started");

    task.abort();
    let _ = task.await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pgid| !group_members(pgid).is_empty()) {
        assert!(Instant::now() < deadline, "groups still alive after the run was dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
