//! Prints the doctor's wall time all-green (real sshd, redis-server and moto)
//! and with the bastion's address dropping packets, where the run must be
//! bounded by one timeout, not by a sum of them. Figures, not a CI gate:
//! `cargo bench -p mesh-doctor --bench wall_time`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use mesh_doctor::{Options, Severity};
use mesh_testkit::{free_port, RedisServer};
use support::{aws_venv, Blackhole, Fixture, Moto, Servers};

const RUNS: usize = 5;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        all_green().await;
        blackholed().await;
    });
}

async fn all_green() {
    let venv = aws_venv();
    let moto = Moto::start(&venv);
    let servers = Servers::start();
    let mut fixture = Fixture::new();
    fixture.tools(&["redis-cli", "ssh"]);
    fixture.path_first(&venv);
    servers.configure(&mut fixture);
    fixture
        .shell_var("AWS_ENDPOINT_URL", moto.endpoint())
        .shell_var("AWS_ACCESS_KEY_ID", "testing")
        .shell_var("AWS_SECRET_ACCESS_KEY", "testing")
        .shell_var("AWS_REGION", "us-east-1");
    fixture.write(".env", "ENVIRONMENT=development\n");
    let options = Options { services: false, ..Options::default() };
    let times = measure(&fixture, &options, |report| {
        let worst = report.categories.iter().map(|c| c.severity).max();
        assert!(worst <= Some(Severity::Ok), "not all green: {report:#?}");
    })
    .await;
    print("all green (sshd + redis-server + moto, 5 s timeout)", &times);
}

async fn blackholed() {
    let hole = Blackhole::new();
    let redis = RedisServer::builder().start();
    let mut fixture = Fixture::new();
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("BASTION_PORT", hole.port)
        .set("ELASTICACHE_ENDPOINT", redis.addr())
        .set("REDIS_TUNNEL_PORT", free_port());
    let options = Options { services: false, ..Options::default() };
    let times = measure(&fixture, &options, |report| {
        assert!(!report.ok, "a blackholed bastion must fail");
    })
    .await;
    print("bastion blackholed (5 s timeout; deadline 21 s)", &times);
}

async fn measure(
    fixture: &Fixture,
    options: &Options,
    check: impl Fn(&mesh_doctor::Report),
) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let report = fixture.run(options.clone()).await;
        times.push(started.elapsed());
        check(&report);
    }
    times.sort();
    times
}

fn print(what: &str, times: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "doctor wall time, {what}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} runs",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        times.len()
    );
}
