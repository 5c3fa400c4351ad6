//! Throughput, latency, CPU and memory of our tunnel against `ssh -N -L` and a direct
//! connection, measured with `redis-benchmark` in interleaved rounds (not a test, not a gate).
//!
//! Run: `cargo run -p mesh-tunnel --example bench [-- ROUNDS]` (default 5 rounds). It starts
//! redis-server and OpenSSH sshd itself (through mesh-testkit), runs our engine in a child
//! process: `cargo xtask tunnel start` itself (the binary the alias runs, built first with
//! the same profile) and this binary's emulation of `dev` (the engine on its own thread beside
//! a 2-worker runtime), and `ssh -N -L` to the same sshd. The build profile is the one
//! `cargo run` uses, the same as the `cargo xtask` alias.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesh_config::Forward;
use mesh_testkit::process::Running;
use mesh_testkit::{free_port, require, RedisServer, Sshd};

const SETTINGS: &[(&str, &[&str], u32)] = &[
    ("-c 1", &["-c", "1"], 20_000),
    ("-c 50", &["-c", "50"], 100_000),
    ("-c 50 -P 16", &["-c", "50", "-P", "16"], 400_000),
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Direct,
    OursXtask,
    OursDev,
    Ssh,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Direct, Mode::OursXtask, Mode::OursDev, Mode::Ssh];

    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::OursXtask => "cargo xtask tunnel",
            Mode::OursDev => "ours (as in dev)",
            Mode::Ssh => "ssh -N -L",
        }
    }
}

/// One redis-benchmark result line.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(&args[2..]);
        return;
    }
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    run(rounds, std::env::var_os("BENCH_QUICK").is_some());
}

/// The child: one tunnel, `current` (a current-thread runtime) or `dev` (as `dev` runs it),
/// until killed.
fn serve(args: &[String]) {
    let [flavor, ssh_port, user, key, known_hosts, local_port, redis_port] = args else {
        panic!("serve FLAVOR SSH_PORT USER KEY KNOWN_HOSTS LOCAL_PORT REDIS_PORT");
    };
    let runtime = match flavor.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        // As `cargo xtask dev` runs it: a 2-worker runtime, the tunnel on its own thread.
        _ => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
    }
    .expect("a tokio runtime");
    runtime.block_on(async {
        let forward = Forward {
            name: "redis".into(),
            local_port: local_port.parse().unwrap(),
            remote_host: "127.0.0.1".into(),
            remote_port: redis_port.parse().unwrap(),
        };
        let mut spec = mesh_tunnel::TunnelSpec::new("127.0.0.1", vec![forward]);
        spec.port = ssh_port.parse().unwrap();
        spec.user = user.clone();
        spec.key_file = Some(PathBuf::from(key));
        spec.known_hosts = PathBuf::from(known_hosts);
        spec.ssh_config = None;
        spec.interactive = false;
        let tunnel = if flavor == "dev" {
            mesh_tunnel::start_on_own_thread(spec).await.unwrap()
        } else {
            mesh_tunnel::bind(spec).await.unwrap().start().await.unwrap()
        };
        std::future::pending::<()>().await;
        drop(tunnel);
    });
}

