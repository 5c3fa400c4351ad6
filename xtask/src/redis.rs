//! `cargo xtask redis ping|info|bench|cli`: prove the Redis connection through the tunnel (or
//! direct), describe the server, measure it, or open redis-cli on it.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mesh_probe::bench::{self, BenchOptions, BenchReport, Test};
use mesh_probe::{InfoReport, NoTunnel, PingReport, ProbeError, Route, Target, TunnelDiagnosis};

use crate::context::{number_in, seconds_up_to, Context, UsageError};
use crate::output::{table, BOLD, DIM};

#[derive(Subcommand)]
pub enum RedisCmd {
    /// Connect, authenticate and PING; on failure, name the cause and its fix.
    Ping(ConnArgs),
    /// Describe the server: version, mode, role, clients, memory, keys, cluster nodes.
    Info(ConnArgs),
    /// Measure throughput and latency per command with many clients (writes, then deletes, keys).
    Bench(BenchArgs),
    /// Open redis-cli on the endpoint (the password goes through REDISCLI_AUTH, never argv).
    Cli(CliArgs),
}

/// How to reach Redis.
#[derive(Args, Clone)]
pub struct ConnArgs {
    /// Dial the endpoint itself instead of the tunnel's local forward.
    #[arg(long)]
    pub direct: bool,
    /// Skip TLS certificate verification (every report then says so).
    #[arg(long)]
    pub insecure: bool,
    /// Give up on each step (connect, TLS handshake, each reply) after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = seconds_up_to(3600.0))]
    pub timeout: f64,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Parallel connections.
    #[arg(short = 'c', long, default_value_t = 50, value_parser = number_in::<usize>(1, 1_000_000))]
    pub clients: usize,
    /// Requests per test, over all clients.
    #[arg(short = 'n', long, default_value_t = 100_000, value_parser = number_in::<u64>(1, 1_000_000_000))]
    pub requests: u64,
    /// Commands sent per round trip (pipeline depth).
    #[arg(short = 'P', long, default_value_t = 1, value_parser = number_in::<usize>(1, 10_000))]
    pub pipeline: usize,
    /// Bytes per value written by set, lpush and xadd.
    #[arg(short = 'd', long = "data-size", default_value_t = 3)]
    pub value_size: usize,
    /// Draw random keys from this many.
    #[arg(short = 'r', long, default_value_t = 100_000, value_parser = number_in::<u64>(1, 1_000_000_000))]
    pub keyspace: u64,
    /// Tests to run, comma-separated: ping, set, get, incr, lpush, xadd (default: all).
    #[arg(short = 't', long, value_delimiter = ',', value_parser = parse_test)]
    pub tests: Vec<Test>,
    /// Run against a production ENVIRONMENT without asking.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args)]
pub struct CliArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Arguments for redis-cli (a command to run; none for its prompt).
    #[arg(last = true)]
    pub args: Vec<String>,
}

fn parse_test(raw: &str) -> Result<Test, String> {
    raw.parse()
}

pub fn run(cmd: RedisCmd, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        RedisCmd::Ping(args) => ping(&args, ctx),
        RedisCmd::Info(args) => info(&args, ctx),
        RedisCmd::Bench(args) => bench(&args, ctx),
        RedisCmd::Cli(args) => cli(&args, ctx),
    }
}

/// The configured target and, through the tunnel, a way to ask it why it closed a connection.
fn target(
    args: &ConnArgs,
    ctx: &Context,
) -> anyhow::Result<(Target, Box<dyn TunnelDiagnosis>, String)> {
    let config = ctx.config()?;
    let redis = config.require_redis()?;
    let direct = args.direct || !config.tunnel.enabled;
    let target = Target::from_config(redis, config.tunnel.bind, direct, args.insecure)
        .timeout(Duration::from_secs_f64(args.timeout));
    let diagnosis: Box<dyn TunnelDiagnosis> = match (&target.route, tunnel_socket(&config)) {
        (Route::Forward(addr), Some(socket)) => {
            Box::new(ControlSocket { socket, local_port: addr.port() })
        }
        _ => Box::new(NoTunnel),
    };
    Ok((target, diagnosis, config.environment.clone()))
}

