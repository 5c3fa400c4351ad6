//! Loading configuration from real files: precedence, normalization, and the
//! exact text of every error a user can meet.

use mesh_config::{load, ConfigError, LoadOptions, Origin};
use std::path::Path;
use tempfile::TempDir;

/// A workspace root with the given files, and options that read it.
fn workspace(files: &[(&str, &str)]) -> (TempDir, LoadOptions) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let options = LoadOptions {
        root: dir.path().to_path_buf(),
        cwd: dir.path().to_path_buf(),
        shell: vec![("HOME".into(), "/home/dev".into())],
        ..LoadOptions::default()
    };
    (dir, options)
}

fn error_text(options: &LoadOptions) -> String {
    load(options).unwrap_err().to_string()
}

#[test]
fn shell_wins_over_env_local_which_wins_over_env() {
    let (_dir, mut options) = workspace(&[
        (".env", "REDIS_TUNNEL_PORT=6390\nBASTION_USER=ubuntu\nELASTICACHE_ENDPOINT=a.example\n"),
        (".env.local", "REDIS_TUNNEL_PORT=6391\n"),
    ]);
    options.shell.push(("BASTION_USER".into(), "admin".into()));
    let config = load(&options).unwrap();
    assert_eq!(config.get("REDIS_TUNNEL_PORT"), Some("6391"));
    assert_eq!(config.get("BASTION_USER"), Some("admin"));
    assert_eq!(config.get("BASTION_PORT"), Some("22"));
    let row = config.rows().into_iter().find(|r| r.name == "REDIS_TUNNEL_PORT").unwrap();
    assert_eq!(row.source, Some(Origin::File { path: ".env.local".into(), line: 1 }));
}

#[test]
fn flags_win_over_the_sandbox_which_wins_over_the_shell() {
    let (_dir, mut options) = workspace(&[]);
    options.shell.push(("ELASTICACHE_ENDPOINT".into(), "prod.cache.amazonaws.com".into()));
    options.sandbox.push(("ELASTICACHE_ENDPOINT".into(), "sandbox.local".into()));
    options.sandbox.push(("REDIS_TUNNEL_PORT".into(), "7001".into()));
    options.flags.push(("REDIS_TUNNEL_PORT".into(), "7002".into()));
    let config = load(&options).unwrap();
    assert_eq!(config.require_redis().unwrap().host, "sandbox.local");
    assert_eq!(config.require_redis().unwrap().local_port, 7002);
}

#[test]
fn env_file_flag_replaces_dotenv_and_later_files_win() {
    let (dir, mut options) = workspace(&[(".env", "BASTION_USER=ignored\n")]);
    std::fs::write(dir.path().join("a.env"), "BASTION_USER=first\nBASTION_PORT=2200\n").unwrap();
    std::fs::write(dir.path().join("b.env"), "BASTION_USER=second\n").unwrap();
    options.env_files = vec!["a.env".into(), "b.env".into()];
    let config = load(&options).unwrap();
    assert_eq!(config.get("BASTION_USER"), Some("second"));
    assert_eq!(config.get("BASTION_PORT"), Some("2200"));
    assert_eq!(config.files.len(), 2);
}

#[test]
fn no_env_file_at_all_is_not_an_error() {
    let (_dir, options) = workspace(&[]);
    let config = load(&options).unwrap();
    assert!(config.files.is_empty());
    assert!(config.redis.is_none());
    assert_eq!(
        config.require_redis().unwrap_err().to_string(),
        "ELASTICACHE_ENDPOINT is not set, and Redis needs it: add `ELASTICACHE_ENDPOINT=...` to \
         .env (see .env.example for every variable), or export it"
    );
}

#[test]
fn fail_missing_env_file_names_the_path() {
    let (dir, mut options) = workspace(&[]);
    options.env_files = vec!["staging.env".into()];
    assert_eq!(
        error_text(&options),
        format!(
            "--env-file staging.env: no such file; check the path (a relative path is taken \
             from {})",
            dir.path().display()
        )
    );
}

#[test]
fn aliases_are_understood_and_the_canonical_name_wins() {
    let (_dir, options) = workspace(&[(
        ".env",
        "NAT_INSTANCE_IP=10.0.0.9\nSSH_KEY_PATH=~/.ssh/dev.pem\nREDIS_HOST=cache.internal\n\
         BASTION_HOST_IP=10.0.0.5\n",
    )]);
    let config = load(&options).unwrap();
    let bastion = config.require_bastion().unwrap();
    assert_eq!(bastion.host, "10.0.0.5");
    assert_eq!(bastion.key_file.as_deref(), Some(Path::new("/home/dev/.ssh/dev.pem")));
    assert_eq!(bastion.known_hosts, Path::new("/home/dev/.ssh/known_hosts"));
    assert_eq!(config.require_redis().unwrap().host, "cache.internal");
    assert_eq!(
        config.warnings[0].to_string(),
        ".env:4: both NAT_INSTANCE_IP (.env:1) and BASTION_HOST_IP (.env:4) are set; \
         BASTION_HOST_IP wins: keep only BASTION_HOST_IP"
    );
}

