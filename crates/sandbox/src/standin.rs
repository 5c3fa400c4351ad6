//! Stand-ins for the platform's three services, honouring their contract
//! (ports, `/readyz`, `/health`) and moving real data through Redis, plain or
//! TLS: rest-api appends webhook events to a stream, the worker consumes and
//! acknowledges them, mcp-server reports healthy once Redis answers.

use anyhow::Context as _;
use mesh_config::Secret;
use mesh_probe::resp::{Client, ClientError, Value};
use mesh_probe::TlsMode;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response, Server};

/// The stream rest-api appends webhook events to.
pub const STREAM: &str = "webhook-events";

/// The consumer group the worker reads the stream with.
pub const CONSUMER_GROUP: &str = "webhook-processors";

/// The worker's consumer name; fixed, so a restarted worker finds the events it
/// had read but not yet acknowledged.
const CONSUMER: &str = "sandbox-worker";

/// How often loops wake to notice a stop request.
const TICK: Duration = Duration::from_millis(200);

/// One of the platform's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    RestApi,
    McpServer,
    Worker,
}

impl Role {
    /// Every role, in start order.
    pub const ALL: [Role; 3] = [Role::RestApi, Role::McpServer, Role::Worker];

    /// The service's name, as the manifest and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::RestApi => "rest-api",
            Role::McpServer => "mcp-server",
            Role::Worker => "worker",
        }
    }

    /// The variable naming the service's port, and its default.
    pub fn port_var(self) -> (&'static str, u16) {
        match self {
            Role::RestApi => ("REST_API_PORT", 8081),
            Role::McpServer => ("MCP_SERVER_PORT", 8080),
            Role::Worker => ("WORKER_PORT", 8088),
        }
    }

    /// The readiness probe path of the contract.
    pub fn ready_path(self) -> &'static str {
        match self {
            Role::RestApi => "/readyz",
            Role::McpServer | Role::Worker => "/health",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|role| role.name() == name).ok_or_else(|| {
            format!("unknown service `{name}`: expected rest-api, mcp-server or worker")
        })
    }
}

/// The variables a stand-in reads (the process environment, or a map in tests).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The current process's environment.
    pub fn from_process() -> Env {
        Env { vars: std::env::vars().collect() }
    }

    /// The value of `name`, when set and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|value| !value.is_empty())
    }

    fn port(&self, role: Role) -> anyhow::Result<u16> {
        let (var, default) = role.port_var();
        match self.get(var) {
            None => Ok(default),
            Some(text) => text.parse().with_context(|| {
                format!("{var}=`{text}` is not a port number; set it to a port such as {default}")
            }),
        }
    }
}

impl From<BTreeMap<String, String>> for Env {
    fn from(vars: BTreeMap<String, String>) -> Env {
        Env { vars }
    }
}

/// Set by SIGTERM or SIGINT: every stand-in loop ends when it sees it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: std::ffi::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs the stand-in for `role` until SIGTERM or SIGINT, then returns `Ok`.
/// Logs go to stdout, one line each, for the supervisor to multiplex.
pub fn run_standin(role: Role, env: &Env) -> anyhow::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action =
        SigAction::new(SigHandler::Handler(request_stop), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("could not install a signal handler")?;
    }
    run_standin_until(role, env, &STOP)
}

