//! `cargo xtask ci`: the one command that sets up a fresh Debian machine for
//! the tests and runs them, as CI does.

use crate::context::Context;
use anyhow::{bail, Context as _};
use std::process::ExitCode;
use xshell::{cmd, Shell};

/// Debian packages the tests need, with the binary each provides.
const PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("openssl", "openssl"),
];

#[derive(clap::Args, Debug)]
pub struct CiArgs {
    /// Only install the missing packages; run no checks.
    #[arg(long)]
    setup_only: bool,
    /// Skip `cargo fmt --check` and clippy; run only the tests.
    #[arg(long)]
    tests_only: bool,
}

pub fn run(args: CiArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let sh = Shell::new()?;
    sh.change_dir(&ctx.root);
    install_missing(&sh)?;
    if args.setup_only {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.tests_only {
        cmd!(sh, "cargo fmt --all --check")
            .run()
            .context("rustfmt found unformatted code: run `cargo fmt --all`")?;
        cmd!(sh, "cargo clippy --workspace --all-targets --locked -- -D warnings")
            .run()
            .context("clippy found problems")?;
    }
    cmd!(sh, "cargo test --workspace --locked").run().context("tests failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the missing packages with apt-get when root; otherwise names the command.
fn install_missing(sh: &Shell) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(binary, _)| find_binary(binary).is_none())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let is_root = nix_is_root();
    if !is_root || which::which("apt-get").is_err() {
        bail!(
            "the tests need these packages: {list}; install them with \
             `sudo apt-get update && sudo apt-get install -y {list}` (or run this command as root)"
        );
    }
    eprintln!("installing {list} (missing; running as root)");
    cmd!(sh, "apt-get update -qq").run().context("apt-get update")?;
    cmd!(sh, "apt-get install -y -qq --no-install-recommends {missing...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("install {list}"))?;
    Ok(())
}

/// Finds a binary on PATH or in the sbin directories (sshd lives there).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    which::which(name).ok().or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/local/sbin"]
            .iter()
            .map(|dir| std::path::Path::new(dir).join(name))
            .find(|p| p.is_file())
    })
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
