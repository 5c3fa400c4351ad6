//! The load generator: many clients, pipelined commands on random keys under a unique prefix
//! (deleted afterwards), throughput and HDR latency percentiles per test.
//!
//! It must never be the bottleneck it measures: commands are written from a per-client template
//! with only the key digits rewritten, and replies are framed without being decoded
//! ([`crate::resp`]). `examples/versus_redis_benchmark.rs` compares it with `redis-benchmark`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::TlsState;
use crate::conn::{Conn, Failure, NoTunnel, Session, TunnelDiagnosis};
use crate::error::ProbeError;
use crate::resp::{self, Value};
use crate::target::{Route, Target};

/// One kind of command to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    Ping,
    Set,
    Get,
    Incr,
    Lpush,
    Xadd,
}

impl Test {
    /// Every test, in the order they run by default (SET before GET, so GET finds values).
    pub const ALL: [Test; 6] =
        [Test::Ping, Test::Set, Test::Get, Test::Incr, Test::Lpush, Test::Xadd];

    pub fn name(self) -> &'static str {
        match self {
            Test::Ping => "ping",
            Test::Set => "set",
            Test::Get => "get",
            Test::Incr => "incr",
            Test::Lpush => "lpush",
            Test::Xadd => "xadd",
        }
    }
}

impl std::str::FromStr for Test {
    type Err = String;