/// The control socket of the tunnel this configuration would run, if a bastion is configured.
pub(crate) fn tunnel_socket(config: &mesh_config::Config) -> Option<PathBuf> {
    let bastion = config.require_bastion().ok()?;
    let id = mesh_tunnel::control::TunnelId::new(
        &bastion.host,
        bastion.port,
        &bastion.user,
        &config.forwards,
    );
    Some(mesh_tunnel::control::StateRoot::from_config(config).tunnel(&id).socket)
}

/// Asks a running tunnel (one JSON line over its control socket) for the last channel error
/// of the forward on `local_port`.
pub(crate) struct ControlSocket {
    pub(crate) socket: PathBuf,
    pub(crate) local_port: u16,
}

impl TunnelDiagnosis for ControlSocket {
    fn channel_error_since(&self, since: SystemTime) -> Option<String> {
        let since_ms = since.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64;
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
        let mut line = String::new();
        std::io::BufReader::new(&mut stream).read_line(&mut line).ok()?;
        let reply: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let forwards = reply.get("tunnel")?.get("forwards")?.as_array()?;
        let forward = forwards.iter().find(|f| {
            f.get("local_port").and_then(|p| p.as_u64()) == Some(self.local_port.into())
        })?;
        let error = forward.get("last_channel_error")?;
        let at = error.get("at_unix_ms")?.as_u64()?;
        (at >= since_ms).then(|| error.get("message")?.as_str().map(str::to_owned))?
    }
}

/// Turns a probe failure into the CLI's error: exit 2 for usage, 1 for a failed check; with
/// `--json`, also a JSON object on stdout.
fn fail(err: ProbeError, ctx: &Context) -> anyhow::Error {
    if ctx.out.json {
        let value =
            serde_json::json!({ "ok": false, "class": err.class(), "error": err.to_string() });
        let _ = ctx.out.json(&value);
    }
    if err.is_usage() {
        UsageError(err.to_string()).into()
    } else {
        anyhow::Error::new(err)
    }
}

/// Warnings the configuration did not already print.
fn warn_all(ctx: &Context, warnings: &[String]) {
    for warning in warnings.iter().filter(|w| !w.starts_with("REDIS_PASSWORD starts or ends")) {
        ctx.out.warn(warning);
    }
}

fn ping(args: &ConnArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (target, diagnosis, _) = target(args, ctx)?;
    let report = mesh_probe::blocking(mesh_probe::ping(&target, diagnosis.as_ref()))
        .map_err(|err| fail(err, ctx))?;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({ "ok": true, "ping": report }))?;
        return Ok(ExitCode::SUCCESS);
    }
    warn_all(ctx, &report.warnings);
    ctx.out.say(&ping_line(ctx, &target, &report));
    Ok(ExitCode::SUCCESS)
}

fn ping_line(ctx: &Context, target: &Target, report: &PingReport) -> String {
    let user = report.user.as_deref().map(|u| format!(" as `{u}`")).unwrap_or_default();
    format!(
        "{} {}{user} via {} in {:.2} ms (TLS {})",
        ctx.out.paint(BOLD, "PONG from"),
        report.endpoint,
        report.via,
        report.rtt_ms,
        report.tls.describe(&target.host)
    )
}

fn info(args: &ConnArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (target, diagnosis, _) = target(args, ctx)?;
    let report = mesh_probe::blocking(mesh_probe::info(&target, diagnosis.as_ref()))
        .map_err(|err| fail(err, ctx))?;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({ "ok": true, "info": report }))?;
        return Ok(ExitCode::SUCCESS);
    }
    warn_all(ctx, &report.warnings);
    ctx.out.say(&info_text(ctx, &target, &report));
    Ok(ExitCode::SUCCESS)
}

