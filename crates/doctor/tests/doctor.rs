//! The doctor against real things: keys with real modes, a PATH without a
//! tool, real sshd and redis-server, a port held by this test, the AWS CLI
//! against a local moto_server, and a bastion that drops packets.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use mesh_doctor::{Category, Fix, Options, Severity};
use mesh_testkit::{free_port, generate_key, KeyType, RedisServer, Sshd};
use support::{aws_venv, category, find, Blackhole, Fixture, Moto, Servers};

/// The bound of each check in tests that run the AWS CLI (a Python program).
const AWS_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn key_readable_by_others_fails_and_fix_makes_it_private() {
    let mut fixture = Fixture::new();
    let key = generate_key(fixture.home.path(), KeyType::Ed25519, None);
    std::fs::set_permissions(&key.private_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("BASTION_KEY_FILE", key.private_path.display())
        .set("ELASTICACHE_ENDPOINT", "127.0.0.1:6379");
    let options = Options { quick: true, ..fixture.options() };

    let report = fixture.run(options.clone()).await;
    assert_eq!(category(&report, Category::SshKey).severity, Severity::Fail);
    let mode = find(&report, Category::SshKey, "mode");
    assert_eq!(
        mode.message,
        format!(
            "{} has mode 0644: other users can read it, so ssh and the tunnel refuse it",
            key.private_path.display()
        )
    );
    assert_eq!(mode.fix.as_deref(), Some(&*format!("chmod 600 {}", key.private_path.display())));
    assert_eq!(report.exit_code, 1);

    let chmod = Fix::KeyMode { path: key.private_path.clone() };
    assert!(report.auto_fixes().contains(&chmod), "{:?}", report.auto_fixes());
    chmod.apply().unwrap();
    let after = fixture.run(options).await;
    assert_eq!(find(&after, Category::SshKey, "mode").message, "0600");
    assert_eq!(find(&after, Category::SshKey, "type").message, "ed25519");
    assert_eq!(find(&after, Category::SshKey, "encryption").message, "not encrypted");
    assert_eq!(category(&after, Category::SshKey).severity, Severity::Ok);
}

#[tokio::test]
async fn encrypted_key_without_passphrase_or_terminal_fails_and_passphrase_opens_it() {
    let mut fixture = Fixture::new();
    let key = generate_key(fixture.home.path(), KeyType::Ed25519, Some("right horse"));
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("BASTION_KEY_FILE", key.private_path.display())
        .set("ELASTICACHE_ENDPOINT", "127.0.0.1:6379");
    let options = Options { quick: true, ..fixture.options() };

    let report = fixture.run(options.clone()).await;
    let encryption = find(&report, Category::SshKey, "encryption");
    assert_eq!(encryption.severity, Severity::Fail);
    assert!(encryption
        .message
        .ends_with("is encrypted and no passphrase is available (no terminal to ask on)"));

    fixture.set("BASTION_KEY_PASSPHRASE", "wrong horse");
    let wrong = fixture.run(options.clone()).await;
    let encryption = find(&wrong, Category::SshKey, "encryption");
    assert_eq!(encryption.severity, Severity::Fail);
    assert_eq!(
        encryption.fix.as_deref(),
        Some("check BASTION_KEY_PASSPHRASE (a trailing newline counts)")
    );

    fixture.set("BASTION_KEY_PASSPHRASE", "right horse");
    let right = fixture.run(options).await;
    let encryption = find(&right, Category::SshKey, "encryption");
    assert_eq!(encryption.message, "encrypted; the passphrase opens it");
}

#[tokio::test]
async fn missing_redis_cli_is_a_warning_with_its_install_command() {
    let fixture = Fixture::new();
    fixture.tools(&["ssh", "apt-get"]);
    let report = fixture.run(Options { quick: true, ..fixture.options() }).await;

    let redis_cli = find(&report, Category::Tools, "redis-cli");
    assert_eq!(redis_cli.severity, Severity::Warn);
    assert_eq!(redis_cli.message, "`redis-cli` is not on PATH (handy to inspect Redis by hand)");
    let sudo = if nix::unistd::geteuid().is_root() { "" } else { "sudo " };
    assert_eq!(redis_cli.fix.as_deref(), Some(&*format!("{sudo}apt-get install -y redis-tools")));
    if nix::unistd::geteuid().is_root() {
        assert_eq!(
            redis_cli.auto_fix,
            Some(Fix::AptInstall { packages: vec!["redis-tools".into()] })
        );
    }
    assert!(find(&report, Category::Tools, "ssh").message.starts_with("OpenSSH_"));
    assert_eq!(category(&report, Category::Tools).severity, Severity::Warn);
}

#[tokio::test]
async fn missing_go_blocks_only_when_services_will_run_it() {
    let mut fixture = Fixture::new();
    fixture.tools(&["redis-cli", "ssh", "apt-get"]);
    let app = fixture.root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.22\n").unwrap();
    let port = free_port();
    let manifest = fixture.write(
        "services.toml",
        &format!(
            "[services.api]\ncommand = [\"go\", \"run\", \".\"]\ncwd = \"app\"\nport = {port}\n"
        ),
    );
    fixture.set("ELASTICACHE_ENDPOINT", "127.0.0.1:6379").set("USE_SSH_TUNNEL_FOR_REDIS", "false");

    let with_services =
        Options { services: true, manifest: Some(manifest.clone()), ..fixture.options() };
    let report = fixture.run(Options { quick: true, ..with_services.clone() }).await;
    let go = find(&report, Category::Tools, "go");
    assert_eq!(go.severity, Severity::Fail);
    assert_eq!(go.message, "`go` is not on PATH (the services' go.mod asks for go 1.22)");
    let command = find(&report, Category::Services, "command `go`");
    assert_eq!(command.severity, Severity::Fail);
    assert_eq!(find(&report, Category::Services, &format!("port {port}")).severity, Severity::Ok);
    assert_eq!(report.exit_code, 1);

    let without =
        fixture.run(Options { quick: true, manifest: Some(manifest), ..fixture.options() }).await;
    assert_eq!(find(&without, Category::Tools, "go").severity, Severity::Skip);
    assert_eq!(category(&without, Category::Services).severity, Severity::Skip);
}

#[tokio::test]
async fn sandbox_env_file_skips_aws_but_not_go_when_the_real_services_run() {
    let fixture = Fixture::new();
    fixture.tools(&["redis-cli", "ssh", "apt-get"]);
    let app = fixture.root.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.22\n").unwrap();
    let manifest = fixture.write(
        "services.toml",
        &format!(
            "[services.api]\ncommand = [\"go\", \"run\", \".\"]\ncwd = \"app\"\nport = {}\n",
            free_port()
        ),
    );
    // What `sandbox up` writes, as far as the doctor cares.
    let env_file = fixture.write(
        "sandbox.env",
        "MESH_SANDBOX=1\nELASTICACHE_ENDPOINT=127.0.0.1:6379\nUSE_SSH_TUNNEL_FOR_REDIS=false\n",
    );
    let load = || mesh_config::LoadOptions { env_files: vec![env_file.clone()], ..fixture.load() };
    let services = Options {
        services: true,
        quick: true,
        manifest: Some(manifest.clone()),
        ..fixture.options()
    };

    // `dev --env-file sandbox.env`: the manifest's real services run, and they need go.
    let report = mesh_doctor::Doctor::new(load(), services.clone()).run().await;
    let go = find(&report, Category::Tools, "go");
    assert_eq!(go.severity, Severity::Fail, "{go:#?}");
    assert_eq!(find(&report, Category::Services, "command `go`").severity, Severity::Fail);
    assert_eq!(category(&report, Category::Aws).severity, Severity::Skip);
    assert_eq!(report.exit_code, 1);

    // `dev --sandbox`: the stand-ins run, nothing of the manifest matters.
    let stand_ins = Options { sandbox: true, ..services };
    let report = mesh_doctor::Doctor::new(load(), stand_ins).run().await;
    assert_eq!(find(&report, Category::Tools, "go").severity, Severity::Skip);
    assert_eq!(category(&report, Category::Services).severity, Severity::Skip);
    assert_eq!(category(&report, Category::Aws).severity, Severity::Skip);
}

#[tokio::test]
async fn wrong_host_key_is_refused_with_both_fingerprints() {
    let sshd = Sshd::builder().host_key_types(&[KeyType::Ed25519]).start();
    let mut fixture = Fixture::new();
    let impostor = generate_key(fixture.home.path(), KeyType::Ed25519, None);
    let known_hosts = fixture.home.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line(&impostor.public_line)))
        .unwrap();
    fixture
        .bastion(&sshd, "127.0.0.1:6379".parse().unwrap())
        .set("BASTION_KNOWN_HOSTS", known_hosts.display());

    let report = fixture.run(fixture.options()).await;
    assert_eq!(find(&report, Category::Bastion, "tcp").severity, Severity::Ok);
    let host_key = find(&report, Category::Bastion, "host key");
    assert_eq!(host_key.severity, Severity::Fail);
    assert!(host_key.message.contains("has CHANGED"), "{}", host_key.message);
    assert!(
        !report.checks().any(|(_, c)| c.name == "authentication"),
        "no login after a key mismatch"
    );
    assert_eq!(category(&report, Category::Redis).severity, Severity::Skip);
}

