//! `cargo xtask env`: every effective variable, its value and its source.

use crate::context::Context;
use crate::output::{table, BOLD, DIM};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct EnvArgs {
    /// Also list variables that are unset and have no default.
    #[arg(long)]
    all: bool,
}

pub fn run(args: EnvArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let config = ctx.config()?;
    let rows = config.rows();

    if ctx.out.json {
        let report = serde_json::json!({
            "files": config.files,
            "variables": rows,
            "warnings": config.warnings,
        });
        ctx.out.json(&report)?;
        return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}
