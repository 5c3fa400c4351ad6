//! Services: the manifest loads and validates, every working directory and
//! env file exists, every command resolves, every service port is free.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mesh_supervisor::{check_paths, Manifest, DEFAULT_MANIFEST_FILE};

use crate::checks::{port, tools};
use crate::env::{install_hint, Env};
use crate::{Category, CategoryReport, Check};

pub(crate) async fn check(env: &Env<'_>) -> CategoryReport {
    if env.stand_ins() {
        let why = "not checked: the sandbox runs its own stand-in services";
        return CategoryReport::skipped(Category::Services, why);
    }
    if !env.options.services {
        return CategoryReport::skipped(Category::Services, "not checked: services will not run");
    }
    let started = Instant::now();
    let path = manifest_path(env);
    let manifest = match load(env, &path) {
        Ok(manifest) => manifest,
        Err(check) => {
            let mut check = (*check).took(started.elapsed());
            if env.sandbox_config() {
                // The sandbox's env file without --sandbox: the real services would run.
                let fix = check.fix.take().unwrap_or_default();
                check.fix = Some(format!(
                    "{fix}; for the sandbox's stand-in services run `cargo xtask dev --sandbox`, \
                     or leave services out with --no-services"
                ));
            }
            return CategoryReport::new(
                Category::Services,
                "the manifest cannot be used",
                vec![check],
            );
        }
    };
    let names: Vec<&str> = manifest.services().iter().map(|s| s.name.as_str()).collect();
    let mut checks =
        vec![Check::ok("manifest", format!("{} ({})", env.show(&path), names.join(", ")))];
    if let Err(error) = check_paths(&manifest) {
        checks.push(Check::fail("paths", error.to_string(), "see the message"));
    }
    checks.extend(programs(env, &manifest));
    checks.extend(ports(&manifest));
    let checks = checks.into_iter().map(|c| c.took(started.elapsed())).collect();
    let summary = format!("{} services: {}", names.len(), names.join(", "));
    CategoryReport::new(Category::Services, summary, checks)
}

pub(crate) fn manifest_path(env: &Env<'_>) -> PathBuf {
    env.options.manifest.clone().unwrap_or_else(|| env.root.join(DEFAULT_MANIFEST_FILE))
}

fn load(env: &Env<'_>, path: &Path) -> Result<Manifest, Box<Check>> {
    if !path.is_file() {
        let message = format!("no service manifest at {}", env.show(path));
        let fix = "restore services.toml from git, or run `dev --no-services`";
        return Err(Box::new(Check::fail("manifest", message, fix)));
    }
    Manifest::load(path, &env.child_env).map_err(|e| {
        Box::new(Check::fail("manifest", e.to_string(), "correct the manifest as the message says"))
    })
}

/// Each program the manifest runs must resolve on PATH (or exist, when given as a path).
fn programs(env: &Env<'_>, manifest: &Manifest) -> Vec<Check> {
    manifest
        .required_programs()
        .into_iter()
        .map(|program| {
            let name = format!("command `{program}`");
            let found = if program.contains('/') {
                let path = Path::new(&program);
                path.is_file().then(|| path.to_path_buf())
            } else {
                env.which(&program)
            };
            match found {
                Some(path) => Check::ok(name, path.display().to_string()),
                None => {
                    let message = format!("`{program}` is not on PATH; a service runs it");
                    Check::fail(name, message, install_hint(env, &program).0)
                }
            }
        })
        .collect()
}

/// Each service's port must be free on loopback, or the service fails to listen.
fn ports(manifest: &Manifest) -> Vec<Check> {
    manifest
        .services()
        .iter()
        .filter_map(|service| Some((service.name.as_str(), service.port?)))
        .map(|(name, service_port)| {
            let label = format!("port {service_port}");
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, service_port));
            match TcpListener::bind(addr) {
                Ok(_) => Check::ok(label, format!("free for {name}")),
                Err(_) => {
                    let holder = port::holder(service_port)
                        .map(|(pid, comm)| format!(" by {comm} (pid {pid})"))
                        .unwrap_or_default();
                    let message = format!("port {service_port}, which {name} listens on, is taken{holder}");
                    let fix = "stop that process (an earlier `dev` still running?), or change the port in services.toml";
                    Check::fail(label, message, fix)
                }
            }
        })
        .collect()
}

/// `None` when no service runs `go`; otherwise the highest `go` directive of
/// the services' `go.mod` files (`Some(None)` when none is found).
pub(crate) fn go_requirement(env: &Env<'_>) -> Option<Option<(u32, u32)>> {
    let path = manifest_path(env);
    let manifest = Manifest::load(&path, &env.child_env).ok()?;
    if !manifest.required_programs().contains("go") {
        return None;
    }
    let wanted = manifest
        .services()
        .iter()
        .filter(|s| s.program.argv().first().map(String::as_str) == Some("go"))
        .filter_map(|s| go_mod_version(&s.cwd))
        .max();
    Some(wanted)
}

/// The `go` directive of the nearest `go.mod` at or above `dir`.
fn go_mod_version(dir: &Path) -> Option<(u32, u32)> {
    let go_mod = dir.ancestors().map(|d| d.join("go.mod")).find(|p| p.is_file())?;
    let text = std::fs::read_to_string(go_mod).ok()?;
    text.lines()
        .find_map(|line| line.trim().strip_prefix("go "))
        .and_then(|v| tools::parse_major_minor(v.trim()))
}