/// `quick` (BENCH_QUICK set) compares only the current-thread tunnel with ssh, without
/// pipelining, to try a change; the report then prints CPU figures only.
fn run(rounds: usize, quick: bool) {
    let benchmark = require("redis-benchmark");
    let sshd = Sshd::builder().start();
    let redis = RedisServer::builder().start();
    let exe = std::env::current_exe().unwrap();

    let mut tunnels: BTreeMap<Mode, (Running, u16)> = BTreeMap::new();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let port = free_port();
    let xtask = xtask_tunnel(&sshd, redis.port(), port, scratch.path());
    tunnels.insert(Mode::OursXtask, (Running::spawn(xtask).unwrap(), port));
    let port = free_port();
    let mut command = Command::new(&exe);
    command.arg("serve").arg("dev").arg(sshd.port().to_string()).arg(sshd.user());
    command.arg(&sshd.user_key().private_path).arg(sshd.known_hosts());
    command.arg(port.to_string()).arg(redis.port().to_string()).stdin(Stdio::null());
    tunnels.insert(Mode::OursDev, (Running::spawn(command).unwrap(), port));
    let ssh_port = free_port();
    let mut ssh = sshd.ssh_command();
    ssh.args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"]);
    ssh.arg(format!("127.0.0.1:{ssh_port}:127.0.0.1:{}", redis.port()));
    tunnels.insert(Mode::Ssh, (Running::spawn(ssh).unwrap(), ssh_port));
    for (mode, (_, port)) in &tunnels {
        wait_for_port(*port, mode.label());
    }

    let port_of = |mode: Mode| match mode {
        Mode::Direct => redis.port(),
        other => tunnels[&other].1,
    };
    let pid_of = |mode: Mode| tunnels.get(&mode).map(|(r, _)| r.pid());

    // (setting, test, mode) -> samples; (setting, mode) -> CPU seconds per million requests.
    let mut results: BTreeMap<(usize, &str, Mode), Vec<Sample>> = BTreeMap::new();
    let mut cpu: BTreeMap<(usize, Mode), Vec<f64>> = BTreeMap::new();
    let mut rss: BTreeMap<Mode, u64> = BTreeMap::new();
    let started = Instant::now();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds} ({:.0}s so far)", started.elapsed().as_secs_f64());
        for (index, (_, flags, requests)) in SETTINGS.iter().enumerate() {
            if quick && index == 2 {
                continue;
            }
            // Rotate the order each round so no mode always runs first on a warm cache.
            let mut order = Mode::ALL.to_vec();
            order.rotate_left(round % Mode::ALL.len());
            if quick {
                order.retain(|m| matches!(m, Mode::OursXtask | Mode::Ssh));
            }
            for mode in order {
                let before = pid_of(mode).map(cpu_seconds);
                let lines = run_benchmark(&benchmark, port_of(mode), flags, *requests);
                if let (Some(pid), Some(before)) = (pid_of(mode), before) {
                    let used = cpu_seconds(pid) - before;
                    let per_million = used / (2.0 * f64::from(*requests)) * 1e6;
                    cpu.entry((index, mode)).or_default().push(per_million);
                    if index == 1 {
                        let kb = rss_kb(pid);
                        rss.entry(mode).and_modify(|r| *r = (*r).max(kb)).or_insert(kb);
                    }
                }
                for (test, sample) in lines {
                    results.entry((index, test, mode)).or_default().push(sample);
                }
            }
        }
    }

    if quick {
        report_quick(&results, &cpu);
        return;
    }
    report(rounds, &results, &cpu, &rss);
    drop(tunnels);
}