#[test]
fn endpoint_scheme_and_port_are_normalized() {
    let (_dir, options) = workspace(&[(
        ".env",
        "ELASTICACHE_ENDPOINT=rediss://c.abc.cache.amazonaws.com:6380/\nRDS_ENDPOINT=db.internal\n\
         TUNNEL_EXTRA_FORWARDS=\"6381:reader.internal:6380, 9000:[fd00::1]:9000\"\n",
    )]);
    let config = load(&options).unwrap();
    let redis = config.require_redis().unwrap();
    assert_eq!(
        (redis.host.as_str(), redis.port, redis.tls),
        ("c.abc.cache.amazonaws.com", 6380, true)
    );
    let forwards: Vec<String> = config.forwards.iter().map(ToString::to_string).collect();
    assert_eq!(
        forwards,
        [
            "redis 6379 -> c.abc.cache.amazonaws.com:6380",
            "postgres 5432 -> db.internal:5432",
            "extra-6381 6381 -> reader.internal:6380",
            "extra-9000 9000 -> fd00::1:9000",
        ]
    );
}

#[test]
fn fail_duplicate_local_port_names_where_each_port_was_set() {
    let (_dir, mut options) = workspace(&[(
        ".env",
        "ELASTICACHE_ENDPOINT=c.example\nRDS_ENDPOINT=db.example\n\
         TUNNEL_EXTRA_FORWARDS=6379:reader.example:6380\n",
    )]);
    options.flags.push(("RDS_TUNNEL_PORT".into(), "41517".into()));
    options.shell.push(("REDIS_TUNNEL_PORT".into(), "41517".into()));
    assert_eq!(
        error_text(&options),
        "flag: forwards `redis` (REDIS_TUNNEL_PORT in the shell) and `postgres` (--set \
         RDS_TUNNEL_PORT) both use local port 41517: give each its own port"
    );
    options.shell.clear();
    options.flags = vec![("TUNNEL_EXTRA_FORWARDS".into(), "5432:x.example:1".into())];
    assert_eq!(
        error_text(&options),
        "flag: forwards `postgres` (the default of RDS_TUNNEL_PORT) and `extra-5432` (--set \
         TUNNEL_EXTRA_FORWARDS) both use local port 5432: give each its own port"
    );
    options.flags.clear();
    std::fs::write(
        options.root.join(".env.local"),
        "# the reader\nTUNNEL_EXTRA_FORWARDS=6379:reader.example:6380\n",
    )
    .unwrap();
    assert_eq!(
        error_text(&options),
        ".env.local:2: forwards `redis` (the default of REDIS_TUNNEL_PORT) and `extra-6379` \
         (TUNNEL_EXTRA_FORWARDS at .env.local:2) both use local port 6379: give each its own \
         port"
    );
}

