//! `cargo xtask doctor`: every prerequisite checked at once, one line per
//! category, each problem with its fix; `--fix` applies the safe local ones.

use crate::context::Context;
use crate::output::{paint, DIM, ERROR, WARN};
use anstyle::{AnsiColor, Style};
use anyhow::Context as _;
use mesh_doctor::{Doctor, Options, Report, Severity};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

const OK: Style = AnsiColor::Green.on_default().bold();

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Check for `dev --sandbox`: no AWS, and the sandbox's own bastion and Redis.
    #[arg(long)]
    sandbox: bool,
    /// Leave the services out: the manifest, its programs and ports do not count.
    #[arg(long)]
    no_services: bool,
    /// Apply the safe local fixes (key mode, .gitignore, .env from .env.example, apt as root).
    #[arg(long)]
    fix: bool,
    /// With --fix, never install packages.
    #[arg(long, requires = "fix")]
    no_install: bool,
    /// Only the local checks `dev` runs first: no bastion, Redis or AWS call.
    #[arg(long)]
    quick: bool,
    /// Bound each check by this long (`5s`, `1500ms`); the whole run by four times it.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

pub fn run(args: DoctorArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let report = check(&args, ctx)?;
    if !args.fix {
        show(&report, ctx);
        return Ok(ExitCode::from(report.exit_code));
    }
    let mut fixes = report.auto_fixes();
    if args.no_install {
        fixes.retain(|f| !matches!(f, mesh_doctor::Fix::AptInstall { .. }));
    }
    if fixes.is_empty() {
        show(&report, ctx);
        ctx.out.say("nothing --fix can do here; the fixes above are for you to apply");
        return Ok(ExitCode::from(report.exit_code));
    }
    if !ctx.out.json {
        eprintln!("--fix will:");
        for fix in &fixes {
            eprintln!("  - {}", fix.describe());
        }
    }
    for fix in &fixes {
        match fix.apply() {
            Ok(done) => eprintln!("{} {done}", paint(color(ctx), OK, "fixed:")),
            Err(e) => ctx.out.warn(&format!("could not fix: {e}")),
        }
    }
    let after = check(&args, ctx)?;
    show(&after, ctx);
    Ok(ExitCode::from(after.exit_code))
}

/// One doctor run, with a spinner on a terminal while the checks run.
fn check(args: &DoctorArgs, ctx: &Context) -> anyhow::Result<Report> {
    let load = ctx.load_options(ctx.global.env_files.clone(), Vec::new());
    let terminal = std::io::stderr().is_terminal() && !ctx.out.json && !ctx.out.quiet;
    let options = Options {
        sandbox: args.sandbox,
        services: !args.no_services,
        timeout: args.timeout,
        quick: args.quick,
        interactive: terminal && std::io::stdin().is_terminal(),
        ..Options::default()
    };
    let mut doctor = Doctor::new(load, options);
    doctor.ask_passphrase();
    let spinner = terminal.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("checking prerequisites...");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let report = mesh_doctor::run_blocking(&doctor).context("start the doctor's runtime");
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    report
}

fn color(ctx: &Context) -> bool {
    ctx.out.color
}

fn style(severity: Severity) -> Style {
    match severity {
        Severity::Skip => DIM,
        Severity::Ok => OK,
        Severity::Warn => WARN,
        Severity::Fail => ERROR,
    }
}

/// One line per category; under it each problem and its fix, or with `-v` every check.
fn show(report: &Report, ctx: &Context) {
    if ctx.out.json {
        if let Err(e) = ctx.out.json(report) {
            ctx.out.warn(&format!("cannot print the report as JSON: {e}"));
        }
        return;
    }
    if ctx.out.quiet && report.ok {
        return;
    }
    print!("{}", render(report, ctx.global.verbose > 0, color(ctx)));
}

