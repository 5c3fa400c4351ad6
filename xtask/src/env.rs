//! `cargo xtask env`: every effective variable, its value and its source.

use crate::context::Context;
use crate::output::{table, BOLD, DIM};
use mesh_config::{Config, ConfigError, Finding, Origin, Row};
use mesh_tunnel::ssh_config::Key;
use std::path::Path;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct EnvArgs {
    /// Also list variables that are unset and have no default.
    #[arg(long)]
    all: bool,
}

pub fn run(args: EnvArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    // An invalid value still shows the table (the diagnostic command must not refuse to
    // diagnose); the errors follow it, and the exit code is a configuration error's.
    let (config, errors) = match ctx.config() {
        Ok(config) => (config, Vec::new()),
        Err(e) => match e.downcast::<ConfigError>() {
            Ok(ConfigError::Invalid { findings, partial }) => (*partial, findings),
            Ok(other) => return Err(other.into()),
            Err(e) => return Err(e),
        },
    };
    let mut rows = config.rows();
    if let Err(e) = apply_ssh_alias(&config, &mut rows) {
        ctx.out.warn(&format!("{e:#}"));
    }

    if ctx.out.json {
        let report = serde_json::json!({
            "files": config.files,
            "variables": rows,
            "warnings": config.warnings,
            "errors": errors,
        });
        ctx.out.json(&report)?;
        return Ok(exit_code(&errors));
    }

    let files: Vec<String> = config.files.iter().map(|p| p.display().to_string()).collect();
    let read = if files.is_empty() { "no env file found".to_string() } else { files.join(", ") };
    ctx.out.say(&ctx.out.paint(DIM, &format!("read: {read}")));

    let mut lines = vec![["NAME", "VALUE", "SOURCE"].map(|h| ctx.out.paint(BOLD, h)).to_vec()];
    for row in rows.iter().filter(|r| args.all || r.value.is_some()) {
        let mut value = row.value.clone().unwrap_or_else(|| ctx.out.paint(DIM, "(unset)"));
        if let Some(note) = &row.note {
            value = format!("{value} {}", ctx.out.paint(DIM, &format!("({note})")))
                .trim_start()
                .to_string();
        }
        let mut source = row.source.as_ref().map_or_else(String::new, ToString::to_string);
        if let Some(alias) = &row.alias_used {
            source.push_str(&format!(" (as {alias})"));
        }
        if !row.documented {
            source.push_str(" (passed to services)");
        }
        lines.push(vec![row.name.clone(), value, source]);
    }
    ctx.out.say(table(&lines).trim_end());
    for error in &errors {
        crate::output::error_line(ctx.out.color, &error.to_string());
    }
    Ok(exit_code(&errors))
}

/// 2 when a value is invalid, as for every configuration error; 0 otherwise.
fn exit_code(errors: &[Finding]) -> ExitCode {
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// Shows for the bastion's host, port, user and key the value a `Host` alias of
/// ~/.ssh/config gives the tunnel where the variables leave it unset. It asks the tunnel's
/// own spec and resolution, so it cannot disagree with what `tunnel start` dials.
fn apply_ssh_alias(config: &Config, rows: &mut [Row]) -> anyhow::Result<()> {
    if config.bastion.is_none() {
        return Ok(());
    }
    let args = crate::tunnel::StartArgs {
        detach: false,
        accept_new: false,
        allow_remote_bind: false,
        wait: 60,
    };
    let spec = crate::tunnel::spec(config, &args, Vec::new())?;
    let target = spec.resolve()?;
    let home = config.shell_var("HOME").map(Path::new);
    for (key, line) in &target.from_ssh_config {
        let (name, value) = match key {
            Key::HostName => ("BASTION_HOST_IP", target.host.clone()),
            Key::Port => ("BASTION_PORT", target.port.to_string()),
            Key::User => ("BASTION_USER", target.user.clone()),
            Key::IdentityFile => {
                let key_file = target.key_file.as_deref().unwrap_or(Path::new(""));
                ("BASTION_KEY_FILE", key_file.display().to_string())
            }
        };
        let Some(row) = rows.iter_mut().find(|r| r.name == name) else { continue };
        row.value = Some(value);
        row.note = Some(format!("from {} Host {}", tilde(&line.path, home), spec.host));
        // The host's alias itself was written where the row says; the others come from
        // the ssh config's line.
        if *key != Key::HostName {
            row.source = Some(Origin::File { path: line.path.clone(), line: line.line });
        }
    }
    Ok(())
}

/// `path` with the home directory written as `~`, for people.
fn tilde(path: &Path, home: Option<&Path>) -> String {
    match home.and_then(|home| path.strip_prefix(home).ok()) {
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}
