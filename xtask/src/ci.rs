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
    ("ip", "iproute2"),
    ("python3", "python3"),
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
    ensure_aws_venv(&sh, &ctx.root)?;
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
    run_tests(&ctx.root)
}

/// `cargo test --workspace`, its output passed through, then one closing line
/// with the totals of every test binary (`tests: N passed, M failed`).
fn run_tests(root: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("cargo")
        .args(["test", "--workspace", "--locked"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().context("read cargo test's output")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.context("read cargo test's output")?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            passed += count_before(counts, " passed");
            failed += count_before(counts, " failed");
        }
    }
    let status = child.wait().context("wait for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        // A custom harness (`harness = false`) prints no `test result` line to count.
        bail!("tests failed (see above): cargo test exited with {status}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The number just before `label` in `ok. 12 passed; 0 failed; ...`.
fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
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
    apt_install(sh, &missing)
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

// --- AWS test tooling (the doctor's AWS tests) -------------------------------
//
// The doctor's tests run the AWS CLI against a local `moto_server`. Debian's
// AWS CLI is too old for `AWS_ENDPOINT_URL`, so both come from PyPI, pinned,
// in a virtual environment under target/ that the tests look for.

/// The pinned PyPI packages of `target/aws-venv`.
const AWS_VENV_PACKAGES: &[&str] = &["awscli==1.46.3", "moto[server]==5.2.5"];

/// Fails where Debian's `python3-venv` is missing (`ensurepip` ships in it).
const PROBE_VENV: &str = "import ensurepip, venv";

/// Creates `target/aws-venv` with the AWS CLI and moto when missing or when the
/// pins changed; installs Debian's `python3-venv` first when root and needed.
fn ensure_aws_venv(sh: &Shell, root: &std::path::Path) -> anyhow::Result<()> {
    let venv = root.join("target/aws-venv");
    let stamp = venv.join("mesh-pins.txt");
    let pins = AWS_VENV_PACKAGES.join("\n");
    let complete = ["bin/aws", "bin/moto_server"].iter().all(|b| venv.join(b).is_file());
    if complete && std::fs::read_to_string(&stamp).is_ok_and(|s| s == pins) {
        return Ok(());
    }
    if find_binary("python3").is_none() {
        apt_install(sh, &["python3", "python3-venv"])?;
    } else if cmd!(sh, "python3 -c {PROBE_VENV}").quiet().ignore_stderr().run().is_err() {
        apt_install(sh, &["python3-venv"])?;
    }
    eprintln!("creating {} with {}", venv.display(), AWS_VENV_PACKAGES.join(" "));
    cmd!(sh, "python3 -m venv --clear {venv}")
        .run()
        .with_context(|| format!("create the virtual environment {}", venv.display()))?;
    let pip = venv.join("bin/pip");
    cmd!(sh, "{pip} install --quiet --disable-pip-version-check {AWS_VENV_PACKAGES...}")
        .run()
        .context(
            "pip install the AWS CLI and moto into target/aws-venv (PyPI must be reachable)",
        )?;
    std::fs::write(&stamp, pins).with_context(|| format!("write {}", stamp.display()))?;
    Ok(())
}

/// `apt-get install` as root, or an error naming the command when not root.
fn apt_install(sh: &Shell, packages: &[&str]) -> anyhow::Result<()> {
    let list = packages.join(" ");
    if !nix_is_root() || which::which("apt-get").is_err() {
        bail!(
            "the tests need these packages: {list}; install them with \
             `sudo apt-get update && sudo apt-get install -y {list}` (or run this command as root)"
        );
    }
    eprintln!("installing {list} (missing; running as root)");
    cmd!(sh, "apt-get update -qq").run().context("apt-get update")?;
    cmd!(sh, "apt-get install -y -qq --no-install-recommends {packages...}")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("install {list}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn test_result_lines_are_counted() {
        let line =
            "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s";
        assert_eq!((count_before(line, " passed"), count_before(line, " failed")), (12, 0));
        let line = "FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!((count_before(line, " passed"), count_before(line, " failed")), (3, 2));
    }
}