#[tokio::test]
async fn bastion_alias_from_an_included_ssh_config_is_dialled_as_the_tunnel_dials_it() {
    let sshd = Sshd::builder().start();
    let mut fixture = Fixture::new();
    let ssh_dir = fixture.home.path().join(".ssh");
    std::fs::create_dir_all(ssh_dir.join("config.d")).unwrap();
    std::fs::write(ssh_dir.join("config"), "Include config.d/*\n").unwrap();
    std::fs::write(
        ssh_dir.join("config.d/work"),
        format!(
            "Host work-bastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
            sshd.port(),
            sshd.user()
        ),
    )
    .unwrap();
    fixture.bastion(&sshd, "127.0.0.1:6379".parse().unwrap());
    fixture.flags.retain(|(name, _)| name != "BASTION_PORT" && name != "BASTION_USER");
    fixture.set("BASTION_HOST_IP", "work-bastion");

    let report = fixture.run(fixture.options()).await;
    let bastion = category(&report, Category::Bastion);
    let expected = format!("{}@127.0.0.1:{}", sshd.user(), sshd.port());
    assert!(bastion.summary.starts_with(&expected), "{}", bastion.summary);
    assert_eq!(find(&report, Category::Bastion, "tcp").severity, Severity::Ok);
    let auth = find(&report, Category::Bastion, "authentication");
    assert_eq!(auth.message, format!("accepted as `{}`", sshd.user()));

    // A loop of Includes is named, not dialled.
    std::fs::write(ssh_dir.join("config"), "Include config\n").unwrap();
    let report = fixture.run(fixture.options()).await;
    let broken = find(&report, Category::Bastion, "ssh config");
    assert_eq!(broken.severity, Severity::Fail);
    assert!(broken.message.contains("config"), "{}", broken.message);
}

