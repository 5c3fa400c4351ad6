//! The whole sandbox loop: sandbox up, an OpenSSH forward through our bastion,
//! the three stand-ins as real processes, an event POSTed to rest-api and
//! acknowledged by the worker, then SIGTERM and shutdown leaving nothing.
//!
//! This test binary has its own `main` (no libtest): run with `--standin ROLE`
//! it becomes that stand-in service, the way `xtask __standin` does.

mod common;

use common::{http, is_listening, process_exists, redis_connection, wait_for, SshForward};
use mesh_probe::resp::Value;
use mesh_sandbox::{
    daemon, free_loopback_port, run_standin, Env, Role, Sandbox, SandboxOptions, CONSUMER_GROUP,
    STREAM,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--standin") {
        let role: Role = args[at + 1].parse().expect("a service name");
        if let Err(err) = run_standin(role, &Env::from_process()) {
            eprintln!("{role}: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(at) = args.iter().position(|arg| arg == "--serve") {
        let paths = daemon::DaemonPaths::in_dir(&args[at + 1]);
        if let Err(err) = daemon::serve(&paths, false) {
            eprintln!("serve: {err}");
            std::process::exit(1);
        }
        return;
    }

    let filter = args.iter().skip(1).find(|arg| !arg.starts_with('-'));
    let tests: [(&str, fn()); 2] = [
        (
            "an_event_posted_to_rest_api_is_acknowledged_by_the_worker_and_nothing_is_left",
            an_event_posted_to_rest_api_is_acknowledged_by_the_worker_and_nothing_is_left,
        ),
        (
            "background_sandbox_is_started_found_and_stopped_leaving_nothing",
            background_sandbox_is_started_found_and_stopped_leaving_nothing,
        ),
    ];
    for (name, test) in tests {
        if filter.is_some_and(|filter| !name.contains(filter.as_str())) {
            continue;
        }
        println!("test {name} ...");
        test();
        println!("test {name} ... ok");
    }
}

/// A stand-in child process with its stdout collected line by line.
struct Standin {
    role: Role,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Standin {
    fn spawn(role: Role, sandbox: &Sandbox) -> Standin {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--standin", role.name()])
            .envs(sandbox.vars())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("  [{role}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Standin { role, child, lines, reader: Some(reader) }
    }

    fn has_logged(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|logged| logged == line)
    }

    /// SIGTERM, then the exit status and the full log.
    fn terminate(mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_for("a stand-in to exit on SIGTERM", Duration::from_secs(5), || {
            self.child.try_wait().unwrap()
        });
        self.reader.take().unwrap().join().unwrap();
        let stopped = format!("{} stopped", self.role);
        assert!(self.has_logged(&stopped), "{} did not log `{stopped}`", self.role);
        status
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(sandbox: &Sandbox, var: &str) -> u16 {
    sandbox.vars()[var].parse().unwrap()
}

fn an_event_posted_to_rest_api_is_acknowledged_by_the_worker_and_nothing_is_left() {
    common::require_binary("redis-server", "apt-get install -y redis-server redis-tools");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let parent = tempfile::tempdir().unwrap();
    let options = SandboxOptions {
        parent_dir: Some(parent.path().to_path_buf()),
        rest_api_port: Some(free_loopback_port().unwrap()),
        mcp_server_port: Some(free_loopback_port().unwrap()),
        worker_port: Some(free_loopback_port().unwrap()),
        redis_tunnel_port: None,
        tls: false,
    };
    let sandbox = runtime.block_on(Sandbox::up(options)).unwrap();
    let rest_port = port_of(&sandbox, "REST_API_PORT");
    let mcp_port = port_of(&sandbox, "MCP_SERVER_PORT");
    let worker_port = port_of(&sandbox, "WORKER_PORT");
    let tunnel_port = port_of(&sandbox, "REDIS_TUNNEL_PORT");

    // The services start before the tunnel, as they may under `dev`: not ready yet.
    let rest = Standin::spawn(Role::RestApi, &sandbox);
    let mcp = Standin::spawn(Role::McpServer, &sandbox);
    let worker = Standin::spawn(Role::Worker, &sandbox);
    let health = wait_for("mcp-server to answer", Duration::from_secs(10), || {
        http("GET", mcp_port, "/health", "").ok()
    });
    assert_eq!(health.0, 503, "mcp-server reported healthy without Redis: {}", health.1);
    // Each stand-in listens when it is ready to: wait for rest-api too, not only mcp-server.
    let readyz = wait_for("rest-api to answer", Duration::from_secs(10), || {
        http("GET", rest_port, "/readyz", "").ok()
    });
    assert_eq!(readyz.0, 503, "rest-api reported ready without Redis: {}", readyz.1);

    let bastion = sandbox.bastion().unwrap();
    let mut tunnel = SshForward::start_on(
        tunnel_port,
        bastion.port(),
        bastion.user_key_path(),
        bastion.known_hosts_path(),
        &format!("{}:6379", sandbox.endpoint()),
    );
    for (port, path) in [(rest_port, "/readyz"), (worker_port, "/health"), (mcp_port, "/health")] {
        let what = format!("GET 127.0.0.1:{port}{path} to be 200");
        let (_, body) = wait_for(&what, Duration::from_secs(10), || {
            http("GET", port, path, "").ok().filter(|(status, _)| *status == 200)
        });
        assert_eq!(body, r#"{"status":"healthy"}"#);
    }

    // One event, end to end.
    let (status, body) =
        http("POST", rest_port, "/api/v1/webhooks", r#"{"action":"opened"}"#).unwrap();
    assert_eq!(status, 202, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = reply["id"].as_str().unwrap().to_string();
    // The log line travels through a pipe and a reader thread: it may trail the reply.
    wait_for("rest-api to log the event", Duration::from_secs(5), || {
        rest.has_logged(&format!("event {id} accepted")).then_some(())
    });
    wait_for("the worker to process the event", Duration::from_secs(10), || {
        worker.has_logged(&format!("event {id} processed")).then_some(())
    });

    let redis = sandbox.redis().unwrap();
    let mut connection = redis_connection(redis.port(), redis.password());
    let pending = wait_for("the pending list to empty", Duration::from_secs(5), || {
        let summary = connection.cmd(&[b"XPENDING", STREAM.as_bytes(), CONSUMER_GROUP.as_bytes()]);
        let summary = summary.unwrap().into_array().expect("XPENDING gives an array");
        (summary[0] == Value::Integer(0)).then(|| summary[1].clone())
    });
    assert_eq!(pending, Value::Null);
    let range = connection.cmd(&[b"XRANGE", STREAM.as_bytes(), id.as_bytes(), id.as_bytes()]);
    let entry = Value::Array(vec![
        Value::Bulk(id.clone().into_bytes()),
        Value::Array(
            ["source", "sandbox", "payload", r#"{"action":"opened"}"#]
                .map(|text| Value::Bulk(text.as_bytes().to_vec()))
                .to_vec(),
        ),
    ]);
    assert_eq!(range.unwrap(), Value::Array(vec![entry]));
    drop(connection);

    // SIGTERM stops each stand-in cleanly.
    for standin in [rest, mcp, worker] {
        let role = standin.role;
        let status = standin.terminate();
        assert!(status.success(), "{role} exited with {status} on SIGTERM");
    }
    tunnel.stop();

    // Shutdown leaves no process, listener or file.
    let redis_pid = redis.pid().unwrap();
    let ports = [bastion.port(), redis.port(), tunnel_port, rest_port, mcp_port, worker_port];
    let dir = sandbox.dir().to_path_buf();
    runtime.block_on(sandbox.shutdown()).unwrap();
    assert!(!process_exists(redis_pid), "redis-server {redis_pid} still runs");
    for port in ports {
        assert!(!is_listening(port), "127.0.0.1:{port} still accepts connections");
    }
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
}

fn background_sandbox_is_started_found_and_stopped_leaving_nothing() {
    common::require_binary("redis-server", "apt-get install -y redis-server redis-tools");
    let state = tempfile::tempdir().unwrap();
    let paths = daemon::DaemonPaths::under_state_root(state.path());
    let serve = || {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.arg("--serve").arg(paths.dir());
        command
    };
    assert_eq!(daemon::status(&paths), daemon::Status::NotRunning);

    let running = match daemon::start(&paths, serve()).unwrap() {
        daemon::Started::New(running) => running,
        other => panic!("expected a new sandbox, got {other:?}"),
    };
    assert_eq!(daemon::status(&paths), daemon::Status::Running(running.clone()));
    assert_eq!(
        daemon::start(&paths, serve()).unwrap(),
        daemon::Started::AlreadyRunning(running.clone())
    );

    // The env file it names works: its password opens its Redis.
    let vars: std::collections::BTreeMap<String, String> =
        dotenvy::from_path_iter(&running.env_file).unwrap().map(Result::unwrap).collect();
    assert_eq!(vars["BASTION_PORT"], running.bastion_port.to_string());
    let password = mesh_config::Secret::new(vars["REDIS_PASSWORD"].clone());
    assert_eq!(common::auth_ping(running.redis_port, &password).unwrap(), "+OK\r\n+PONG\r\n");

    assert_eq!(daemon::stop(&paths).unwrap(), Some(running.pid));
    wait_for("the background sandbox to exit", Duration::from_secs(5), || {
        (!process_exists(running.pid) || is_zombie(running.pid)).then_some(())
    });
    assert!(!process_exists(running.redis_pid), "redis-server {} still runs", running.redis_pid);
    for port in [running.bastion_port, running.redis_port] {
        assert!(!is_listening(port), "127.0.0.1:{port} still accepts connections");
    }
    assert!(!paths.dir().exists(), "{} was left behind", paths.dir().display());
    assert_eq!(daemon::status(&paths), daemon::Status::NotRunning);
    assert_eq!(daemon::stop(&paths).unwrap(), None);
}

/// The detached child of this test process stays a zombie until we exit.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.starts_with(" Z")))
        .unwrap_or(false)
}
