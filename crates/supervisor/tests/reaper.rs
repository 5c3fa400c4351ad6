//! The reaper against real processes: a supervisor killed outright (SIGKILL)
//! has its services stopped by the reaper, grandchildren included; a clean run
//! leaves no reaper behind; a reaper told `done` signals nothing; one whose
//! input ends signals only the groups it was told of.
//!
//! The helpers (the supervisor to kill, the reaper) are this test binary run
//! again with the calling test as its only filter and a role in the
//! environment: each test first plays its role when it was started as one.

use mesh_supervisor::{Event, Manifest, Options, Outcome, Supervisor};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Which part a helper run of this binary plays: `supervisor` or `reaper`.
const ROLE: &str = "MESH_REAPER_TEST_ROLE";
/// The test a helper belongs to (its filter, for the helpers it starts).
const TEST: &str = "MESH_REAPER_TEST_NAME";
/// A value unique to one test, to find its reaper among all processes.
const TOKEN: &str = "MESH_REAPER_TEST_TOKEN";

/// Plays the role this run was started for, then exits; returns at once in a
/// plain test run.
fn play_role_if_asked() {
    match std::env::var(ROLE).as_deref() {
        Ok("reaper") => {
            // The supervisor appends the grace in milliseconds as the last argument.
            let last = std::env::args().next_back().unwrap_or_default();
            let grace_ms: u64 = last.parse().unwrap_or_else(|_| panic!("grace, got `{last}`"));
            let reaped = mesh_supervisor::reaper::run(Duration::from_millis(grace_ms));
            println!("REAPED {reaped:?}");
            std::process::exit(0);
        }
        Ok("supervisor") => {
            supervisor_role();
            std::process::exit(0);
        }
        _ => {}
    }
}

/// This binary, running only `test`, as `role`.
fn helper(role: &str, test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(TEST, test);
    command
}

/// Runs two services with a reaper, prints `STARTED <pid>` for each and
/// `READY` once both are ready, then runs until killed.
fn supervisor_role() {
    let dir = PathBuf::from(std::env::var("TEST_DIR").unwrap());
    let test = std::env::var(TEST).unwrap();
    let manifest = r#"
        [services.sleeper]
        command = ["sh", "-c", "sleep 300"]
        stop_grace = "1s"

        [services.gorun]
        shell = "sh -c 'trap \"\" TERM; sleep 300' & echo $$! > ${TEST_DIR}/grandchild.pid; echo server up; wait"
        ready = { log_line = "server up", interval = "100ms", retries = 50 }
        stop_grace = "1s"
    "#;
    let path = dir.join("services.toml");
    std::fs::write(&path, manifest).unwrap();
    let vars = BTreeMap::from([("TEST_DIR".to_string(), dir.display().to_string())]);
    let manifest = Manifest::load(&path, &vars).unwrap();
    let reaper = Some(helper("reaper", &test));
    let log_dir = dir.join("logs");
    let options = Options { vars, only: vec![], log_dir, color: false, timestamps: false, reaper };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let supervisor = Supervisor::new(manifest, options);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let _run = tokio::spawn(supervisor.run(tx));
        let mut ready = 0;
        while let Some(event) = rx.recv().await {
            match event {
                Event::Started { pid, .. } => println!("STARTED {pid}"),
                Event::Ready { .. } => {
                    ready += 1;
                    if ready == 2 {
                        println!("READY");
                    }
                }
                _ => {}
            }
        }
    });
}

/// Kills what a test started should it fail half-way: these process groups,
/// and these single processes (which share the test's own group).
struct Cleanup {
    groups: Vec<i32>,
    pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pgid in &self.groups {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        for &pid in &self.pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// What follows `marker` in a helper's line: libtest may have printed its
/// `test NAME ... ` before it, without a newline.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split_once(marker).map(|(_, rest)| rest)
}

/// The fields of /proc/PID/stat after the command name; None when gone.
fn stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(text.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|fields| !matches!(fields[0].as_str(), "Z" | "X"))
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let entries = std::fs::read_dir("/proc").expect("these tests read /proc (Linux)");
    let pids = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|&pid| {
        stat(pid).is_some_and(|f| f[2].parse() == Ok(pgid) && !matches!(f[0].as_str(), "Z" | "X"))
    })
    .collect()
}