/// The report as people read it.
pub fn render(report: &Report, verbose: bool, color: bool) -> String {
    let width = report.categories.iter().map(|c| c.title.len()).max().unwrap_or(0);
    let mut out = String::new();
    for category in &report.categories {
        let mark = paint(color, style(category.severity), category.severity.mark());
        let title = format!("{:width$}", category.title);
        let mut line = format!("{mark} {title}  {}", category.summary);
        if verbose {
            line.push_str(&paint(color, DIM, &format!("  ({} ms)", category.elapsed.as_millis())));
        }
        out.push_str(line.trim_end());
        out.push('\n');
        let shown: Vec<_> =
            if verbose { category.checks.iter().collect() } else { category.problems().collect() };
        if shown.len() == 1 && category.checks.len() == 1 && shown[0].severity == Severity::Skip {
            continue;
        }
        for check in shown {
            let symbol = paint(color, style(check.severity), check.severity.symbol());
            let mut line = format!("    {symbol} {}: {}", check.name, check.message);
            if verbose {
                line.push_str(&paint(color, DIM, &format!("  ({} ms)", check.elapsed.as_millis())));
            }
            out.push_str(&line);
            out.push('\n');
            if let Some(fix) = &check.fix {
                let auto = if check.auto_fix.is_some() { " (--fix does this)" } else { "" };
                out.push_str(&format!("      fix: {fix}{auto}\n"));
            }
        }
    }
    out.push_str(&footer(report));
    out
}

fn footer(report: &Report) -> String {
    let count = |s: Severity| report.checks().filter(|(_, c)| c.severity == s).count();
    let (fails, warns) = (count(Severity::Fail), count(Severity::Warn));
    let secs = report.elapsed.as_secs_f32();
    match (fails, warns) {
        (0, 0) => format!("\nall good ({secs:.1}s)\n"),
        (0, w) => format!("\nready; {w} thing(s) worth fixing ({secs:.1}s)\n"),
        (f, w) => format!("\n{f} problem(s) block the workflow, {w} worth fixing ({secs:.1}s)\n"),
    }
}

/// `5`, `5s`, `1500ms`, `0.5s`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let bad = || format!("`{raw}` is not a duration: write it as 5s or 1500ms");
    let (number, scale) = if let Some(ms) = raw.strip_suffix("ms") {
        (ms, 0.001)
    } else {
        (raw.strip_suffix('s').unwrap_or(raw), 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = value * scale;
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err(format!("`{raw}` is out of range: use a duration above 0, up to 600s"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_doctor::{Category, CategoryReport, Check, Fix};

    fn sample() -> Report {
        let key = Check::fail("mode", "/k has mode 0644: others can read it", "chmod 600 /k")
            .with_auto_fix(Fix::KeyMode { path: "/k".into() });
        let categories = vec![
            CategoryReport::new(
                Category::Tools,
                "redis-cli 7.0.15",
                vec![Check::ok("redis-cli", "7.0.15")],
            ),
            CategoryReport::new(Category::SshKey, "/k", vec![Check::ok("type", "ed25519"), key]),
            CategoryReport::skipped(Category::Aws, "not checked: the sandbox needs no AWS"),
        ];
        Report::new(categories, Duration::from_millis(1200))
    }

    #[test]
    fn report_shows_one_line_per_category_and_each_problem_with_its_fix() {
        assert_eq!(
            render(&sample(), false, false),
            "\
[✓] Tools    redis-cli 7.0.15
[✗] SSH key  /k
    ✗ mode: /k has mode 0644: others can read it
      fix: chmod 600 /k (--fix does this)
[-] AWS      not checked: the sandbox needs no AWS

1 problem(s) block the workflow, 0 worth fixing (1.2s)
"
        );
    }

    #[test]
    fn verbose_report_shows_every_check() {
        let text = render(&sample(), true, false);
        assert!(text.contains("    ✓ redis-cli: 7.0.15  (0 ms)\n"), "{text}");
        assert!(text.contains("    ✓ type: ed25519  (0 ms)\n"), "{text}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        let range =
            |raw: &str| format!("`{raw}` is out of range: use a duration above 0, up to 600s");
        assert_eq!(parse_duration("0"), Err(range("0")));
        assert_eq!(parse_duration("0ms"), Err(range("0ms")));
        assert_eq!(
            parse_duration("1h"),
            Err("`1h` is not a duration: write it as 5s or 1500ms".into())
        );
        assert_eq!(parse_duration("601s"), Err(range("601s")));
    }
}