#[tokio::test]
async fn identity_file_of_the_ssh_config_alias_is_the_key_checked() {
    let sshd = Sshd::builder().start();
    let mut fixture = Fixture::new();
    let ssh_dir = fixture.home.path().join(".ssh");
    std::fs::create_dir_all(ssh_dir.join("config.d")).unwrap();
    std::fs::write(ssh_dir.join("config"), "Include config.d/*\n").unwrap();
    let key = sshd.user_key().private_path.clone();
    std::fs::write(
        ssh_dir.join("config.d/bastion"),
        format!(
            "# the team's bastion\nHost mybastion\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  \
             IdentityFile {}\n",
            sshd.port(),
            sshd.user(),
            key.display()
        ),
    )
    .unwrap();
    fixture.bastion(&sshd, "127.0.0.1:6379".parse().unwrap());
    fixture.flags.retain(|(name, _)| {
        !matches!(name.as_str(), "BASTION_PORT" | "BASTION_USER" | "BASTION_KEY_FILE")
    });
    fixture.set("BASTION_HOST_IP", "mybastion");
    fixture.shell.remove("SSH_AUTH_SOCK");

    let report = fixture.run(fixture.options()).await;
    let ssh_key = category(&report, Category::SshKey);
    assert_eq!(ssh_key.severity, Severity::Ok, "{ssh_key:#?}");
    let source = find(&report, Category::SshKey, "source");
    assert_eq!(source.message, "IdentityFile from ~/.ssh/config.d/bastion:6");
    assert!(ssh_key.summary.ends_with(", IdentityFile from ~/.ssh/config.d/bastion:6"));
    assert_eq!(find(&report, Category::SshKey, "mode").message, "0600");
    let auth = find(&report, Category::Bastion, "authentication");
    assert_eq!(auth.message, format!("accepted as `{}`", sshd.user()));

    // The alias's key is held to the same rules as BASTION_KEY_FILE's.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = fixture.run(Options { quick: true, ..fixture.options() }).await;
    let mode = find(&loose, Category::SshKey, "mode");
    assert_eq!(mode.severity, Severity::Fail);
    assert_eq!(mode.fix.as_deref(), Some(&*format!("chmod 600 {}", key.display())));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A missing IdentityFile names its line.
    std::fs::remove_file(&key).unwrap();
    let gone = fixture.run(Options { quick: true, ..fixture.options() }).await;
    let file = find(&gone, Category::SshKey, "file");
    assert_eq!(file.severity, Severity::Fail);
    assert!(
        file.message.starts_with("IdentityFile from ~/.ssh/config.d/bastion:6 "),
        "{}",
        file.message
    );
    assert!(file.fix.as_deref().unwrap().starts_with("correct IdentityFile at ~/.ssh/config.d/"));
}