#[test]
fn crlf_and_bom_files_read_correctly() {
    let (_dir, options) = workspace(&[(
        ".env",
        "\u{feff}ELASTICACHE_ENDPOINT=c.example\r\nREDIS_TUNNEL_PORT=6390\r\nREDIS_PASSWORD=\"pw\"\r\n",
    )]);
    let config = load(&options).unwrap();
    let redis = config.require_redis().unwrap();
    assert_eq!(redis.local_port, 6390);
    assert_eq!(redis.password.as_ref().unwrap().expose(), "pw");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn fail_bad_ports_name_file_line_and_fix() {
    for (value, why) in [
        ("0", "port 0 is not a usable port: use a number from 1 to 65535"),
        ("70000", "70000 is out of range: use a number from 1 to 65535"),
        ("abc", "`abc` is not a port number: use a number from 1 to 65535"),
    ] {
        let (_dir, options) = workspace(&[(".env", &format!("\nREDIS_TUNNEL_PORT={value}\n"))]);
        assert_eq!(error_text(&options), format!(".env:2: REDIS_TUNNEL_PORT={value}: {why}"));
    }
}

#[test]
fn fail_empty_required_value() {
    let (_dir, options) = workspace(&[(".env", "ELASTICACHE_ENDPOINT=\n")]);
    assert_eq!(
        error_text(&options),
        ".env:1: ELASTICACHE_ENDPOINT is empty: set it, for example \
         `ELASTICACHE_ENDPOINT=my-cache.abc123.cache.amazonaws.com`"
    );
}

#[test]
fn fail_syntax_errors_name_file_and_line() {
    let (_dir, options) = workspace(&[(".env", "A=1\nREDIS_PASSWORD='abc\n")]);
    assert!(matches!(load(&options), Err(ConfigError::Syntax(_))));
    assert_eq!(
        error_text(&options),
        ".env:2: REDIS_PASSWORD: unbalanced quote: the ' opened here is never closed; close it on the same \
         line, or escape it as \\'"
    );
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let (_dir, options) =
        workspace(&[(".env", "BASTION_PORT=x\nREDIS_TLS_ENABLED=maybe\nENVIRONMENT=prod\n")]);
    assert_eq!(
        error_text(&options),
        ".env:2: REDIS_TLS_ENABLED=maybe is not a boolean: use `true` or `false`\n\
         .env:1: BASTION_PORT=x: `x` is not a port number: use a number from 1 to 65535\n\
         .env:3: ENVIRONMENT=prod is not one of development, test, docker, production: use \
         `ENVIRONMENT=development` on a laptop"
    );
}

#[test]
fn traps_are_warnings_not_errors() {
    let (_dir, options) =
        workspace(&[(".env", "ELASTICACHE_ENDPOINT=localhost\nRDS_ENDPOINT=database:5432\n")]);
    let warnings: Vec<String> =
        load(&options).unwrap().warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            ".env:1: ELASTICACHE_ENDPOINT uses `localhost`, which can resolve to ::1 while a \
             forward listens on 127.0.0.1: use `127.0.0.1`",
            ".env:2: RDS_ENDPOINT is `database`, a name that only resolves inside Docker \
             Compose; on a native run use the real endpoint (or `127.0.0.1` for a local server)",
        ]
    );
}

#[test]
fn near_miss_names_get_did_you_mean() {
    let (_dir, options) = workspace(&[(".env", "ELASTICACHE_ENDPIONT=c.example\n")]);
    let config = load(&options).unwrap();
    assert_eq!(
        config.warnings[0].to_string(),
        ".env:1: ELASTICACHE_ENDPIONT is not a variable this tool reads; did you mean \
         ELASTICACHE_ENDPOINT?"
    );
}

#[test]
fn names_in_the_wrong_case_warn_with_did_you_mean() {
    let (_dir, options) =
        workspace(&[(".env", "redis_password=y\nBastion_Host_IP=10.0.0.1\nREDIS_PASWORD=z\n")]);
    let warnings: Vec<String> =
        load(&options).unwrap().warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            ".env:1: redis_password is not a variable this tool reads; did you mean \
             REDIS_PASSWORD (names are case-sensitive)?",
            ".env:2: Bastion_Host_IP is not a variable this tool reads; did you mean \
             BASTION_HOST_IP (names are case-sensitive)?",
            ".env:3: REDIS_PASWORD is not a variable this tool reads; did you mean \
             REDIS_PASSWORD?",
        ]
    );
}

#[test]
fn unknown_variables_that_look_secret_are_masked() {
    let (_dir, options) = workspace(&[(
        ".env",
        "REDIS_PASWORD=x9a\nredis_password=x9b\nSENTRY_KEY=x9c\nTLS_KEY_FILE=/tmp/k.pem\n",
    )]);
    let config = load(&options).unwrap();
    let rows = config.rows();
    let shown = |name: &str| {
        let row = rows.iter().find(|r| r.name == name).unwrap();
        (row.value.clone().unwrap(), row.secret)
    };
    assert_eq!(shown("REDIS_PASWORD"), ("***".to_string(), true));
    assert_eq!(shown("redis_password"), ("***".to_string(), true));
    assert_eq!(shown("SENTRY_KEY"), ("***".to_string(), true));
    assert_eq!(shown("TLS_KEY_FILE"), ("/tmp/k.pem".to_string(), false));
    let json = serde_json::to_string(&rows).unwrap() + &format!("{config:?}");
    assert!(!json.contains("x9"), "{json}");
}

#[test]
fn secrets_are_redacted_in_rows_and_debug() {
    let (_dir, options) = workspace(&[(
        ".env",
        "REDIS_PASSWORD=hunter2\nBASTION_KEY_PASSPHRASE=p4ss\nDB_PASSWORD=x9\nELASTICACHE_ENDPOINT=c\n",
    )]);
    let config = load(&options).unwrap();
    let shown = serde_json::to_string(&config.rows()).unwrap() + &format!("{config:?}");
    for secret in ["hunter2", "p4ss", "x9"] {
        assert!(!shown.contains(secret), "{secret} leaked");
    }
    assert_eq!(config.child_env()["REDIS_PASSWORD"], "hunter2");
    assert!(!config.child_env().contains_key("BASTION_KEY_PASSPHRASE"), "never handed on");
}

