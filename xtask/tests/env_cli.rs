//! `cargo xtask env` and the global conventions, through the built binary:
//! exit codes, exact error text, redaction and `--json`.

use std::process::{Command, Output};

/// Runs the xtask binary in `dir` with a clean, known environment.
fn xtask(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.current_dir(dir).args(args).env_clear().env("HOME", dir).env("NO_COLOR", "1");
    cmd.env("XTASK_STATE_DIR", dir.join("state"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn env_shows_value_and_source_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sample.env"),
        "BASTION_HOST_IP=10.0.1.5\nELASTICACHE_ENDPOINT=c.example:6380\nREDIS_PASSWORD=hunter2\n\
         REDIS_TUNNEL_PORT=6390\n",
    )
    .unwrap();
    let out =
        xtask(dir.path(), &["--env-file", "sample.env", "env"], &[("REDIS_TUNNEL_PORT", "7000")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |name: &str| {
        let l = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        l.split_whitespace().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(line("BASTION_HOST_IP"), ["BASTION_HOST_IP", "10.0.1.5", "sample.env:1"]);
    assert_eq!(line("REDIS_TUNNEL_PORT"), ["REDIS_TUNNEL_PORT", "7000", "shell"]);
    assert_eq!(line("REDIS_PASSWORD"), ["REDIS_PASSWORD", "***", "sample.env:3"]);
    assert_eq!(line("BASTION_PORT"), ["BASTION_PORT", "22", "default"]);
    assert!(!text.contains("hunter2") && !stderr(&out).contains("hunter2"));

    let out = xtask(dir.path(), &["--env-file", "sample.env", "env", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let password = json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "REDIS_PASSWORD")
        .unwrap();
    assert_eq!(password["value"], "***");
    assert_eq!(password["source"]["line"], 3);
}

#[test]
fn fail_bad_port_exits_2_naming_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.env"), "# ports\nREDIS_TUNNEL_PORT=70000\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "bad.env", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: bad.env:2: REDIS_TUNNEL_PORT=70000: 70000 is out of range: use a number from 1 \
         to 65535\n"
    );
}

#[test]
fn fail_line_without_equals_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.env"), "BASTION_PORT 22\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "bad.env", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: bad.env:1: `BASTION_PORT` has no `=`: write it as `BASTION_PORT=value`, or \
         comment it out with `#`\n"
    );
}

#[test]
fn fail_missing_env_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(dir.path(), &["--env-file", "nope.env", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "error: --env-file nope.env: no such file; check the path (a relative path is \
             taken from {})\n",
            dir.path().canonicalize().unwrap().display()
        )
    );
}

#[test]
fn near_miss_name_warns_with_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), "BASTION_HOST=10.0.0.1\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "a.env", "env"], &[]);
    assert!(out.status.success());
    assert_eq!(
        stderr(&out),
        "warning: a.env:1: BASTION_HOST is not a variable this tool reads; did you mean \
         BASTION_HOST_IP?\n"
    );
}

#[test]
fn fail_unreadable_secret_line_exits_2_without_the_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.env"),
        "BASTION_HOST_IP=1.2.3.4\nREDIS_PASSWORD=\"Sup3r\\zS3cret\"\n",
    )
    .unwrap();
    let out = xtask(dir.path(), &["--env-file", "bad.env", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: bad.env:2: REDIS_PASSWORD: \\z is not a valid escape inside double quotes: write \
         the value in single quotes, or escape the backslash as \\\\\n"
    );
    let out = xtask(dir.path(), &["--env-file", "bad.env", "env", "--json"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let all = stdout(&out) + &stderr(&out);
    assert!(!all.contains("Sup3r") && !all.contains("S3cret"), "{all}");
}

#[test]
fn dollar_replaced_by_nothing_warns_without_the_value() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), "REDIS_PASSWORD=abc$NOPE\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "a.env", "env"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "warning: a.env:1: REDIS_PASSWORD has a `$` that dotenv read as a reference to a \
         variable that is not defined and replaced by nothing, so the value used is not the one \
         written: for a literal `$` put the value in single quotes\n"
    );
}

#[test]
fn wrong_case_warns_and_unknown_secret_looking_values_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), "redis_password=x9a\nREDIS_PASWORD=x9b\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "a.env", "env"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "warning: a.env:1: redis_password is not a variable this tool reads; did you mean \
         REDIS_PASSWORD (names are case-sensitive)?\n\
         warning: a.env:2: REDIS_PASWORD is not a variable this tool reads; did you mean \
         REDIS_PASSWORD?\n"
    );
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("REDIS_PASWORD ")).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["REDIS_PASWORD", "***", "a.env:2", "(passed", "to", "services)"]
    );
    assert!(!text.contains("x9"), "{text}");
}