#[tokio::test]
async fn silent_ssh_server_times_out_naming_the_doctors_own_timeout() {
    // Accepts TCP (the kernel does, backlog) and never says a word: the handshake times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sshd = Sshd::builder().start();
    let mut fixture = Fixture::new();
    fixture
        .bastion(&sshd, "127.0.0.1:6379".parse().unwrap())
        .set("BASTION_PORT", silent.local_addr().unwrap().port());
    let options = mesh_doctor::Options { timeout: Duration::from_secs(1), ..fixture.options() };

    let report = fixture.run(options).await;
    assert_eq!(find(&report, Category::Bastion, "tcp").severity, Severity::Ok);
    let ssh = find(&report, Category::Bastion, "ssh");
    assert_eq!(ssh.severity, Severity::Fail);
    assert!(ssh.message.contains("timed out after 1s during the SSH handshake"), "{}", ssh.message);
    assert!(ssh.message.ends_with("give the doctor a longer --timeout"), "{}", ssh.message);
}

#[tokio::test]
async fn closed_bastion_port_is_told_apart_from_a_cache_the_bastion_cannot_reach() {
    let sshd = Sshd::builder().start();
    let closed = free_port();

    let mut unreachable_bastion = Fixture::new();
    unreachable_bastion
        .bastion(&sshd, "127.0.0.1:6379".parse().unwrap())
        .set("BASTION_PORT", closed);
    let report = unreachable_bastion.run(unreachable_bastion.options()).await;
    let tcp = find(&report, Category::Bastion, "tcp");
    assert_eq!(tcp.severity, Severity::Fail);
    assert_eq!(
        tcp.message,
        format!("cannot reach the bastion 127.0.0.1:{closed}: Connection refused (os error 111)")
    );

    let mut unreachable_cache = Fixture::new();
    unreachable_cache.bastion(&sshd, mesh_testkit::loopback(closed));
    let report = unreachable_cache.run(unreachable_cache.options()).await;
    assert_eq!(find(&report, Category::Bastion, "tcp").severity, Severity::Ok);
    assert_eq!(find(&report, Category::Bastion, "host key").severity, Severity::Ok);
    assert_eq!(find(&report, Category::Bastion, "authentication").severity, Severity::Ok);
    let endpoint = find(&report, Category::Bastion, "redis endpoint");
    assert_eq!(endpoint.severity, Severity::Fail);
    assert!(
        endpoint.message.contains(&format!("cannot reach the endpoint 127.0.0.1:{closed}")),
        "{}",
        endpoint.message
    );
}