/// Runs the stand-in for `role` until `stop` becomes true.
pub fn run_standin_until(role: Role, env: &Env, stop: &AtomicBool) -> anyhow::Result<()> {
    let port = env.port(role)?;
    let redis = RedisTarget::from_env(env)?;
    let server = Server::http(("127.0.0.1", port)).map_err(|err| {
        let (var, _) = role.port_var();
        anyhow::anyhow!(
            "{role} could not listen on 127.0.0.1:{port}: {err}; set {var} to a free port"
        )
    })?;
    say(&format!("{role} listening on 127.0.0.1:{port}, redis at {}", redis.describe()));
    if redis.tls.as_ref().is_some_and(|tls| tls.mode == TlsMode::Insecure) {
        say(&format!(
            "{role}: REDIS_TLS_SKIP_VERIFY=true: the Redis certificate is not verified (unset \
             it to verify as ELASTICACHE_ENDPOINT's name with REDIS_CA_CERT)"
        ));
    }

    std::thread::scope(|scope| {
        let worker_done = Arc::new(AtomicBool::new(false));
        if role == Role::Worker {
            let done = worker_done.clone();
            let redis = &redis;
            scope.spawn(move || {
                consume_events(redis, stop);
                done.store(true, Ordering::SeqCst);
            });
        }
        serve_http(role, &server, &redis, stop);
        while role == Role::Worker && !worker_done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    say(&format!("{role} stopped"));
    Ok(())
}

/// One log line on stdout.
fn say(line: &str) {
    println!("{line}");
}

/// Where Redis is, as the services read it.
struct RedisTarget {
    /// `REDIS_ADDR` as given, for messages.
    addr: String,
    /// The host and port dialled: the tunnel's local end in the sandbox.
    host: String,
    port: u16,
    password: Option<Secret>,
    /// TLS when `REDIS_TLS_ENABLED=true`, else plain RESP.
    tls: Option<RedisTls>,
}

/// How the stand-ins speak TLS to Redis.
struct RedisTls {
    /// Verify with `REDIS_CA_CERT` (or the system roots), or skip the check when
    /// `REDIS_TLS_SKIP_VERIFY=true`.
    mode: TlsMode,
    /// The name the certificate must hold: the endpoint's, not the address dialled.
    server_name: String,
}

impl RedisTarget {
    fn from_env(env: &Env) -> anyhow::Result<RedisTarget> {
        let addr = env
            .get("REDIS_ADDR")
            .or_else(|| env.get("REDIS_ADDRESS"))
            .unwrap_or("127.0.0.1:6379")
            .to_string();
        let (host, port) = addr.rsplit_once(':').with_context(|| {
            format!("REDIS_ADDR=`{addr}` has no port; write it as HOST:PORT, e.g. 127.0.0.1:6379")
        })?;
        let port = port.parse().with_context(|| {
            format!("REDIS_ADDR=`{addr}` has a bad port; write it as HOST:PORT")
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let password = env.get("REDIS_PASSWORD").map(Secret::new);
        let tls = is_true(env, "REDIS_TLS_ENABLED").then(|| RedisTls::from_env(env, &host));
        Ok(RedisTarget { addr, host, port, password, tls })
    }

    /// The address, and how TLS is spoken to it, for the start line.
    fn describe(&self) -> String {
        match &self.tls {
            None => self.addr.clone(),
            Some(RedisTls { mode: TlsMode::Insecure, .. }) => {
                format!("{} (TLS, certificate not verified)", self.addr)
            }
            Some(tls) => format!("{} (TLS, verified as {})", self.addr, tls.server_name),
        }
    }

    /// A fresh connection, authenticated, with timeouts so no call hangs past a stop request.
    fn connect(&self) -> Result<Client, ClientError> {
        let timeout = Duration::from_secs(2);
        let mut client = match &self.tls {
            None => Client::connect(&self.host, self.port, timeout)?,
            Some(tls) => {
                Client::connect_tls(&self.host, self.port, &tls.mode, &tls.server_name, timeout)?
            }
        };
        client.set_timeout(Duration::from_secs(5))?;
        if let Some(password) = &self.password {
            client.auth(None, password)?;
        }
        Ok(client)
    }

    fn ping(&self) -> Result<(), ClientError> {
        self.connect()?.cmd(&[b"PING"]).map(drop)
    }
}

impl RedisTls {
    /// Verifies as `ELASTICACHE_ENDPOINT`'s host (the name the certificate holds, though we
    /// dial `dialled`, the tunnel's end) with `REDIS_CA_CERT`, unless
    /// `REDIS_TLS_SKIP_VERIFY=true`.
    fn from_env(env: &Env, dialled: &str) -> RedisTls {
        if is_true(env, "REDIS_TLS_SKIP_VERIFY") {
            return RedisTls { mode: TlsMode::Insecure, server_name: dialled.to_string() };
        }
        let server_name = env.get("ELASTICACHE_ENDPOINT").map_or(dialled, endpoint_host);
        let ca_cert = env.get("REDIS_CA_CERT").map(Into::into);
        RedisTls { mode: TlsMode::Verify { ca_cert }, server_name: server_name.to_string() }
    }
}

/// True when `name` is set to `true` (any case).
fn is_true(env: &Env, name: &str) -> bool {
    env.get(name).is_some_and(|value| value.eq_ignore_ascii_case("true"))
}

/// The host of an endpoint written `[redis[s]://]host[:port][/]`.
fn endpoint_host(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let rest = rest.trim_end_matches('/');
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.ends_with(':') => host,
        _ => rest,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Answers HTTP requests until `stop`.
fn serve_http(role: Role, server: &Server, redis: &RedisTarget, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(TICK) {
            Ok(Some(request)) => handle(role, request, redis),
            Ok(None) => {}
            Err(err) => {
                say(&format!("{role}: http accept failed: {err}"));
                std::thread::sleep(TICK);
            }
        }
    }
}

fn handle(role: Role, mut request: Request, redis: &RedisTarget) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let (status, body) = match (role, request.method(), path.as_str()) {
        (_, Method::Get, "/health") if role != Role::McpServer => (200, healthy()),
        (Role::McpServer, Method::Get, "/health") | (Role::RestApi, Method::Get, "/readyz") => {
            match redis.ping() {
                Ok(()) => (200, healthy()),
                Err(err) => {
                    (503, serde_json::json!({ "status": "unhealthy", "error": err.to_string() }))
                }
            }
        }
        (Role::RestApi, Method::Post, "/api/v1/webhooks") => {
            let mut payload = String::new();
            let _ = std::io::Read::read_to_string(request.as_reader(), &mut payload);
            match append_event(redis, &payload) {
                Ok(id) => {
                    say(&format!("event {id} accepted"));
                    (202, serde_json::json!({ "id": id, "stream": STREAM }))
                }
                Err(err) => {
                    say(&format!("event rejected: {err}"));
                    (503, serde_json::json!({ "error": err.to_string() }))
                }
            }
        }
        _ => (404, serde_json::json!({ "error": format!("no route for {path}") })),
    };
    let header = Header::from_bytes("Content-Type", "application/json").ok();
    let mut response = Response::from_string(body.to_string()).with_status_code(status);
    if let Some(header) = header {
        response = response.with_header(header);
    }
    let _ = request.respond(response);
}

fn healthy() -> serde_json::Value {
    serde_json::json!({ "status": "healthy" })
}

/// XADD the webhook payload to the stream; returns the event id.
fn append_event(redis: &RedisTarget, payload: &str) -> Result<String, ClientError> {
    let mut client = redis.connect()?;
    let args: [&[u8]; 7] =
        [b"XADD", STREAM.as_bytes(), b"*", b"source", b"sandbox", b"payload", payload.as_bytes()];
    let reply = client.cmd(&args)?;
    text(&reply).ok_or_else(|| client.unexpected("XADD", &reply))
}

/// The worker's loop: reads the stream with the consumer group, logs and
/// acknowledges each event, reconnecting while Redis is unreachable.
fn consume_events(redis: &RedisTarget, stop: &AtomicBool) {
    let mut reported_down = false;
    while !stop.load(Ordering::SeqCst) {
        match consume_until_error(redis, stop, &mut reported_down) {
            Ok(()) => return,
            // A connection cut while stopping (the tunnel may go first) is no news.
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(err) => {
                if !reported_down {
                    say(&format!("worker: redis unavailable: {err}; retrying"));
                    reported_down = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// `reported_down` is cleared once connected, so the next outage is reported.
fn consume_until_error(
    redis: &RedisTarget,
    stop: &AtomicBool,
    reported_down: &mut bool,
) -> Result<(), ClientError> {
    let mut client = redis.connect()?;
    *reported_down = false;
    let create: [&[u8]; 6] =
        [b"XGROUP", b"CREATE", STREAM.as_bytes(), CONSUMER_GROUP.as_bytes(), b"0", b"MKSTREAM"];
    match client.cmd(&create) {
        Err(err) if err.code() != Some("BUSYGROUP") => return Err(err),
        _ => {}
    }
    say(&format!("worker: reading {STREAM} as {CONSUMER_GROUP}/{CONSUMER}"));

    // First the events this consumer read but never acknowledged, then new ones.
    let block = TICK.as_millis().to_string();
    let mut cursor = "0";
    while !stop.load(Ordering::SeqCst) {
        let read: [&[u8]; 11] = [
            b"XREADGROUP",
            b"GROUP",
            CONSUMER_GROUP.as_bytes(),
            CONSUMER.as_bytes(),
            b"COUNT",
            b"16",
            b"BLOCK",
            block.as_bytes(),
            b"STREAMS",
            STREAM.as_bytes(),
            cursor.as_bytes(),
        ];
        let reply = client.cmd(&read)?;
        let ids = entry_ids(&reply);
        if ids.is_empty() && cursor == "0" {
            cursor = ">";
        }
        for id in ids {
            say(&format!("event {id} processed"));
            let ack: [&[u8]; 4] =
                [b"XACK", STREAM.as_bytes(), CONSUMER_GROUP.as_bytes(), id.as_bytes()];
            client.cmd(&ack)?;
        }
    }
    Ok(())
}

/// The entry ids in an XREADGROUP reply (`[[stream, [[id, fields]...]]...]`), in order.
fn entry_ids(reply: &Value) -> Vec<String> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => Some(&pair[1]),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut ids = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else { continue };
        for entry in entries {
            if let Value::Array(parts) = entry {
                if let Some(id) = parts.first().and_then(text) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Bulk(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::Simple(text) => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_from_their_service_names() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>().unwrap(), role);
        }
        let err = "api".parse::<Role>().unwrap_err();
        assert_eq!(err, "unknown service `api`: expected rest-api, mcp-server or worker");
    }

    #[test]
    fn entry_ids_are_read_from_a_resp2_reply() {
        let entry = |id: &str| {
            Value::Array(vec![
                Value::Bulk(id.as_bytes().to_vec()),
                Value::Array(vec![Value::Bulk(b"k".to_vec()), Value::Bulk(b"v".to_vec())]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Bulk(STREAM.as_bytes().to_vec()),
            Value::Array(vec![entry("1-0"), entry("2-0")]),
        ])]);
        assert_eq!(entry_ids(&reply), ["1-0", "2-0"]);
        assert!(entry_ids(&Value::Null).is_empty());
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        let env = Env::from(BTreeMap::from([("WORKER_PORT".to_string(), "80a".to_string())]));
        let err = env.port(Role::Worker).unwrap_err().to_string();
        assert_eq!(err, "WORKER_PORT=`80a` is not a port number; set it to a port such as 8088");
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn endpoint_hosts_lose_scheme_port_and_brackets() {
        assert_eq!(endpoint_host("cache.mesh.test"), "cache.mesh.test");
        assert_eq!(endpoint_host("rediss://cache.mesh.test:6380/"), "cache.mesh.test");
        assert_eq!(endpoint_host("[::1]:6379"), "::1");
    }

    #[test]
    fn tls_verifies_as_the_endpoint_name_while_dialling_the_tunnel() {
        let redis = RedisTarget::from_env(&env(&[
            ("REDIS_ADDR", "127.0.0.1:40123"),
            ("REDIS_TLS_ENABLED", "true"),
            ("REDIS_TLS_SKIP_VERIFY", "false"),
            ("REDIS_CA_CERT", "/s/tls-ca.crt"),
            ("ELASTICACHE_ENDPOINT", "sandbox-x1.serverless.use1.cache.amazonaws.com"),
        ]))
        .unwrap();
        let tls = redis.tls.as_ref().unwrap();
        assert_eq!(tls.mode, TlsMode::Verify { ca_cert: Some("/s/tls-ca.crt".into()) });
        assert_eq!(tls.server_name, "sandbox-x1.serverless.use1.cache.amazonaws.com");
        assert_eq!((redis.host.as_str(), redis.port), ("127.0.0.1", 40123));
        assert_eq!(
            redis.describe(),
            "127.0.0.1:40123 (TLS, verified as sandbox-x1.serverless.use1.cache.amazonaws.com)"
        );
    }

    #[test]
    fn skip_verify_turns_the_certificate_check_off_and_says_so() {
        let redis = RedisTarget::from_env(&env(&[
            ("REDIS_ADDR", "127.0.0.1:40123"),
            ("REDIS_TLS_ENABLED", "TRUE"),
            ("REDIS_TLS_SKIP_VERIFY", "true"),
            ("ELASTICACHE_ENDPOINT", "cache.mesh.test"),
        ]))
        .unwrap();
        assert_eq!(redis.tls.as_ref().unwrap().mode, TlsMode::Insecure);
        assert_eq!(redis.describe(), "127.0.0.1:40123 (TLS, certificate not verified)");
    }

    #[test]
    fn tls_off_is_plain_resp() {
        let redis = RedisTarget::from_env(&env(&[
            ("REDIS_TLS_ENABLED", "false"),
            ("REDIS_CA_CERT", "/s/tls-ca.crt"),
        ]))
        .unwrap();
        assert!(redis.tls.is_none());
        assert_eq!(redis.describe(), "127.0.0.1:6379");
    }
}