#[test]
fn fail_duplicate_port_names_the_flags_that_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--set",
        "ELASTICACHE_ENDPOINT=c.example",
        "--set",
        "REDIS_TUNNEL_PORT=41517",
        "--set",
        "TUNNEL_EXTRA_FORWARDS=41517:reader.example:6380",
        "env",
    ];
    let out = xtask(dir.path(), &args, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: flag: forwards `redis` (--set REDIS_TUNNEL_PORT) and `extra-41517` (--set \
         TUNNEL_EXTRA_FORWARDS) both use local port 41517: give each its own port\n"
    );
}

#[test]
fn env_example_loads_without_errors_or_warnings() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env.example");
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(dir.path(), &["--env-file", example, "env"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn bad_set_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(dir.path(), &["--set", "NOEQUALS", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`NOEQUALS` is not NAME=VALUE"), "{}", stderr(&out));
}

/// What bash offers for `words` (the last one being completed) with `script` sourced, after
/// `setup`; each result on its own line.
fn bash_completes(script: &std::path::Path, setup: &str, words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "{setup}\nsource '{}' || exit 9\ncomplete -p cargo || exit 8\n\
         COMP_WORDS=({}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}\n\
         _cargo_xtask_or_cargo cargo \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" ")
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash runs: apt-get install bash");
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn bash_completions_complete_cargo_xtask_as_typed() {
    let dir = tempfile::tempdir().unwrap();
    let out = xtask(dir.path(), &["completions", "bash"], &[]);
    assert!(out.status.success());
    let script = dir.path().join("cargo-xtask.bash");
    std::fs::write(&script, &out.stdout).unwrap();

    let complete = |words: &[&str]| bash_completes(&script, "", words);
    let registered = "complete -F _cargo_xtask_or_cargo cargo\n";
    assert_eq!(complete(&["cargo", "xtask", "tun"]), format!("{registered}tunnel\n"));
    assert_eq!(
        complete(&["cargo", "xtask", "--env-file", "a.env", "tunnel", "st"]),
        format!("{registered}start\nstop\nstatus\n")
    );
    assert_eq!(
        complete(&["cargo", "xtask", "redis", "bench", "--cl"]),
        format!("{registered}--clients\n")
    );
    assert_eq!(
        complete(&["cargo", "xtask", "--color", ""]),
        format!("{registered}auto\nalways\nnever\n")
    );
    // Internal entry points are never offered.
    assert_eq!(complete(&["cargo", "xtask", "__"]), format!("{registered}\n"), "no candidates");
    let sandbox = complete(&["cargo", "xtask", "sandbox", ""]);
    assert!(sandbox.ends_with("\nup\ndown\nstatus\nhelp\n"), "{sandbox}");
    assert!(!sandbox.contains("serve"), "{sandbox}");

    // Other cargo commands stay with the completion cargo had before.
    let cargo_own = "_cargo() { COMPREPLY=(from-cargo-own); }\ncomplete -F _cargo cargo";
    assert_eq!(
        bash_completes(&script, cargo_own, &["cargo", "bu"]),
        format!("{registered}from-cargo-own\n")
    );
    assert_eq!(
        bash_completes(&script, cargo_own, &["cargo", "xtask", "doc"]),
        format!("{registered}doctor\n")
    );
}

#[test]
fn env_shows_the_effective_value_where_it_differs_from_the_written_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tls.env"),
        "ELASTICACHE_ENDPOINT=rediss://c.example\nREDIS_TUNNEL_PORT=\n",
    )
    .unwrap();
    let out = xtask(dir.path(), &["--env-file", "tls.env", "env"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |name: &str| {
        let l = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        l.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    assert_eq!(
        line("REDIS_TLS_ENABLED"),
        "REDIS_TLS_ENABLED true (from rediss:// in ELASTICACHE_ENDPOINT) tls.env:1"
    );
    assert_eq!(
        line("REDIS_TUNNEL_PORT"),
        "REDIS_TUNNEL_PORT 6379 (default: the value is empty) tls.env:2"
    );
    assert_eq!(
        line("USE_SSH_TUNNEL_FOR_REDIS"),
        "USE_SSH_TUNNEL_FOR_REDIS false (BASTION_HOST_IP is not set) default"
    );

    let out = xtask(dir.path(), &["--env-file", "tls.env", "env", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let var = |name: &str| {
        json["variables"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap().clone()
    };
    let tls = var("REDIS_TLS_ENABLED");
    assert_eq!(
        (&tls["value"], &tls["note"]),
        (&"true".into(), &"from rediss:// in ELASTICACHE_ENDPOINT".into())
    );
    let port = var("REDIS_TUNNEL_PORT");
    assert_eq!(
        (&port["value"], &port["note"]),
        (&"6379".into(), &"default: the value is empty".into())
    );
    assert_eq!(port["source"]["line"], 2);
}

#[test]
fn env_shows_what_a_host_alias_in_an_included_ssh_config_gives_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join(".ssh");
    std::fs::create_dir_all(ssh.join("config.d")).unwrap();
    std::fs::write(ssh.join("config"), "Include config.d/*\n").unwrap();
    std::fs::write(
        ssh.join("config.d/work"),
        "Host bastion\n    HostName 10.20.0.5\n    User ubuntu\n    Port 2222\n    \
         IdentityFile ~/.ssh/work.pem\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ssh.env"), "BASTION_HOST_IP=bastion\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "ssh.env", "env"], &[("BASTION_USER", "deploy")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    let line = |name: &str| {
        let l = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        l.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let work = ssh.join("config.d/work");
    assert_eq!(
        line("BASTION_HOST_IP"),
        "BASTION_HOST_IP 10.20.0.5 (from ~/.ssh/config.d/work Host bastion) ssh.env:1"
    );
    assert_eq!(
        line("BASTION_PORT"),
        format!("BASTION_PORT 2222 (from ~/.ssh/config.d/work Host bastion) {}:4", work.display())
    );
    // A variable that is set wins over the alias, as in the tunnel.
    assert_eq!(line("BASTION_USER"), "BASTION_USER deploy shell");
    assert_eq!(
        line("BASTION_KEY_FILE"),
        format!(
            "BASTION_KEY_FILE {} (from ~/.ssh/config.d/work Host bastion) {}:5",
            ssh.join("work.pem").display(),
            work.display()
        )
    );

    let out = xtask(dir.path(), &["--env-file", "ssh.env", "env", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let user = json["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "BASTION_USER")
        .unwrap()
        .clone();
    assert_eq!(
        (&user["value"], &user["note"]),
        (&"ubuntu".into(), &"from ~/.ssh/config.d/work Host bastion".into())
    );
    assert_eq!((&user["source"]["kind"], &user["source"]["line"]), (&"file".into(), &3.into()));
}

#[test]
fn env_warns_about_an_ssh_config_include_loop_and_still_shows_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("config"), "Include config\n").unwrap();
    std::fs::write(dir.path().join("ssh.env"), "BASTION_HOST_IP=bastion\n").unwrap();
    let out = xtask(dir.path(), &["--env-file", "ssh.env", "env"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = ssh.join("config");
    assert_eq!(
        stderr(&out),
        format!(
            "warning: {0}:1: `Include` of {0} nests more than 16 files deep (does a file \
             include itself?): break the loop in your ssh config\n",
            config.display()
        )
    );
    assert!(stdout(&out).lines().any(|l| l.starts_with("BASTION_USER ") && l.contains("ec2-user")));
}

#[test]
fn tunnel_start_with_an_ssh_config_include_loop_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("config"), "Host bastion\n    Include config\n").unwrap();
    // The alias is resolved before any port is bound; a free one keeps a regression quick.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("ssh.env"),
        format!(
            "BASTION_HOST_IP=bastion\nELASTICACHE_ENDPOINT=c.example\nREDIS_TUNNEL_PORT={port}\n"
        ),
    )
    .unwrap();
    let out = xtask(dir.path(), &["--env-file", "ssh.env", "tunnel", "start"], &[]);
    let config = ssh.join("config");
    assert_eq!(
        stderr(&out),
        format!(
            "error: {0}:2: `Include` of {0} nests more than 16 files deep (does a file include \
             itself?): break the loop in your ssh config\n",
            config.display()
        )
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn env_with_an_invalid_value_still_shows_the_table_then_the_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.env"),
        "BASTION_HOST_IP=\nELASTICACHE_ENDPOINT=c.example\nREDIS_PASSWORD=hunter2\n",
    )
    .unwrap();
    let out = xtask(dir.path(), &["--env-file", "bad.env", "env"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("ELASTICACHE_ENDPOINT ")), "{text}");
    assert!(text.contains("***") && !text.contains("hunter2"), "{text}");
    assert!(stderr(&out).contains("bad.env:1: BASTION_HOST_IP is empty"), "{}", stderr(&out));

    let out = xtask(dir.path(), &["--env-file", "bad.env", "--json", "env"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["errors"][0]["var"], "BASTION_HOST_IP", "{json}");
    assert!(json["variables"].as_array().unwrap().len() > 5, "{json}");
}