#[tokio::test]
async fn env_file_flag_with_a_bad_value_still_counts_as_replacing_dotenv() {
    let fixture = Fixture::new();
    let staging =
        fixture.write("staging.env", "BASTION_HOST_IP=10.0.1.10\nBASTION_PORT=twenty-two\n");
    let load = mesh_config::LoadOptions { env_files: vec![staging.clone()], ..fixture.load() };
    let options = Options { quick: true, ..fixture.options() };

    let report = mesh_doctor::Doctor::new(load, options).run().await;
    assert_eq!(find(&report, Category::Configuration, "BASTION_PORT").severity, Severity::Fail);
    let dotenv = find(&report, Category::Configuration, ".env");
    assert_eq!(dotenv.severity, Severity::Ok, "{dotenv:#?}");
    assert_eq!(dotenv.message, format!("replaced by --env-file {}", staging.display()));
    assert_eq!(dotenv.auto_fix, None);
}

#[tokio::test]
async fn env_copied_unedited_from_the_example_names_its_placeholders() {
    let fixture = Fixture::new();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.env.example"),
    )
    .unwrap();
    fixture.write(".env.example", &example);
    fixture.write(".env", &example);
    let options = Options { quick: true, ..fixture.options() };

    let report = fixture.run(options.clone()).await;
    let configuration = category(&report, Category::Configuration);
    assert_eq!(configuration.severity, Severity::Fail, "{configuration:#?}");
    assert!(
        configuration.summary.ends_with(
            "still .env.example's placeholder: BASTION_HOST_IP, ELASTICACHE_ENDPOINT, \
             BASTION_KEY_FILE"
        ),
        "{}",
        configuration.summary
    );
    let host = find(&report, Category::Configuration, "BASTION_HOST_IP");
    assert_eq!(host.severity, Severity::Fail);
    assert_eq!(
        host.message,
        "BASTION_HOST_IP=10.0.1.10 is still the example's placeholder: set your bastion's \
         address (or its ~/.ssh/config Host alias)"
    );
    let endpoint = find(&report, Category::Configuration, "ELASTICACHE_ENDPOINT");
    assert_eq!(endpoint.severity, Severity::Fail);
    assert_eq!(find(&report, Category::Configuration, "BASTION_KEY_FILE").severity, Severity::Warn);
    assert_eq!(report.exit_code, 1);

    // Edited values are the user's: nothing flagged.
    let key = generate_key(fixture.home.path(), KeyType::Ed25519, None);
    let edited = example
        .replace("BASTION_HOST_IP=10.0.1.10", "BASTION_HOST_IP=10.20.0.7")
        .replace("my-cache.abc123", "team-cache.x1y2z3")
        .replace("~/.ssh/dev-bastion.pem", &key.private_path.display().to_string());
    fixture.write(".env", &edited);
    let report = fixture.run(options).await;
    let configuration = category(&report, Category::Configuration);
    assert_eq!(configuration.severity, Severity::Ok, "{configuration:#?}");
    assert!(!configuration.summary.contains("placeholder"), "{}", configuration.summary);
}

#[tokio::test]
async fn key_that_cannot_be_loaded_is_not_reported_as_refused_by_the_bastion() {
    let sshd = Sshd::builder().start();
    let mut fixture = Fixture::new();
    let missing = fixture.home.path().join(".ssh/dev-bastion.pem");
    fixture
        .bastion(&sshd, "127.0.0.1:6379".parse().unwrap())
        .set("BASTION_KEY_FILE", missing.display());

    let report = fixture.run(fixture.options()).await;
    let bastion = category(&report, Category::Bastion);
    assert_eq!(
        bastion.summary,
        format!(
            "{}@127.0.0.1:{}: no SSH session tried: the key cannot be used (see SSH key)",
            sshd.user(),
            sshd.port()
        )
    );
    assert_eq!(find(&report, Category::Bastion, "key").severity, Severity::Fail);
    let names: Vec<&str> = bastion.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["tcp", "key"], "no host key or authentication step was taken");
}