    fn from_str(name: &str) -> Result<Test, String> {
        Test::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name)).ok_or_else(|| {
            let names: Vec<_> = Test::ALL.iter().map(|t| t.name()).collect();
            format!("`{name}` is not a test: choose from {}", names.join(", "))
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Parallel connections.
    pub clients: usize,
    /// Requests per test, over all clients.
    pub requests: u64,
    /// Commands sent per round trip.
    pub pipeline: usize,
    /// Bytes per value (SET, LPUSH, XADD).
    pub value_size: usize,
    /// Random keys are drawn from this many per test.
    pub keyspace: u64,
    pub tests: Vec<Test>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for BenchOptions {
    /// The same defaults as `redis-benchmark`: 50 clients, 100000 requests, 3-byte values.
    fn default() -> Self {
        BenchOptions {
            clients: 50,
            requests: 100_000,
            pipeline: 1,
            value_size: 3,
            keyspace: 100_000,
            tests: Test::ALL.to_vec(),
            progress: true,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// The figures of one test.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    pub test: Test,
    /// Requests completed (fewer than asked when interrupted).
    pub requests: u64,
    /// Requests answered with an error reply.
    pub errors: u64,
    /// The first error reply, e.g. `NOPERM ...` or `MOVED ...`.
    pub first_error: Option<String>,
    pub seconds: f64,
    pub ops_per_sec: f64,
    /// From sending a request's pipeline batch to reading that batch's replies.
    pub latency_ms: Latency,
}

/// The result of `redis bench`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub endpoint: String,
    pub via: String,
    pub tls: TlsState,
    pub clients: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub keyspace: u64,
    /// Every key written starts with this; they are deleted at the end.
    pub key_prefix: String,
    pub keys_deleted: u64,
    /// True when Ctrl+C cut the run short (keys are still deleted).
    pub interrupted: bool,
    pub results: Vec<TestResult>,
    pub warnings: Vec<String>,
}

/// Refuses to write to production unless confirmed: `yes` (the `--yes` flag), else `ask`, which
/// returns `None` when there is no terminal to ask on.
pub fn confirm_production(
    environment: &str,
    target: &Target,
    yes: bool,
    ask: impl FnOnce() -> Option<bool>,
) -> Result<(), ProbeError> {
    if environment != "production" || yes {
        return Ok(());
    }
    match ask() {
        Some(true) => Ok(()),
        Some(false) | None => Err(ProbeError::ProductionNotConfirmed { target: target.describe() }),
    }
}

/// Descriptors the benchmark holds besides one per client: the control connection, the
/// runtime's epoll and wake-up descriptors, the Ctrl+C handler.
const FILES_BESIDES_CLIENTS: u64 = 8;

/// Refuses, before anything connects, a client count the open-files limit cannot hold (one
/// descriptor per client, plus those already open), naming both figures and the fix.
pub fn check_open_files(clients: usize) -> Result<(), ProbeError> {
    let Some(limit) = open_files_limit() else { return Ok(()) };
    let needed = files_needed(clients);
    if needed > limit {
        return Err(ProbeError::OpenFiles { clients, needed, limit });
    }
    Ok(())
}

fn files_needed(clients: usize) -> u64 {
    let open_now = std::fs::read_dir("/proc/self/fd")
        .or_else(|_| std::fs::read_dir("/dev/fd"))
        .map_or(16, |dir| dir.count() as u64);
    clients as u64 + open_now + FILES_BESIDES_CLIENTS
}

/// The soft RLIMIT_NOFILE, or `None` when unlimited or unknown.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// A client's connect failing for want of descriptors (EMFILE) becomes the same advice as
/// [`check_open_files`]: the estimate was short, or something else used descriptors up.
/// ENFILE (the whole system's table is full) keeps its own OS message: `ulimit` cannot help.
fn out_of_files(err: ProbeError, clients: usize) -> ProbeError {
    let cause = match &err {
        ProbeError::Connect { cause, .. } | ProbeError::Io { cause, .. } => cause,
        _ => return err,
    };
    match (cause.raw_os_error(), open_files_limit()) {
        (Some(libc::EMFILE), Some(limit)) => {
            ProbeError::OpenFiles { clients, needed: files_needed(clients).max(limit + 1), limit }
        }
        _ => err,
    }
}

/// Runs the benchmark on a single-threaded runtime, like `redis-benchmark` (measured: as fast
/// as two threads on two cores, where Redis needs the other core, and steadier; see README).
pub fn run_blocking(
    target: &Target,
    tunnel: &dyn TunnelDiagnosis,
    options: &BenchOptions,
) -> Result<BenchReport, ProbeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(run(target, tunnel, options))
}

/// Connects every client (each one checked and authenticated), runs each test, then deletes
/// the keys it wrote, also after an error or Ctrl+C.
pub async fn run(
    target: &Target,
    tunnel: &dyn TunnelDiagnosis,
    options: &BenchOptions,
) -> Result<BenchReport, ProbeError> {
    check_open_files(options.clients)?;
    let mut control = Session::open(target, tunnel).await?;
    let prefix = format!("mesh-bench:{{{:016x}}}:", fastrand::u64(..));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        })
    };

    let outcome = run_tests(target, options, &prefix, &stop).await;
    watcher.abort();
    let deleted = delete_keys(&mut control, &prefix).await;
    let results = outcome?;
    let keys_deleted = deleted?;

    Ok(BenchReport {
        endpoint: target.endpoint(),
        via: match &target.route {
            Route::Direct => "direct".to_string(),
            Route::Forward(addr) => addr.to_string(),
        },
        tls: TlsState::of(target),
        clients: options.clients,
        pipeline: options.pipeline,
        value_size: options.value_size,
        keyspace: options.keyspace,
        key_prefix: prefix,
        keys_deleted,
        interrupted: stop.load(Ordering::Relaxed),
        results,
        warnings: target.warnings(),
    })
}

async fn run_tests(
    target: &Target,
    options: &BenchOptions,
    prefix: &str,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<TestResult>, ProbeError> {
    let mut conns = connect_clients(target, options.clients.max(1)).await?;
    let mut results = Vec::new();
    for &test in &options.tests {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (result, back) = run_test(target, options, prefix, test, conns, stop).await?;
        conns = back;
        tracing::debug!(test = test.name(), ops_per_sec = result.ops_per_sec, "test done");
        results.push(result);
    }
    Ok(results)
}

async fn connect_clients(target: &Target, clients: usize) -> Result<Vec<Conn>, ProbeError> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let target = target.clone();
        tasks.spawn(async move {
            Session::open(&target, &NoTunnel).await.map(|s| s.into_conn().without_timeouts())
        });
    }
    let mut conns = Vec::with_capacity(clients);
    while let Some(joined) = tasks.join_next().await {
        let conn = joined.expect("a client connect task does not panic");
        conns.push(conn.map_err(|err| out_of_files(err, clients))?);
    }
    Ok(conns)
}