/// The reapers of the test whose token is `token` (found by their environment).
fn reapers(token: &str) -> Vec<i32> {
    let wanted = [format!("{ROLE}=reaper"), format!("{TOKEN}={token}")];
    let entries = std::fs::read_dir("/proc").expect("these tests read /proc (Linux)");
    let pids = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            let entries = env.split(|b| *b == 0);
            wanted.iter().all(|w| entries.clone().any(|entry| entry == w.as_bytes()))
        })
    })
    .collect()
}

/// Polls `done` until it holds or `limit` passes; how long it took.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < limit, "{what} after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    began.elapsed()
}

/// A child's stdout lines, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A process of its own group, so a signal to the group reaches only it.
fn spawn_group(program: &str, args: &[&str]) -> Child {
    Command::new(program).args(args).process_group(0).spawn().unwrap()
}

#[test]
fn services_and_grandchildren_are_stopped_when_the_supervisor_is_killed_outright() {
    play_role_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().display().to_string();
    let mut parent = helper(
        "supervisor",
        "services_and_grandchildren_are_stopped_when_the_supervisor_is_killed_outright",
    )
    .env("TEST_DIR", dir.path())
    .env(TOKEN, &token)
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = lines_of(&mut parent);
    let mut cleanup = Cleanup { groups: vec![], pids: vec![parent.id() as i32] };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let line = line.unwrap_or_else(|_| {
            let _ = parent.kill();
            panic!("the supervisor did not get its services ready within 30 s")
        });
        if let Some(pid) = after(&line, "STARTED ") {
            cleanup.groups.push(pid.parse().unwrap());
        }
        if line.ends_with("READY") {
            break;
        }
    }
    let groups = cleanup.groups.clone();
    assert_eq!(groups.len(), 2, "two services started");
    let grandchild: i32 =
        std::fs::read_to_string(dir.path().join("grandchild.pid")).unwrap().trim().parse().unwrap();
    assert!(alive(grandchild) && groups.iter().all(|&g| !group_members(g).is_empty()));
    let reaper = reapers(&token);
    assert_eq!(reaper.len(), 1, "one reaper beside the supervisor: {reaper:?}");

    kill(Pid::from_raw(parent.id() as i32), Signal::SIGKILL).unwrap();
    parent.wait().unwrap();
    // The grandchild ignores SIGTERM: the reaper needs its grace (1 s), then SIGKILL.
    let took = within(Duration::from_secs(10), "services still running", || {
        !alive(grandchild) && groups.iter().all(|&g| group_members(g).is_empty())
    });
    assert!(took >= Duration::from_millis(500), "the grace was skipped: gone after {took:?}");
    within(Duration::from_secs(5), "the reaper is still running", || !alive(reaper[0]));
}

#[test]
fn a_clean_run_waits_for_its_reaper_to_exit() {
    play_role_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().display().to_string();
    let path = dir.path().join("services.toml");
    std::fs::write(&path, "[services.sleeper]\ncommand = [\"sleep\", \"300\"]\n").unwrap();
    let vars = BTreeMap::new();
    let manifest = Manifest::load(&path, &vars).unwrap();
    let mut reaper = helper("reaper", "a_clean_run_waits_for_its_reaper_to_exit");
    reaper.env(TOKEN, &token);
    let log_dir = dir.path().join("logs");
    let reaper = Some(reaper);
    let options = Options { vars, only: vec![], log_dir, color: false, timestamps: false, reaper };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (outcome, reaper_pid, service) = runtime.block_on(async {
        let supervisor = Supervisor::new(manifest, options);
        let stop = supervisor.stop_handle();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let run = tokio::spawn(supervisor.run(tx));
        let (mut reaper_pid, mut service) = (None, None);
        while let Some(event) = rx.recv().await {
            match event {
                Event::Started { pid, .. } => service = Some(pid as i32),
                Event::Ready { .. } => {
                    reaper_pid = reapers(&token).first().copied();
                    stop.request();
                }
                _ => {}
            }
        }
        (run.await.unwrap(), reaper_pid, service.unwrap())
    });

    assert!(matches!(outcome, Ok(Outcome::Stopped)), "{outcome:?}");
    let pid = reaper_pid.expect("a reaper ran beside the services");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "reaper {pid} left behind: {:?}",
        stat(pid)
    );
    assert!(group_members(service).is_empty());
}

