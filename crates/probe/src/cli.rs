//! A `redis-cli` command aimed at the same target as the checks, the password passed through
//! `REDISCLI_AUTH` so it never shows in `ps`.

use std::process::Command;

use crate::target::{Route, Target, TlsMode};

/// `redis-cli` set up for `target`: host and port of the forward (or the endpoint), the ACL
/// user, TLS with SNI as the endpoint's name, and the password in the environment only.
/// Append the command's own arguments to it.
pub fn redis_cli(program: &std::path::Path, target: &Target) -> Command {
    let mut command = Command::new(program);
    let (host, port) = match &target.route {
        Route::Direct => (target.host.clone(), target.port),
        Route::Forward(addr) => (addr.ip().to_string(), addr.port()),
    };
    command.args(["-h", &host, "-p", &port.to_string()]);
    match &target.tls {
        TlsMode::Off => {}
        TlsMode::Verify { ca_cert } => {
            command.args(["--tls", "--sni", &target.host]);
            if let Some(ca_cert) = ca_cert {
                command.arg("--cacert").arg(ca_cert);
            }
        }
        TlsMode::Insecure => {
            command.args(["--tls", "--sni", &target.host, "--insecure"]);
        }
    }
    if let Some(user) = &target.username {
        command.args(["--user", user]);
    }
    match &target.password {
        Some(password) => command.env("REDISCLI_AUTH", password.expose()),
        None => command.env_remove("REDISCLI_AUTH"),
    };
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_config::Secret;
    use std::path::{Path, PathBuf};

    #[test]
    fn the_password_goes_to_the_environment_never_to_argv() {
        let target = Target::new("cache.example.com", 6379)
            .via("127.0.0.1:6380".parse().unwrap())
            .user("app")
            .password(Secret::new("hunter2"))
            .tls(TlsMode::Verify { ca_cert: Some(PathBuf::from("/etc/ca.pem")) });
        let command = redis_cli(Path::new("redis-cli"), &target);
        let argv: Vec<_> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            argv,
            [
                "-h",
                "127.0.0.1",
                "-p",
                "6380",
                "--tls",
                "--sni",
                "cache.example.com",
                "--cacert",
                "/etc/ca.pem",
                "--user",
                "app"
            ]
        );
        let auth = command.get_envs().find(|(k, _)| *k == "REDISCLI_AUTH").and_then(|(_, v)| v);
        assert_eq!(auth, Some(std::ffi::OsStr::new("hunter2")));
    }
}