#[tokio::test]
async fn port_held_by_another_process_names_it() {
    let mut fixture = Fixture::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("ELASTICACHE_ENDPOINT", "10.0.0.5:6379")
        .set("REDIS_TUNNEL_PORT", port);

    let report = fixture.run(Options { quick: true, ..fixture.options() }).await;
    let check = find(&report, Category::Tunnel, &format!("redis port {port}"));
    assert_eq!(check.severity, Severity::Fail);
    let me = std::process::id();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        check.message,
        format!(
            "127.0.0.1:{port} is held by {} (pid {me}); the tunnel cannot listen there",
            comm.trim()
        )
    );
    assert_eq!(
        check.fix.as_deref(),
        Some(&*format!("stop it (`kill {me}`), or set REDIS_TUNNEL_PORT (or the forward's port) to a free port"))
    );
}

#[tokio::test]
async fn aws_credentials_missing_fail_and_present_show_the_account() {
    let venv = aws_venv();
    let moto = Moto::start(&venv);
    let mut fixture = Fixture::new();
    fixture.path_first(&venv).shell_var("AWS_ENDPOINT_URL", moto.endpoint());
    fixture.set("ELASTICACHE_ENDPOINT", "127.0.0.1:6379").set("USE_SSH_TUNNEL_FOR_REDIS", "false");
    let manifest = Some(fixture.write("none.toml", ""));
    // The AWS CLI is Python: a cold start takes seconds on a busy 2-core machine.
    let options = Options { services: true, manifest, timeout: AWS_TIMEOUT, ..fixture.options() };

    let missing = fixture.run(options.clone()).await;
    let credentials = find(&missing, Category::Aws, "credentials");
    assert_eq!(credentials.severity, Severity::Fail);
    assert_eq!(
        credentials.message,
        "no AWS credentials: none in the environment, no default profile in ~/.aws"
    );
    assert_eq!(find(&missing, Category::Aws, "region").severity, Severity::Warn);

    fixture
        .shell_var("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
        .shell_var("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        .shell_var("AWS_REGION", "eu-west-1");
    let present = fixture.run(options).await;
    assert_eq!(
        find(&present, Category::Aws, "credentials").message,
        "environment (AWS_ACCESS_KEY_ID)"
    );
    assert_eq!(find(&present, Category::Aws, "region").message, "eu-west-1 (from AWS_REGION)");
    let identity = find(&present, Category::Aws, "identity");
    assert_eq!(identity.severity, Severity::Ok, "{identity:?}");
    assert!(identity.message.starts_with("account 123456789012, arn:aws:"), "{}", identity.message);
    assert_eq!(category(&present, Category::Aws).severity, Severity::Ok);

    let json = serde_json::to_string(&present).unwrap();
    assert!(!json.contains("wJalrXUtnFEMI"), "the secret key leaked into the report");
}

#[tokio::test]
async fn aws_profile_from_shared_files_is_found_and_sandbox_skips_aws() {
    let mut fixture = Fixture::new();
    let aws_dir = fixture.home.path().join(".aws");
    std::fs::create_dir(&aws_dir).unwrap();
    std::fs::write(
        aws_dir.join("config"),
        "[profile dev]\nsso_session = corp\nregion = us-west-2\n",
    )
    .unwrap();
    fixture.shell_var("AWS_PROFILE", "dev");
    fixture.set("ELASTICACHE_ENDPOINT", "127.0.0.1:6379").set("USE_SSH_TUNNEL_FOR_REDIS", "false");

    let report = fixture.run(fixture.options()).await;
    assert_eq!(find(&report, Category::Aws, "credentials").message, "profile dev (SSO)");
    assert_eq!(find(&report, Category::Aws, "region").message, "us-west-2 (from profile dev)");
    assert_eq!(find(&report, Category::Aws, "identity").severity, Severity::Skip);

    let sandbox = fixture.run(Options { sandbox: true, ..fixture.options() }).await;
    assert_eq!(category(&sandbox, Category::Aws).severity, Severity::Skip);
    assert_eq!(category(&sandbox, Category::Bastion).severity, Severity::Skip);
}

#[tokio::test]
async fn all_green_against_real_sshd_redis_and_moto_with_the_json_shape() {
    let venv = aws_venv();
    let moto = Moto::start(&venv);
    let servers = Servers::start();
    let mut fixture = Fixture::new();
    fixture.tools(&["redis-cli", "ssh", "apt-get"]);
    fixture.path_first(&venv);
    servers.configure(&mut fixture);
    fixture
        .shell_var("AWS_ENDPOINT_URL", moto.endpoint())
        .shell_var("AWS_ACCESS_KEY_ID", "testing")
        .shell_var("AWS_SECRET_ACCESS_KEY", "testing")
        .shell_var("AWS_REGION", "us-east-1");
    fixture.write(".env", "# from the test\nENVIRONMENT=development\n");
    let port = free_port();
    let manifest = fixture.write(
        "services.toml",
        &format!("[services.web]\ncommand = [\"redis-cli\", \"--version\"]\ncwd = \".\"\nport = {port}\n"),
    );
    let options = Options {
        services: true,
        manifest: Some(manifest),
        timeout: AWS_TIMEOUT,
        ..fixture.options()
    };

    let report = fixture.run(options).await;
    let problems: Vec<_> = report.checks().filter(|(_, c)| c.severity >= Severity::Warn).collect();
    assert!(problems.is_empty(), "expected all green, got {problems:#?}");
    assert_eq!((report.ok, report.exit_code), (true, 0));
    for c in [
        Category::Configuration,
        Category::Tools,
        Category::SshKey,
        Category::Aws,
        Category::Bastion,
        Category::Tunnel,
        Category::Redis,
        Category::Services,
    ] {
        assert_eq!(category(&report, c).severity, Severity::Ok, "{c:?}");
    }
    assert!(find(&report, Category::Redis, "server").message.starts_with("redis "));
    assert_eq!(find(&report, Category::Redis, "tls").message, "off");
    let ping = find(&report, Category::Redis, "ping");
    assert!(ping.message.starts_with("PONG in "), "{}", ping.message);
    assert!(
        ping.message.ends_with("through the doctor's tunnel, AUTH accepted"),
        "{}",
        ping.message
    );
    assert!(report.session.is_some(), "the doctor hands its session back for dev to reuse");

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["exit_code"], 0);
    assert!(json["elapsed_ms"].is_u64());
    let categories = json["categories"].as_array().unwrap();
    let names: Vec<&str> = categories.iter().map(|c| c["category"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["configuration", "tools", "ssh_key", "aws", "bastion", "tunnel", "redis", "services"]
    );
    let ssh_key = &categories[2];
    let mut keys: Vec<&String> = ssh_key.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["category", "checks", "elapsed_ms", "severity", "summary", "title"]);
    assert_eq!(ssh_key["title"], "SSH key");
    assert_eq!(ssh_key["severity"], "ok");
    let check = &ssh_key["checks"][0];
    let mut keys: Vec<&String> = check.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["elapsed_ms", "fix", "message", "name", "severity"]);
    assert!(check["fix"].is_null());
    assert!(!json.to_string().contains("s3cret-pw"), "the Redis password leaked into --json");
}