#[test]
fn a_reaper_is_in_its_own_session_and_ignores_ctrl_c_and_hangup() {
    play_role_if_asked();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().display().to_string();
    let path = dir.path().join("services.toml");
    std::fs::write(&path, "[services.sleeper]\ncommand = [\"sleep\", \"300\"]\n").unwrap();
    let vars = BTreeMap::new();
    let manifest = Manifest::load(&path, &vars).unwrap();
    let mut reaper =
        helper("reaper", "a_reaper_is_in_its_own_session_and_ignores_ctrl_c_and_hangup");
    reaper.env(TOKEN, &token);
    let (log_dir, reaper) = (dir.path().join("logs"), Some(reaper));
    let options = Options { vars, only: vec![], log_dir, color: false, timestamps: false, reaper };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (pid, session, ignored) = runtime.block_on(async {
        let supervisor = Supervisor::new(manifest, options);
        let stop = supervisor.stop_handle();
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let run = tokio::spawn(supervisor.run(tx));
        let mut seen = None;
        while let Some(event) = rx.recv().await {
            if let Event::Ready { .. } = event {
                let pid = *reapers(&token).first().expect("a reaper");
                let session = stat(pid).unwrap()[3].clone();
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap();
                let ignored = u64::from_str_radix(ignored.trim(), 16).unwrap();
                seen = Some((pid, session, ignored));
                stop.request();
            }
        }
        run.await.unwrap().unwrap();
        seen.expect("the service got ready")
    });

    assert_eq!(session, pid.to_string(), "the reaper leads a session of its own");
    for signal in [Signal::SIGINT, Signal::SIGHUP] {
        assert_ne!(ignored & (1 << (signal as i32 - 1)), 0, "{signal} is not ignored");
    }
}

#[test]
fn a_reaper_told_done_signals_nothing() {
    play_role_if_asked();
    let mut service = spawn_group("sleep", &["300"]);
    let _cleanup = Cleanup { groups: vec![service.id() as i32], pids: vec![] };
    let mut reaper = helper("reaper", "a_reaper_told_done_signals_nothing")
        .arg("200")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = reaper.stdin.take().unwrap();
    write!(stdin, "{}\ndone\n", service.id()).unwrap();
    drop(stdin);
    let lines = lines_of(&mut reaper);

    within(Duration::from_secs(10), "the reaper did not exit", || {
        reaper.try_wait().unwrap().is_some()
    });
    assert!(reaper.wait().unwrap().success());
    let reaped: Vec<String> =
        lines.iter().filter_map(|l| Some(after(&l, "REAPED ")?.into())).collect();
    assert_eq!(reaped, ["Done"]);
    assert!(service.try_wait().unwrap().is_none(), "the service was signalled");
}

#[test]
fn a_reaper_whose_input_ends_stops_only_the_groups_it_was_told_of() {
    play_role_if_asked();
    let mut told = spawn_group("sleep", &["300"]);
    let mut stubborn = spawn_group("sh", &["-c", "trap '' TERM; sleep 300"]);
    let mut gone = spawn_group("sleep", &["300"]);
    let mut never_told = spawn_group("sleep", &["300"]);
    let everyone = [&told, &stubborn, &gone, &never_told];
    let groups = everyone.iter().map(|c| c.id() as i32).collect();
    let _cleanup = Cleanup { groups, pids: vec![] };
    let mut reaper =
        helper("reaper", "a_reaper_whose_input_ends_stops_only_the_groups_it_was_told_of")
            .arg("300")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
    let mut stdin = reaper.stdin.take().unwrap();
    let (told_id, stubborn_id, gone_id) = (told.id(), stubborn.id(), gone.id());
    // Its own group too: it must refuse that one.
    let own = reaper.id();
    write!(stdin, "{told_id}\n{stubborn_id}\n{gone_id}\n-{gone_id}\n{own}\nnonsense\n").unwrap();
    drop(stdin);

    within(Duration::from_secs(10), "the reaper did not exit", || {
        reaper.try_wait().unwrap().is_some()
    });
    let status = reaper.wait().unwrap();
    assert!(status.success(), "the reaper ended with {status:?}");
    assert_eq!(told.try_wait().unwrap().and_then(|s| s.signal()), Some(Signal::SIGTERM as i32));
    assert_eq!(stubborn.try_wait().unwrap().and_then(|s| s.signal()), Some(Signal::SIGKILL as i32));
    assert!(gone.try_wait().unwrap().is_none(), "a group said gone was signalled");
    assert!(never_told.try_wait().unwrap().is_none(), "a group never told of was signalled");
}
