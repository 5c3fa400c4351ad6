//! Where a value came from, and the problems found in values.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// The layer a value was read from, highest precedence first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// `--set NAME=VALUE` on the command line.
    Flag,
    /// The sandbox's own configuration, which wins over the shell on purpose.
    Sandbox,
    /// The process environment.
    Shell,
    /// A dotenv file, with the line of the assignment.
    File { path: PathBuf, line: usize },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::Sandbox => f.write_str("sandbox"),
            Origin::Shell => f.write_str("shell"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A value that is wrong (an error) or works but is worth fixing (a warning).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub origin: Origin,
    /// The variable as it was written (an alias stays an alias).
    pub var: String,
    /// What is wrong and how to fix it; never contains a secret value.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}
