//! `cargo xtask redis ping|info|bench|cli` through the built binary against a real
//! redis-server: exit codes, exact error text, and the password never printed.

use std::process::{Command, Output};

use mesh_testkit::{free_port, RedisServer};

const PASSWORD: &str = "hunter2-not-for-print";

/// Runs the xtask binary with a clean environment plus `env`.
fn xtask(args: &[&str], env: &[(&str, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(dir.path()).args(args).env_clear().env("HOME", dir.path());
    cmd.env("NO_COLOR", "1").env("XTASK_STATE_DIR", dir.path().join("state"));
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Redis reached directly (no bastion configured, so no tunnel).
fn direct_env(server: &RedisServer, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ELASTICACHE_ENDPOINT", format!("127.0.0.1:{}", server.port())),
        ("REDIS_PASSWORD", password.to_string()),
    ]
}

#[test]
fn no_command_ever_prints_the_password() {
    let server = RedisServer::builder().password(PASSWORD).start();
    let env = direct_env(&server, PASSWORD);
    let bench = ["redis", "bench", "-c", "2", "-n", "200", "-t", "set,get"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["redis", "ping"],
        vec!["--json", "redis", "ping"],
        vec!["redis", "info"],
        vec!["--json", "redis", "info"],
        bench.to_vec(),
        [&["--json"][..], &bench[..]].concat(),
    ];
    for args in runs {
        let out = xtask(&args, &env);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stdout}{stderr}");
        assert!(
            !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
            "{args:?}: {stdout}{stderr}"
        );
        if args[0] == "--json" {
            let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
            assert_eq!(json["ok"], true, "{stdout}");
        }
    }

    // A rejected password is not printed either, in any mode.
    let wrong = format!("{PASSWORD}-wrong");
    for args in [vec!["redis", "ping"], vec!["--json", "redis", "ping"]] {
        let out = xtask(&args, &direct_env(&server, &wrong));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD), "{stdout}{stderr}");
    }
}

#[test]
fn ping_says_pong_with_the_route_and_tls_state() {
    let server = RedisServer::builder().password(PASSWORD).start();
    let out = xtask(&["redis", "ping"], &direct_env(&server, PASSWORD));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let expected = format!("PONG from 127.0.0.1:{} via direct in ", server.port());
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(stdout.trim_end().ends_with(" ms (TLS off)"), "{stdout}");
}

#[test]
fn wrong_password_exits_1_with_the_fix() {
    let server = RedisServer::builder().password(PASSWORD).start();
    let out = xtask(&["redis", "ping"], &direct_env(&server, "nope"));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr,
        format!(
            "error: 127.0.0.1:{} rejected the password (WRONGPASS): check REDIS_PASSWORD\n",
            server.port()
        )
    );
}

#[test]
fn ping_without_a_running_tunnel_exits_1_and_says_start_it() {
    let port = free_port();
    let env = vec![
        ("BASTION_HOST_IP", "127.0.0.1".to_string()),
        ("ELASTICACHE_ENDPOINT", "cache.mesh.test:6379".to_string()),
        ("REDIS_TUNNEL_PORT", port.to_string()),
    ];
    let out = xtask(&["redis", "ping"], &env);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: nothing listens on the forward 127.0.0.1:{port} (for cache.mesh.test:6379): \
             no tunnel is running; start it with `cargo xtask tunnel start`, or pass --direct to \
             dial the endpoint itself\n"
        )
    );
}

#[test]
fn bench_against_production_without_a_terminal_needs_yes() {
    let server = RedisServer::builder().password(PASSWORD).start();
    let mut env = direct_env(&server, PASSWORD);
    env.push(("ENVIRONMENT", "production".to_string()));
    let out = xtask(&["redis", "bench", "-n", "10", "-t", "ping"], &env);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr,
        format!(
            "error: ENVIRONMENT is production: the benchmark writes to 127.0.0.1:{}; pass --yes \
             to run it anyway, or run it from a terminal to be asked\n",
            server.port()
        )
    );
    let out = xtask(&["redis", "bench", "-n", "10", "-t", "ping", "--yes"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

#[test]
fn cli_runs_redis_cli_with_the_password_from_the_environment() {
    let server = RedisServer::builder().password(PASSWORD).start();
    let out = xtask(&["redis", "cli", "--", "PING"], &direct_env(&server, PASSWORD));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "PONG");
}

#[test]
fn fail_zero_counts_and_timeouts_are_refused_at_parse_time_naming_flag_and_range() {
    // No Redis is configured: the refusal comes before anything is loaded or dialled.
    let cases: [(&[&str], &str); 6] = [
        (&["redis", "bench", "-c", "0"], "'--clients <CLIENTS>': 0 is out of range: use a whole number from 1 to 1000000"),
        (&["redis", "bench", "-n", "0"], "'--requests <REQUESTS>': 0 is out of range: use a whole number from 1 to 1000000000"),
        (&["redis", "bench", "-P", "0"], "'--pipeline <PIPELINE>': 0 is out of range: use a whole number from 1 to 10000"),
        (&["redis", "bench", "-r", "0"], "'--keyspace <KEYSPACE>': 0 is out of range: use a whole number from 1 to 1000000000"),
        (&["redis", "bench", "-c", "many"], "'--clients <CLIENTS>': `many` is not a whole number: use a whole number from 1 to 1000000"),
        (&["redis", "ping", "--timeout", "0"], "'--timeout <SECONDS>': `0` is out of range: use a number of seconds above 0, up to 3600"),
    ];
    for (args, message) in cases {
        let out = xtask(args, &[]);
        let value = args.last().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            text(&out).1,
            format!(
                "error: invalid value '{value}' for {message}\n\nFor more information, try \
                 '--help'.\n"
            ),
            "{args:?}"
        );
    }
}

#[test]
fn fail_more_clients_than_the_open_files_limit_says_so_before_connecting() {
    // Nothing listens there: the check must come before any connect.
    let env = [("ELASTICACHE_ENDPOINT", format!("127.0.0.1:{}", free_port()))];
    let out = Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\" redis bench -c 100 -n 1000"])
        .arg(env!("CARGO_BIN_EXE_xtask"))
        .env_clear()
        .env("HOME", std::env::temp_dir())
        .env("NO_COLOR", "1")
        .env("XTASK_STATE_DIR", std::env::temp_dir().join("mesh-xtask-no-state"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let needed: u64 = stderr
        .strip_prefix("error: -c 100 needs about ")
        .and_then(|rest| {
            rest.strip_suffix(
                " open files, the limit is 64: lower -c or raise it with `ulimit -n`\n",
            )
        })
        .unwrap_or_else(|| panic!("{stderr}"))
        .parse()
        .unwrap();
    assert!((103..200).contains(&needed), "{needed}");
}