/// What each client reports back from one test.
struct ClientRun {
    conn: Conn,
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn run_test(
    target: &Target,
    options: &BenchOptions,
    prefix: &str,
    test: Test,
    conns: Vec<Conn>,
    stop: &Arc<AtomicBool>,
) -> Result<(TestResult, Vec<Conn>), ProbeError> {
    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let template = Arc::new(Template::new(test, prefix, options.value_size));
    let progress = Progress::start(options, test, done.clone());

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let shared = (claimed.clone(), done.clone(), template.clone(), stop.clone());
        let limits = Limits {
            total: options.requests,
            pipeline: options.pipeline.max(1),
            keyspace: options.keyspace.max(1),
            timeout: target.timeout,
        };
        tasks.spawn(client_loop(conn, shared, limits));
    }
    let mut runs = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a client task does not panic") {
            Ok(run) => runs.push(run),
            Err(err) => failure = failure.or(Some(err)),
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    if let Some(failure) = failure {
        let since = SystemTime::now();
        return Err(crate::conn::explain(failure, target, &NoTunnel, since).await);
    }

    let mut histogram = new_histogram();
    let (mut errors, mut first_error) = (0, None);
    let mut conns = Vec::with_capacity(runs.len());
    for run in runs {
        histogram.add(&run.histogram).expect("histograms share their bounds");
        errors += run.errors;
        first_error = first_error.or(run.first_error);
        conns.push(run.conn);
    }
    let requests = done.load(Ordering::Relaxed);
    let result = TestResult {
        test,
        requests,
        errors,
        first_error,
        seconds: elapsed.as_secs_f64(),
        ops_per_sec: (requests as f64 / elapsed.as_secs_f64()).round(),
        latency_ms: Latency {
            p50: us_to_ms(histogram.value_at_quantile(0.50)),
            p95: us_to_ms(histogram.value_at_quantile(0.95)),
            p99: us_to_ms(histogram.value_at_quantile(0.99)),
            max: us_to_ms(histogram.max()),
        },
    };
    Ok((result, conns))
}

type Shared = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<Template>, Arc<AtomicBool>);

/// The fixed parameters of a client loop.
struct Limits {
    /// Requests in the test, over all clients.
    total: u64,
    pipeline: usize,
    keyspace: u64,
    /// The limit on one batch: written and all its replies read.
    timeout: Duration,
}

