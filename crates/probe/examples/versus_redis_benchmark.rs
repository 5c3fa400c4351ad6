//! Is our load generator ever the bottleneck? Runs `redis bench` and `redis-benchmark` against
//! the same local redis-server with the same parameters and prints the throughput ratio.
//!
//! ```text
//! # the dev profile, as users run it; add --release for comparison
//! cargo run -p mesh-probe --example versus_redis_benchmark
//! REQUESTS=500000 cargo run -p mesh-probe --example versus_redis_benchmark
//! ```
//!
//! The target is ours >= 90% of redis-benchmark. Not a test and not a CI gate: this machine's
//! cores are shared, so throughput moves by 10-20% from run to run. The client CPU time per
//! request (ours and redis-benchmark's, from /proc) is the steadier figure: when ours is not
//! above theirs, our client is not what limits the throughput.

use std::process::Command;

use mesh_probe::bench::{self, BenchOptions, Test};
use mesh_probe::{NoTunnel, Target};
use mesh_testkit::{require, RedisServer};

/// Rounds per configuration; the best of them is kept for both tools (least disturbed run).
const ROUNDS: usize = 3;

fn main() {
    let requests: u64 =
        std::env::var("REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let server = RedisServer::builder().start();
    let target = Target::new("127.0.0.1", server.port());
    println!(
        "redis-server 127.0.0.1:{}, {requests} requests per test (x4 with -P 16), -d 3, \
         -r 100000, best of {ROUNDS}; cpu/op of ours includes deleting the keys SET wrote",
        server.port()
    );
    println!(
        "{:<6} {:>3} {:>3} {:>14} {:>14} {:>14} {:>7} {:>7} {:>12} {:>12}",
        "test",
        "-c",
        "-P",
        "redis-bench/s",
        "ours 1 thr/s",
        "ours 2 thr/s",
        "ratio1",
        "ratio2",
        "their cpu/op",
        "our cpu/op"
    );
    for pipeline in [1usize, 16] {
        for test in [Test::Set, Test::Get] {
            let requests = requests * if pipeline > 1 { 4 } else { 1 };
            let before = cpu_seconds(Whose::Children);
            let theirs = best(|| redis_benchmark(&server, test, 50, pipeline, requests));
            let their_cpu =
                (cpu_seconds(Whose::Children) - before) / (ROUNDS as f64 * requests as f64);
            let before = cpu_seconds(Whose::Own);
            let one = best(|| ours(&target, test, 50, pipeline, requests, 1));
            let our_cpu = (cpu_seconds(Whose::Own) - before) / (ROUNDS as f64 * requests as f64);
            let two = best(|| ours(&target, test, 50, pipeline, requests, 2));
            println!(
                "{:<6} {:>3} {:>3} {:>14.0} {:>14.0} {:>14.0} {:>6.0}% {:>6.0}% {:>9.2} µs {:>9.2} µs",
                test.name(),
                50,
                pipeline,
                theirs,
                one,
                two,
                100.0 * one / theirs,
                100.0 * two / theirs,
                their_cpu * 1e6,
                our_cpu * 1e6
            );
        }
    }
}

enum Whose {
    /// This process (our client, on its current-thread runtime).
    Own,
    /// Children waited for (redis-benchmark).
    Children,
}

/// User + system CPU seconds from /proc/self/stat (fields 14-15 own, 16-17 children's).
fn cpu_seconds(whose: Whose) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').expect("a comm field") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let (user, system) = match whose {
        Whose::Own => (11, 12),
        Whose::Children => (13, 14),
    };
    let ticks: f64 = fields[user].parse::<f64>().unwrap() + fields[system].parse::<f64>().unwrap();
    // CLK_TCK is 100 on Linux.
    ticks / 100.0
}

fn best(mut run: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| run()).fold(0.0, f64::max)
}

/// Requests per second that `redis-benchmark` reports (its `--csv` output), sending the same
/// commands as ours: the same key shape (our prefix, a 12-digit random number) and value, so the
/// server does the same work for both.
fn redis_benchmark(
    server: &RedisServer,
    test: Test,
    clients: usize,
    pipeline: usize,
    n: u64,
) -> f64 {
    let key = "mesh-bench:{0123456789abcdef}:key:__rand_int__";
    let command: Vec<&str> = match test {
        Test::Set => vec!["SET", key, "xxx"],
        Test::Get => vec!["GET", key],
        other => panic!("no redis-benchmark command for {other:?}"),
    };
    let output = Command::new(require("redis-benchmark"))
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-c", &clients.to_string(), "-n", &n.to_string(), "-P", &pipeline.to_string()])
        .args(["-r", "100000", "--csv"])
        .args(&command)
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&output.stdout);
    // "test","rps","avg_latency_ms",...  then  "SET mesh-bench:...","123456.79",...
    let line = text.lines().last().unwrap_or_default();
    let field = line.split("\",\"").nth(1).unwrap_or_else(|| panic!("no rps in {text}"));
    field.parse().unwrap_or_else(|_| panic!("no rps in {text}"))
}

/// Our requests per second, on a runtime with `threads` worker threads (1: current thread).
fn ours(
    target: &Target,
    test: Test,
    clients: usize,
    pipeline: usize,
    n: u64,
    threads: usize,
) -> f64 {
    let options = BenchOptions {
        clients,
        requests: n,
        pipeline,
        value_size: 3,
        keyspace: 100_000,
        tests: vec![test],
        progress: false,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("a runtime");
    let report = runtime.block_on(bench::run(target, &NoTunnel, &options)).expect("bench runs");
    assert_eq!(report.results[0].errors, 0, "{:?}", report.results[0].first_error);
    report.results[0].ops_per_sec
}