/// `cargo xtask tunnel start` in the foreground: the binary the alias runs, built as the alias
/// builds it (the dev profile and its overrides), with its own configuration file, state
/// directory and HOME.
fn xtask_tunnel(sshd: &Sshd, redis_port: u16, local_port: u16, scratch: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let built = Command::new(cargo)
        .args(["build", "-q", "-p", "xtask", "--bin", "xtask", "--manifest-path"])
        .arg(&manifest)
        .status()
        .expect("cargo runs");
    assert!(built.success(), "cargo build -p xtask failed");
    let exe = std::env::current_exe().unwrap();
    // target/debug/examples/bench -> target/debug/xtask
    let binary = exe.parent().and_then(Path::parent).unwrap().join("xtask");

    let env_file = scratch.join("bench.env");
    let settings = format!(
        "BASTION_HOST_IP=127.0.0.1\nBASTION_PORT={}\nBASTION_USER={}\nBASTION_KEY_FILE={}\n\
         BASTION_KNOWN_HOSTS={}\nELASTICACHE_ENDPOINT=127.0.0.1:{redis_port}\n\
         REDIS_TUNNEL_PORT={local_port}\n",
        sshd.port(),
        sshd.user(),
        sshd.user_key().private_path.display(),
        sshd.known_hosts().display(),
    );
    std::fs::write(&env_file, settings).unwrap();
    let mut command = Command::new(binary);
    command.arg("--env-file").arg(&env_file).args(["tunnel", "start"]);
    command.env_clear().env("HOME", scratch).env("PATH", std::env::var_os("PATH").unwrap());
    command.env("XTASK_STATE_DIR", scratch.join("state")).env("NO_COLOR", "1");
    command.current_dir(scratch).stdin(Stdio::null()).stdout(Stdio::null());
    command
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_benchmark(
    binary: &std::path::Path,
    port: u16,
    flags: &[&str],
    requests: u32,
) -> Vec<(&'static str, Sample)> {
    let out = Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get", "--csv"])
        .args(["-n", &requests.to_string(), "-r", "10000", "-d", "64"])
        .args(flags)
        .stdin(Stdio::null())
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut samples = Vec::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let test = match fields.first() {
            Some(&"SET") => "SET",
            Some(&"GET") => "GET",
            _ => continue,
        };
        let rps = fields[1].parse().unwrap_or(0.0);
        let p50_ms = fields[4].parse().unwrap_or(0.0);
        let p99_ms = fields[6].parse().unwrap_or(0.0);
        samples.push((test, Sample { rps, p50_ms, p99_ms }));
    }
    assert!(samples.len() == 2, "redis-benchmark on port {port} printed: {text}");
    samples
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat; after the comm they are at 11 and 12 (0-based).
    let ticks: u64 =
        fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // /proc reports USER_HZ ticks, 100 per second on every Linux architecture we run on.
    ticks as f64 / 100.0
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

fn report_quick(
    results: &BTreeMap<(usize, &str, Mode), Vec<Sample>>,
    cpu: &BTreeMap<(usize, Mode), Vec<f64>>,
) {
    for (index, (setting, _, _)) in SETTINGS.iter().enumerate().take(2) {
        for mode in [Mode::OursXtask, Mode::Ssh] {
            let rps: Vec<f64> = ["SET", "GET"]
                .iter()
                .map(|t| {
                    median(&results[&(index, *t, mode)].iter().map(|s| s.rps).collect::<Vec<_>>())
                })
                .collect();
            println!(
                "{setting:<6} {:<22} SET {:>7.0} GET {:>7.0} rps, CPU {:.1} s per million",
                mode.label(),
                rps[0],
                rps[1],
                median(&cpu[&(index, mode)])
            );
        }
    }
}

fn report(
    rounds: usize,
    results: &BTreeMap<(usize, &str, Mode), Vec<Sample>>,
    cpu: &BTreeMap<(usize, Mode), Vec<f64>>,
    rss: &BTreeMap<Mode, u64>,
) {
    println!(
        "\nredis-benchmark, {rounds} interleaved rounds: median requests/s (min-max), p50 and \
         p99 latency in ms (medians)"
    );
    println!("ratio = ours / ssh -N -L (throughput; for p50, lower is better)\n");
    for (index, (setting, _, _)) in SETTINGS.iter().enumerate() {
        for test in ["SET", "GET"] {
            println!("{test} {setting}");
            let rps_of = |mode| {
                let samples = &results[&(index, test, mode)];
                samples.iter().map(|s| s.rps).collect::<Vec<_>>()
            };
            let p50_of = |mode| {
                let samples = &results[&(index, test, mode)];
                median(&samples.iter().map(|s| s.p50_ms).collect::<Vec<_>>())
            };
            let p99_of = |mode| {
                let samples = &results[&(index, test, mode)];
                median(&samples.iter().map(|s| s.p99_ms).collect::<Vec<_>>())
            };
            let ssh_rps = median(&rps_of(Mode::Ssh));
            let ssh_p50 = p50_of(Mode::Ssh);
            for mode in Mode::ALL {
                let rps = rps_of(mode);
                let (lo, hi) = spread(&rps);
                let ratio = match mode {
                    Mode::OursXtask | Mode::OursDev => format!(
                        "  x{:.2} rps, x{:.2} p50",
                        median(&rps) / ssh_rps,
                        p50_of(mode) / ssh_p50
                    ),
                    _ => String::new(),
                };
                println!(
                    "  {:<22} {:>9.0} ({:>7.0}-{:>7.0})  p50 {:.3} p99 {:.3}{ratio}",
                    mode.label(),
                    median(&rps),
                    lo,
                    hi,
                    p50_of(mode),
                    p99_of(mode)
                );
            }
        }
    }
    println!("\nCPU seconds per million requests of the tunnel process (median, min-max)");
    for (index, (setting, _, _)) in SETTINGS.iter().enumerate() {
        let line: Vec<String> = [Mode::OursXtask, Mode::OursDev, Mode::Ssh]
            .iter()
            .map(|&mode| {
                let values = &cpu[&(index, mode)];
                let (lo, hi) = spread(values);
                format!("{} {:.1} ({lo:.1}-{hi:.1})", mode.label(), median(values))
            })
            .collect();
        println!("  {setting:<12} {}", line.join(", "));
    }
    println!("\nRSS after the -c 50 runs (max over rounds)");
    for (mode, kb) in rss {
        println!("  {:<22} {:.1} MB", mode.label(), *kb as f64 / 1024.0);
    }
}
