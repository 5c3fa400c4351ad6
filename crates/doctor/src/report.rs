//! What the doctor found: one result per check, grouped by category, each with
//! its severity and its fix, and the whole report as it serializes for `--json`.

use serde::{Serialize, Serializer};
use std::time::Duration;

use crate::fix::Fix;

/// How bad a finding is. Ordered so the worst of a category is its `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Not run: not needed for the workflow at hand, or blocked by another check.
    Skip,
    /// Works.
    Ok,
    /// Works, but worth fixing (`[!]`).
    Warn,
    /// Will not work: blocks the workflow at hand (`[✗]`).
    Fail,
}

impl Severity {
    /// The bracketed mark of a category line.
    pub fn mark(self) -> &'static str {
        match self {
            Severity::Skip => "[-]",
            Severity::Ok => "[✓]",
            Severity::Warn => "[!]",
            Severity::Fail => "[✗]",
        }
    }

    /// The bare symbol of a check line.
    pub fn symbol(self) -> &'static str {
        match self {
            Severity::Skip => "-",
            Severity::Ok => "✓",
            Severity::Warn => "!",
            Severity::Fail => "✗",
        }
    }
}

/// The groups a report is shown in, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Configuration,
    Tools,
    SshKey,
    Aws,
    Bastion,
    Tunnel,
    Redis,
    Services,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Configuration,
        Category::Tools,
        Category::SshKey,
        Category::Aws,
        Category::Bastion,
        Category::Tunnel,
        Category::Redis,
        Category::Services,
    ];

    /// The name shown to people.
    pub fn title(self) -> &'static str {
        match self {
            Category::Configuration => "Configuration",
            Category::Tools => "Tools",
            Category::SshKey => "SSH key",
            Category::Aws => "AWS",
            Category::Bastion => "Bastion",
            Category::Tunnel => "Tunnel",
            Category::Redis => "Redis",
            Category::Services => "Services",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked, short: `redis-cli`, `mode`, `host key`.
    pub name: String,
    pub severity: Severity,
    /// What was found (`7.0.15`, `mode 0600`), or for `[!]`/`[✗]` what is wrong.
    pub message: String,
    /// The exact next step, for `[!]` and `[✗]`.
    pub fix: Option<String>,
    /// A safe local fix `--fix` can apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_fix: Option<Fix>,
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
}

impl Check {
    fn new(name: impl Into<String>, severity: Severity, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            severity,
            message: message.into(),
            fix: None,
            auto_fix: None,
            elapsed: Duration::ZERO,
        }
    }

    pub fn ok(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Severity::Ok, message)
    }

    pub fn skip(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Severity::Skip, message)
    }

    pub fn warn(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Severity::Warn, message).with_fix(fix)
    }

    pub fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(name, Severity::Fail, message).with_fix(fix)
    }

    /// A problem whose severity depends on the workflow: `[✗]` when it blocks it.
    pub fn problem(
        blocks: bool,
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        let severity = if blocks { Severity::Fail } else { Severity::Warn };
        Check::new(name, severity, message).with_fix(fix)
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Check {
        let fix = fix.into();
        self.fix = (!fix.is_empty()).then_some(fix);
        self
    }

    pub fn with_auto_fix(mut self, fix: Fix) -> Check {
        self.auto_fix = Some(fix);
        self
    }

    pub fn took(mut self, elapsed: Duration) -> Check {
        self.elapsed = elapsed;
        self
    }
}

/// The checks of one category, with a one-line summary for the category line.
#[derive(Clone, Debug, Serialize)]
pub struct CategoryReport {
    pub category: Category,
    pub title: &'static str,
    /// The worst severity of its checks (`skip` when none ran).
    pub severity: Severity,
    /// What the category line shows after the title.
    pub summary: String,
    pub checks: Vec<Check>,
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
}

impl CategoryReport {
    pub fn new(category: Category, summary: impl Into<String>, checks: Vec<Check>) -> Self {
        let severity = checks.iter().map(|c| c.severity).max().unwrap_or(Severity::Skip);
        CategoryReport {
            category,
            title: category.title(),
            severity,
            summary: summary.into(),
            checks,
            elapsed: Duration::ZERO,
        }
    }

    /// A category that did not run at all, with the reason.
    pub fn skipped(category: Category, why: impl Into<String>) -> Self {
        let why = why.into();
        CategoryReport::new(category, why.clone(), vec![Check::skip(category.title(), why)])
    }

    /// The checks that need attention (`[!]` and `[✗]`).
    pub fn problems(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.severity >= Severity::Warn)
    }
}

/// Everything one doctor run found.
#[derive(Serialize)]
pub struct Report {
    /// True when nothing is `[✗]`.
    pub ok: bool,
    /// 0 without a `[✗]`, 1 otherwise.
    pub exit_code: u8,
    pub categories: Vec<CategoryReport>,
    #[serde(rename = "elapsed_ms", serialize_with = "millis")]
    pub elapsed: Duration,
    /// The bastion session the doctor opened or was given, for `dev` to reuse.
    #[serde(skip)]
    pub session: Option<crate::SharedSession>,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("ok", &self.ok)
            .field("categories", &self.categories)
            .field("session", &self.session.is_some())
            .finish()
    }
}

impl Report {
    pub fn new(mut categories: Vec<CategoryReport>, elapsed: Duration) -> Report {
        categories.sort_by_key(|c| c.category);
        let ok = categories.iter().all(|c| c.severity != Severity::Fail);
        Report { ok, exit_code: if ok { 0 } else { 1 }, categories, elapsed, session: None }
    }

    pub fn category(&self, category: Category) -> Option<&CategoryReport> {
        self.categories.iter().find(|c| c.category == category)
    }

    /// Every check, with its category.
    pub fn checks(&self) -> impl Iterator<Item = (Category, &Check)> {
        self.categories.iter().flat_map(|c| c.checks.iter().map(move |k| (c.category, k)))
    }

    /// The fixes `--fix` may apply, in order, without duplicates.
    pub fn auto_fixes(&self) -> Vec<Fix> {
        let mut fixes: Vec<Fix> = Vec::new();
        for (_, check) in self.checks() {
            if let Some(fix) = &check.auto_fix {
                if !fixes.contains(fix) {
                    fixes.push(fix.clone());
                }
            }
        }
        Fix::merge_installs(fixes)
    }
}

fn millis<S: Serializer>(elapsed: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(elapsed.as_millis() as u64)
}