#[tokio::test]
async fn reuses_the_callers_tunnel_instead_of_opening_a_second_session() {
    let servers = Servers::start();
    let mut fixture = Fixture::new();
    servers.configure(&mut fixture);
    let first = fixture.run(fixture.options()).await;
    let session = first.session.clone().expect("a session from the first run");
    let logins_before = servers.sshd.log().matches("Accepted publickey").count();

    let options = Options { tunnel: Some(session), ..fixture.options() };
    let second = fixture.run(options).await;
    assert_eq!(category(&second, Category::Bastion).severity, Severity::Ok);
    assert!(
        find(&second, Category::Bastion, "session").message.ends_with("(shared with dev)")
            || find(&second, Category::Bastion, "session")
                .message
                .contains("(shared with dev), rtt")
    );
    assert_eq!(find(&second, Category::Redis, "ping").severity, Severity::Ok);
    let logins_after = servers.sshd.log().matches("Accepted publickey").count();
    assert_eq!(logins_after, logins_before, "a second SSH login happened");
}

#[tokio::test]
async fn silent_bastion_costs_one_timeout_not_a_sum() {
    let hole = Blackhole::new();
    let redis = RedisServer::builder().start();
    let mut fixture = Fixture::new();
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("BASTION_PORT", hole.port)
        .set("ELASTICACHE_ENDPOINT", redis.addr())
        .set("REDIS_TUNNEL_PORT", free_port());
    let timeout = Duration::from_secs(1);
    let options = Options { timeout, ..fixture.options() };

    let started = Instant::now();
    let report = fixture.run(options.clone()).await;
    let elapsed = started.elapsed();
    let tcp = find(&report, Category::Bastion, "tcp");
    assert_eq!(tcp.severity, Severity::Fail);
    assert_eq!(
        tcp.message,
        format!("no answer from the bastion 127.0.0.1:{} within 1s (packets dropped?)", hole.port)
    );
    assert!(elapsed < timeout * 2, "took {elapsed:?} for a 1 s timeout");
    assert!(elapsed < options.deadline());
}

