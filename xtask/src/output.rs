//! Presentation for people: colour only on a terminal (and never with
//! `NO_COLOR`), aligned tables, and the error and warning prefixes.

use anstyle::{AnsiColor, Style};
use std::io::IsTerminal;

/// When to colour output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

/// How the current command presents its results.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub color: bool,
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    pub fn new(choice: ColorChoice, json: bool, quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => !no_color && std::io::stdout().is_terminal(),
        };
        Output { color, json, quiet }
    }

    /// Wraps `text` in a style when colour is on.
    pub fn paint(&self, style: Style, text: &str) -> String {
        paint(self.color, style, text)
    }

    /// A warning on stderr (still shown with `--json`, never with `-q`).
    pub fn warn(&self, text: &str) {
        if !self.quiet {
            eprintln!("{} {text}", paint(self.color, WARN, "warning:"));
        }
    }

    /// A line on stdout for people; suppressed with `--json` and `-q`.
    pub fn say(&self, text: &str) {
        if !self.quiet && !self.json {
            print_line(text);
        }
    }

    /// Prints a value as pretty JSON on stdout.
    pub fn json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        print_line(&serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// A line on stdout. A reader that went away (`| head`) is not our failure:
/// the line is dropped instead of panicking, so a running `dev` still stops
/// its services cleanly.
pub fn print_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub const ERROR: Style = AnsiColor::Red.on_default().bold();
pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
pub const DIM: Style = Style::new().dimmed();
pub const BOLD: Style = Style::new().bold();

pub fn paint(color: bool, style: Style, text: &str) -> String {
    if color {
        format!("{style}{text}{style:#}")
    } else {
        text.to_string()
    }
}

/// `error: ...` on stderr; each further line of the message indented under it.
pub fn error_line(color: bool, message: &str) {
    let color = color && std::io::stderr().is_terminal();
    let prefix = paint(color, ERROR, "error:");
    let mut lines = message.lines();
    eprintln!("{prefix} {}", lines.next().unwrap_or_default());
    for line in lines {
        eprintln!("       {line}");
    }
}

/// Left-aligned columns padded to the widest cell of each column.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| visible_len(s)).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - visible_len(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Length of a cell as displayed, ignoring ANSI escapes.
fn visible_len(s: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}