fn info_text(ctx: &Context, target: &Target, r: &InfoReport) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let version = format!("{} {}", r.server, or_dash(&r.version));
    let memory = format!("{} (max {})", or_dash(&r.used_memory), or_dash(&r.maxmemory));
    let mut rows = vec![
        vec!["endpoint".into(), r.endpoint.clone()],
        vec!["via".into(), r.via.clone()],
        vec!["tls".into(), r.tls.describe(&target.host)],
        vec!["server".into(), version],
        vec!["mode".into(), r.mode.clone()],
        vec!["role".into(), or_dash(&r.role)],
        vec!["clients".into(), r.connected_clients.map_or("-".into(), |n| n.to_string())],
        vec!["memory".into(), memory],
        vec!["maxmemory-policy".into(), or_dash(&r.maxmemory_policy)],
        vec!["keys".into(), r.keys.to_string()],
        vec!["ping".into(), format!("{:.2} ms", r.ping_rtt_ms)],
    ];
    if let Some(user) = &r.user {
        rows.insert(3, vec!["user".into(), user.clone()]);
    }
    let mut text = table(&rows);
    if let Some(cluster) = &r.cluster {
        text.push_str(&format!("\n{}\n", ctx.out.paint(BOLD, "cluster nodes")));
        let mut nodes =
            vec![vec!["node".into(), "role".into(), "slots".into(), "reachable".into()]];
        for n in &cluster.nodes {
            let reach = if n.reachable { "yes" } else { "NO" };
            nodes.push(vec![
                format!("{}:{}", n.host, n.port),
                n.role.clone(),
                n.slots.join(","),
                format!("{reach}: {}", n.note),
            ]);
        }
        text.push_str(&table(&nodes));
    }
    text.trim_end().to_string()
}

fn bench(args: &BenchArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (target, diagnosis, environment) = target(&args.conn, ctx)?;
    bench::confirm_production(&environment, &target, args.yes, || ask_production(&target))
        .map_err(|err| fail(err, ctx))?;
    let options = BenchOptions {
        clients: args.clients,
        requests: args.requests,
        pipeline: args.pipeline,
        value_size: args.value_size,
        keyspace: args.keyspace,
        tests: if args.tests.is_empty() { Test::ALL.to_vec() } else { args.tests.clone() },
        progress: !ctx.out.json && !ctx.out.quiet,
    };
    let report =
        bench::run_blocking(&target, diagnosis.as_ref(), &options).map_err(|err| fail(err, ctx))?;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({ "ok": true, "bench": report }))?;
    } else {
        warn_all(ctx, &report.warnings);
        ctx.out.say(&bench_text(ctx, &target, &report));
    }
    let failed = report.results.iter().any(|r| r.errors > 0);
    Ok(if failed || report.interrupted { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Asks on the terminal; `None` when there is none to ask on.
fn ask_production(target: &Target) -> Option<bool> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    eprint!(
        "ENVIRONMENT is production: the benchmark writes keys to {} (and deletes them). \
         Type `yes` to go on: ",
        target.describe()
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).ok()?;
    Some(answer.trim() == "yes")
}

fn bench_text(ctx: &Context, target: &Target, r: &BenchReport) -> String {
    let header = format!(
        "{} via {}: {} clients, pipeline {}, {}-byte values, {} random keys, TLS {}",
        r.endpoint,
        r.via,
        r.clients,
        r.pipeline,
        r.value_size,
        r.keyspace,
        r.tls.describe(&target.host)
    );
    let mut rows = vec![["test", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"]
        .map(String::from)
        .to_vec()];
    for t in &r.results {
        let l = t.latency_ms;
        let errors = match &t.first_error {
            Some(first) => format!("{} (first: {first})", t.errors),
            None => t.errors.to_string(),
        };
        rows.push(vec![
            t.test.name().to_string(),
            format!("{:.0}", t.ops_per_sec),
            format!("{:.3}", l.p50),
            format!("{:.3}", l.p95),
            format!("{:.3}", l.p99),
            format!("{:.3}", l.max),
            errors,
        ]);
    }
    let mut footer = format!("deleted {} keys under `{}`", r.keys_deleted, r.key_prefix);
    if r.interrupted {
        footer.push_str(" (interrupted: results are partial)");
    }
    format!("{}\n{}{}", ctx.out.paint(BOLD, &header), table(&rows), ctx.out.paint(DIM, &footer))
}

fn cli(args: &CliArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (target, _, _) = target(&args.conn, ctx)?;
    let program = which::which("redis-cli").map_err(|_| {
        UsageError("redis-cli not found: install it with `apt-get install redis-tools`".into())
    })?;
    let status = mesh_probe::redis_cli(&program, &target)
        .args(&args.args)
        .status()
        .with_context(|| format!("run {}", program.display()))?;
    Ok(ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8)))
}