#[tokio::test]
async fn wrong_redis_password_fails_the_redis_line_only() {
    let servers = Servers::start();
    let mut fixture = Fixture::new();
    servers.configure(&mut fixture);
    fixture.set("REDIS_PASSWORD", "not-the-password");

    let report = fixture.run(fixture.options()).await;
    assert_eq!(category(&report, Category::Bastion).severity, Severity::Ok);
    let ping = find(&report, Category::Redis, "ping");
    assert_eq!(ping.severity, Severity::Fail);
    assert!(
        ping.message.contains("WRONGPASS") || ping.message.contains("password"),
        "{}",
        ping.message
    );
    assert!(ping.message.ends_with("(through the doctor's tunnel)"), "{}", ping.message);
    assert!(!serde_json::to_string(&report).unwrap().contains("not-the-password"));
}

/// A tunnel's control socket answering `status` with a fixed state.
struct FakeTunnel(serde_json::Value);

impl mesh_tunnel::control::ControlTarget for FakeTunnel {
    async fn status(&self) -> serde_json::Value {
        self.0.clone()
    }
    async fn health(&self) -> mesh_tunnel::control::HealthReply {
        mesh_tunnel::control::HealthReply { ok: true, latency_ms: Some(1.0), detail: "PONG".into() }
    }
    async fn shutdown(&self) {}
}

#[tokio::test]
async fn port_held_by_our_own_tunnel_reports_its_health() {
    use mesh_tunnel::control::{serve_control, RecordedForward, StateRoot, TunnelId, TunnelRecord};

    let mut fixture = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    fixture
        .set("BASTION_HOST_IP", "127.0.0.1")
        .set("ELASTICACHE_ENDPOINT", "10.0.0.5:6379")
        .set("REDIS_TUNNEL_PORT", port);
    let config = mesh_doctor::Doctor::new(fixture.load(), fixture.options());
    let forwards = config.config().unwrap().forwards.clone();
    let root = StateRoot { dir: fixture.state.path().to_path_buf(), runtime_dir: None };
    let state = root.tunnel(&TunnelId::new("127.0.0.1", 22, "ec2-user", &forwards));
    let record = TunnelRecord {
        id: state.id.to_string(),
        bastion_host: "127.0.0.1".into(),
        bastion_port: 22,
        bastion_user: "ec2-user".into(),
        forwards: forwards.iter().map(RecordedForward::from).collect(),
        bind_addrs: vec!["127.0.0.1".parse().unwrap()],
        socket: state.socket.clone(),
        pid: std::process::id(),
        started_at: 0,
        exe: None,
        owner: Default::default(),
        detached: false,
    };
    let status = serde_json::json!({ "state": "reconnecting", "attempt": 2, "reason": "no answer to keepalives" });
    let guard =
        serve_control(std::sync::Arc::new(FakeTunnel(status)), state.lock().unwrap(), record)
            .await
            .unwrap();

    let report = fixture.run(Options { quick: true, ..fixture.options() }).await;
    let check = find(&report, Category::Tunnel, &format!("redis port {port}"));
    assert_eq!(check.severity, Severity::Warn);
    assert_eq!(
        check.message,
        format!("held by our tunnel (pid {}), reconnecting", std::process::id())
    );
    drop(guard);
}