/// Claims `pipeline` requests at a time until `total` are claimed, sends them in one write and
/// reads their replies, recording each batch's latency for each of its requests.
async fn client_loop(
    mut conn: Conn,
    (claimed, done, template, stop): Shared,
    Limits { total, pipeline, keyspace, timeout }: Limits,
) -> Result<ClientRun, Failure> {
    let mut histogram = new_histogram();
    let mut rng = fastrand::Rng::new();
    let mut batch = Vec::with_capacity(template.bytes.len() * pipeline);
    let (mut errors, mut first_error) = (0u64, None);
    loop {
        let start = claimed.fetch_add(pipeline as u64, Ordering::Relaxed);
        if start >= total || stop.load(Ordering::Relaxed) {
            break;
        }
        let count = (total - start).min(pipeline as u64) as usize;
        batch.clear();
        for _ in 0..count {
            template.append(&mut batch, rng.u64(..keyspace));
        }

        let sent = Instant::now();
        let exchange = async {
            conn.send(&batch).await?;
            conn.skip_replies(count).await
        };
        let outcome =
            tokio::time::timeout(timeout, exchange).await.map_err(|_| Failure::Timeout)??;
        let micros = sent.elapsed().as_micros() as u64;
        histogram.saturating_record_n(micros.max(1), count as u64);
        errors += outcome.errors as u64;
        first_error = first_error.or(outcome.first_error);
        done.fetch_add(count as u64, Ordering::Relaxed);
    }
    Ok(ClientRun { conn, histogram, errors, first_error })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn us_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Width of the random key number, zero-padded so it can be rewritten in place.
const KEY_DIGITS: usize = 12;

/// One command, encoded once; [`Template::append`] copies it and writes a key number in.
struct Template {
    bytes: Vec<u8>,
    /// Where the key digits start, if the command has a random key.
    digits_at: Option<usize>,
}

impl Template {
    fn new(test: Test, prefix: &str, value_size: usize) -> Template {
        let value = vec![b'x'; value_size];
        let placeholder = "0".repeat(KEY_DIGITS);
        let key = |kind: &str| format!("{prefix}{kind}:{placeholder}");
        let args: Vec<Vec<u8>> = match test {
            Test::Ping => vec![b"PING".to_vec()],
            Test::Set => vec![b"SET".to_vec(), key("key").into_bytes(), value],
            Test::Get => vec![b"GET".to_vec(), key("key").into_bytes()],
            Test::Incr => vec![b"INCR".to_vec(), key("counter").into_bytes()],
            Test::Lpush => vec![b"LPUSH".to_vec(), format!("{prefix}list").into_bytes(), value],
            Test::Xadd => {
                let stream = format!("{prefix}stream").into_bytes();
                vec![b"XADD".to_vec(), stream, b"*".to_vec(), b"field".to_vec(), value]
            }
        };
        let bytes = resp::encode(&args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let digits_at = matches!(test, Test::Set | Test::Get | Test::Incr).then(|| {
            let key = args[1].as_slice();
            let key_at = find(&bytes, key).expect("the key is in the encoded command");
            key_at + key.len() - KEY_DIGITS
        });
        Template { bytes, digits_at }
    }

    fn append(&self, out: &mut Vec<u8>, number: u64) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(offset) = self.digits_at {
            let mut n = number;
            let mut i = at + offset + KEY_DIGITS;
            while i > at + offset {
                i -= 1;
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Deletes every key under `prefix` (SCAN, then UNLINK in batches); returns how many.
///
/// FIXME: SCAN only sees the node this connection reaches. In a multi-shard cluster the keys'
/// slot (one, thanks to the hash tag) may live on another node; the tests then fail with MOVED
/// anyway, but any key written before that would be left behind under `mesh-bench:`.
async fn delete_keys(session: &mut Session<'_>, prefix: &str) -> Result<u64, ProbeError> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor = 0u64;
    let mut deleted = 0u64;
    loop {
        let at = cursor.to_string();
        let args: [&[u8]; 6] =
            [b"SCAN", at.as_bytes(), b"MATCH", pattern.as_bytes(), b"COUNT", b"1000"];
        let reply = session.call(&args, "SCAN").await?;
        let Some((next, keys)) = scan_page(&reply) else {
            return Err(crate::check::unexpected(session, "SCAN", &reply));
        };
        if !keys.is_empty() {
            let mut unlink: Vec<&[u8]> = vec![b"UNLINK"];
            unlink.extend(keys);
            let reply = session.call(&unlink, "UNLINK").await?;
            deleted += reply.int().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    tracing::debug!(prefix, deleted, "benchmark keys deleted");
    Ok(deleted)
}

/// The next cursor and the keys of one SCAN reply: `[cursor, [key...]]`.
fn scan_page(reply: &Value) -> Option<(u64, Vec<&[u8]>)> {
    let Value::Array(parts) = reply else { return None };
    let [cursor, Value::Array(keys)] = parts.as_slice() else { return None };
    // The cursor is unsigned 64-bit: it may not fit an i64.
    let cursor = cursor.text()?.parse().ok()?;
    let keys = keys.iter().map(|key| match key {
        Value::Bulk(bytes) => Some(bytes.as_slice()),
        _ => None,
    });
    Some((cursor, keys.collect::<Option<_>>()?))
}

/// Escapes Redis glob characters, so the prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A progress bar on stderr for one test, redrawn from the shared counter.
struct Progress {
    bar: Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl Progress {
    fn start(options: &BenchOptions, test: Test, done: Arc<AtomicU64>) -> Progress {
        if !options.progress || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let target = indicatif::ProgressDrawTarget::stderr();
        let bar = indicatif::ProgressBar::with_draw_target(Some(options.requests), target);
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>6} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(test.name());
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                ticking.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress { bar: Some((bar, ticker)) }
    }

    fn finish(self) {
        if let Some((bar, ticker)) = self.bar {
            ticker.abort();
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_out_of_descriptors_says_which_limit_and_how_to_raise_it() {
        let limit = open_files_limit().expect("this test needs a finite RLIMIT_NOFILE");
        let emfile = ProbeError::Connect {
            target: "127.0.0.1:6379".into(),
            cause: std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        let err = out_of_files(emfile, 70_000);
        let text = err.to_string();
        assert!(text.starts_with("-c 70000 needs about "), "{text}");
        assert!(
            text.ends_with(&format!(
                " open files, the limit is {limit}: lower -c or raise it with `ulimit -n`"
            )),
            "{text}"
        );
        assert!(err.is_usage());

        let refused = ProbeError::Connect {
            target: "127.0.0.1:6379".into(),
            cause: std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(out_of_files(refused, 10).class(), "connect");
    }

    #[test]
    fn a_few_clients_fit_in_the_open_files_limit() {
        assert!(check_open_files(4).is_ok());
    }

    #[test]
    fn a_template_rewrites_only_the_key_digits() {
        let template = Template::new(Test::Set, "p:", 3);
        let mut out = Vec::new();
        template.append(&mut out, 42);
        template.append(&mut out, 7);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "*3\r\n$3\r\nSET\r\n$18\r\np:key:000000000042\r\n$3\r\nxxx\r\n\
             *3\r\n$3\r\nSET\r\n$18\r\np:key:000000000007\r\n$3\r\nxxx\r\n"
        );
    }

    #[test]
    fn a_template_without_a_random_key_is_copied_as_is() {
        let template = Template::new(Test::Lpush, "p:", 2);
        let mut out = Vec::new();
        template.append(&mut out, 99);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "*3\r\n$5\r\nLPUSH\r\n$6\r\np:list\r\n$2\r\nxx\r\n"
        );
    }

    #[test]
    fn test_names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("XADD".parse::<Test>(), Ok(Test::Xadd));
        assert_eq!(
            "hset".parse::<Test>(),
            Err("`hset` is not a test: choose from ping, set, get, incr, lpush, xadd".to_string())
        );
    }

    #[test]
    fn a_scan_page_gives_the_cursor_and_the_keys() {
        let bulk = |text: &str| Value::Bulk(text.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("18446744073709551615"),
            Value::Array(vec![bulk("a"), bulk("b")]),
        ]);
        assert_eq!(scan_page(&reply), Some((u64::MAX, vec![&b"a"[..], b"b"])));
        let empty = Value::Array(vec![bulk("0"), Value::Array(vec![])]);
        assert_eq!(scan_page(&empty), Some((0, vec![])));
        assert_eq!(scan_page(&Value::Array(vec![bulk("0")])), None);
        assert_eq!(scan_page(&bulk("0")), None);
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("mesh-bench:{ab}:"), "mesh-bench:{ab}:");
    }

    #[test]
    fn production_needs_yes_or_an_answer() {
        let target = Target::new("cache", 6379);
        assert!(confirm_production("development", &target, false, || None).is_ok());
        assert!(confirm_production("production", &target, true, || None).is_ok());
        assert!(confirm_production("production", &target, false, || Some(true)).is_ok());
        let refused = confirm_production("production", &target, false, || None).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "ENVIRONMENT is production: the benchmark writes to cache:6379; pass --yes to run it \
             anyway, or run it from a terminal to be asked"
        );
        assert!(confirm_production("production", &target, false, || Some(false)).is_err());
    }
}