#[test]
fn fail_endpoint_with_two_ports_or_a_tls_contradiction() {
    let (_dir, options) = workspace(&[(".env", "ELASTICACHE_ENDPOINT=h.example.com:6379:1\n")]);
    assert_eq!(
        error_text(&options),
        ".env:1: ELASTICACHE_ENDPOINT=h.example.com:6379:1: has more than one `:`: write \
         `host:port` (an IPv6 address as `[addr]:port`)"
    );
    let (_dir, options) = workspace(&[(
        ".env",
        "ELASTICACHE_ENDPOINT=rediss://c.example:6380\nREDIS_TLS_ENABLED=false\n",
    )]);
    assert_eq!(
        error_text(&options),
        ".env:2: REDIS_TLS_ENABLED=false contradicts the `rediss://` endpoint, which asks for \
         TLS: remove one of them (ElastiCache with encryption needs TLS)"
    );
}

#[test]
fn endpoint_database_suffix_is_dropped_with_a_warning() {
    let (_dir, options) = workspace(&[(".env", "ELASTICACHE_ENDPOINT=redis://h.example:6379/3\n")]);
    let config = load(&options).unwrap();
    assert_eq!(config.require_redis().unwrap().port, 6379);
    assert_eq!(
        config.warnings[0].to_string(),
        ".env:1: ELASTICACHE_ENDPOINT names database `/3`, which the tunnel and the checks do \
         not use (the services choose their own): drop it from the endpoint"
    );
}

#[test]
fn fail_non_utf8_file_and_directory_env_file() {
    let (dir, mut options) = workspace(&[(".env", "A=1\n")]);
    std::fs::write(dir.path().join(".env"), b"A=1\nB=\xff\xfe\n").unwrap();
    assert_eq!(error_text(&options), ".env:2: is not UTF-8 text: save the file as UTF-8");
    std::fs::create_dir(dir.path().join("envs")).unwrap();
    options.env_files = vec!["envs".into()];
    assert_eq!(error_text(&options), "--env-file envs: is a directory; name the env file itself");
}

#[test]
fn rows_show_the_effective_value_and_why_it_differs() {
    let (_dir, options) = workspace(&[(
        ".env",
        "REDIS_HOST=rediss://c.example\nREDIS_TUNNEL_PORT=\nREDIS_USERNAME=\nBASTION_HOST_IP=10.0.0.1\n",
    )]);
    let config = load(&options).unwrap();
    let rows = config.rows();
    let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
    let file = |line| Some(Origin::File { path: ".env".into(), line });

    let tls = row("REDIS_TLS_ENABLED");
    assert_eq!(tls.value.as_deref(), Some("true"));
    assert_eq!(tls.note.as_deref(), Some("from rediss:// in REDIS_HOST"));
    assert_eq!(tls.source, file(1));
    let port = row("REDIS_TUNNEL_PORT");
    assert_eq!(port.value.as_deref(), Some("6379"));
    assert_eq!(port.note.as_deref(), Some("default: the value is empty"));
    assert_eq!(port.source, file(2));
    let user = row("REDIS_USERNAME");
    assert_eq!(
        (user.value.as_deref(), user.note.as_deref()),
        (Some(""), Some("empty: the same as unset"))
    );
    let tunnel = row("USE_SSH_TUNNEL_FOR_REDIS");
    assert_eq!(tunnel.value.as_deref(), Some("true"));
    assert_eq!(tunnel.note.as_deref(), Some("BASTION_HOST_IP is set"));
    assert_eq!(tunnel.source, Some(Origin::Default));
    let state = row("XTASK_STATE_DIR");
    assert_eq!(state.value.as_deref(), Some("/home/dev/.local/state/mesh-dev"));
    assert_eq!(row("BASTION_PORT").note, None, "a plain default needs no note");
}

#[test]
fn empty_tls_flag_leaves_the_rediss_scheme_in_charge() {
    let (_dir, options) =
        workspace(&[(".env", "ELASTICACHE_ENDPOINT=rediss://c.example\nREDIS_TLS_ENABLED=\n")]);
    let config = load(&options).unwrap();
    assert!(config.require_redis().unwrap().tls);
    let rows = config.rows();
    let tls = rows.iter().find(|r| r.name == "REDIS_TLS_ENABLED").unwrap();
    assert_eq!(tls.value.as_deref(), Some("true"));
    assert_eq!(tls.note.as_deref(), Some("from rediss:// in ELASTICACHE_ENDPOINT"));
}
