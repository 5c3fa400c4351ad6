//! What can go wrong while bringing the sandbox up, each error naming the
//! file, port or program involved and the next step.

use std::path::PathBuf;

/// Errors of the sandbox library.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not bind {host}:{port}: {source}; free the port or pick another one")]
    Bind {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },

    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not write the key `{}`: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: russh::keys::ssh_key::Error,
    },

    #[error("openssl could not {step} ({status}): {stderr}")]
    Openssl { step: &'static str, status: String, stderr: String },

    #[error(
        "`openssl` is not installed; the sandbox needs it to make its TLS certificates: \
         install it with `{install}` and retry"
    )]
    OpensslMissing { install: String },

    #[error("the operating system gave no random bytes: {0}")]
    Random(String),

    #[error(
        "`apt-get install -y redis-server redis-tools` failed ({status}); run it by hand and retry"
    )]
    RedisInstall { status: String },

    #[error("`redis-server` is not installed; install it with `{install}` and retry")]
    RedisMissing { install: String },

    #[error(
        "redis-server on 127.0.0.1:{port} was not ready after {waited_ms} ms; see `{}`",
        log.display()
    )]
    RedisNotReady { port: u16, waited_ms: u128, log: PathBuf },

    #[error(
        "redis-server on 127.0.0.1:{port} exited at start ({status}); its log `{}` ends with: {tail}",
        log.display()
    )]
    RedisExited { port: u16, status: String, log: PathBuf, tail: String },

    #[error(
        "the background sandbox exited at start ({status}); its log `{}` ends with: {tail}",
        log.display()
    )]
    ServeExited { status: String, log: PathBuf, tail: String },

    #[error(
        "the background sandbox was not up after {waited_s} s; see its log `{}`",
        log.display()
    )]
    ServeTimeout { waited_s: u64, log: PathBuf },

    #[error("could not start `{}`: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SandboxError::Io { action, path: path.into(), source }
    }
}
