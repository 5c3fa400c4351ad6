//! Reading one dotenv file into ordered entries, each with the line it came from.
//!
//! Values are parsed by `dotenvy` (quotes, escapes, inline comments, multi-line
//! values); this module adds what it does not report: the line of every entry,
//! errors that say which line is wrong and how (never showing the value: it may
//! be a secret), and warnings for `$` references dotenvy replaced by nothing.

use crate::{did_you_mean, looks_secret, Finding, Origin};
use std::path::{Path, PathBuf};

/// One `NAME=value` assignment as written in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub key: String,
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// A line that cannot be read as an assignment. The message never contains the
/// line's value, which may be a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// A file's entries and the warnings about how its values were read.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub entries: Vec<FileEntry>,
    pub warnings: Vec<Finding>,
}

/// Parses dotenv text. `path` is only used to name the file in errors.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Parsed, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
    let chunks = logical_lines(&text);
    let err = |line, message: String| SyntaxError { path: path.to_path_buf(), line, message };

    let mut assignments = Vec::new();
    for chunk in &chunks {
        match chunk.kind {
            ChunkKind::Blank => {}
            ChunkKind::Unterminated(quote) => {
                return Err(err(
                    chunk.line,
                    format!(
                        "{}unbalanced quote: the {quote} opened here is never closed; \
                         close it on the same line, or escape it as \\{quote}",
                        readable_name(chunk).map(|n| format!("{n}: ")).unwrap_or_default()
                    ),
                ))
            }
            ChunkKind::Assignment => assignments.push(assignment(chunk, &err)?),
        }
    }

    // dotenvy yields one item per assignment, in order: the first error belongs to
    // the assignment after the last good one.
    let mut parsed = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok(pair) => parsed.push(pair),
            Err(_) => {
                // dotenvy's error text quotes the whole line: never show it.
                let Some(failed) = assignments.get(parsed.len()) else {
                    let line = chunks.last().map_or(1, |c| c.line);
                    return Err(err(
                        line,
                        "cannot be read as NAME=value: check the quoting".into(),
                    ));
                };
                let problem = scan_value(&failed.value_text).problem;
                return Err(err(failed.line, syntax_message(&failed.key, problem)));
            }
        }
    }

    let mut warnings = Vec::new();
    for (i, assignment) in assignments.iter().enumerate() {
        let earlier = &assignments[..i];
        let defined = |name: &str| {
            // What dotenvy looks up: the process environment, then the file's earlier keys.
            // FIXME: dotenvy reads the real process environment, not `LoadOptions::shell`,
            // so a caller passing its own shell still gets the process's values in `$NAME`
            // (the same thing for the CLI, which passes `std::env::vars()`); fixing it means
            // doing the substitution ourselves instead of dotenvy.
            std::env::var(name).is_ok() || earlier.iter().any(|a| a.key == name)
        };
        let refs = scan_value(&assignment.value_text).refs;
        if let Some(message) = reference_warning(&assignment.key, &refs, defined) {
            let origin = Origin::File { path: path.to_path_buf(), line: assignment.line };
            warnings.push(Finding { origin, var: assignment.key.clone(), message });
        }
    }

    let entries = parsed
        .into_iter()
        .zip(assignments)
        .map(|((key, value), a)| FileEntry { key, value, line: a.line })
        .collect();
    Ok(Parsed { entries, warnings })
}

/// An assignment's name, line and the value text as dotenvy reads it.
struct Assignment {
    key: String,
    line: usize,
    value_text: String,
}

/// Checks the part before `=` and splits the assignment.
fn assignment(
    chunk: &Chunk,
    err: &dyn Fn(usize, String) -> SyntaxError,
) -> Result<Assignment, SyntaxError> {
    let body = strip_export(&chunk.text[..chunk.comment.unwrap_or(chunk.text.len())]);
    let Some((key, value)) = body.split_once('=') else {
        let word = body.split_whitespace().next().unwrap_or(body);
        let message = if shows_safely(word) {
            format!("`{word}` has no `=`: write it as `{word}=value`, or comment it out with `#`")
        } else {
            "this line has no `=`: write it as `NAME=value`, or comment it out with `#` \
             (its text is not shown: it may be a secret)"
                .to_string()
        };
        return Err(err(chunk.line, message));
    };
    let key = key.trim_end();
    if !valid_name(key) {
        let fix = "use letters, digits and `_`, like `REDIS_TUNNEL_PORT=6379`";
        let message = if shows_safely(key) {
            format!("`{key}` is not a variable name: {fix}")
        } else {
            format!(
                "the text before `=` is not a variable name: {fix} (not shown: it may be a secret)"
            )
        };
        return Err(err(chunk.line, message));
    }
    let value_text = value.trim().to_string();
    Ok(Assignment { key: key.to_string(), line: chunk.line, value_text })
}

fn strip_export(text: &str) -> &str {
    let body = text.trim_start();
    body.strip_prefix("export ").map(str::trim_start).unwrap_or(body)
}

fn valid_name(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The variable name of a chunk, when the part before `=` is one.
fn readable_name(chunk: &Chunk) -> Option<&str> {
    let (key, _) = strip_export(&chunk.text).split_once('=')?;
    Some(key.trim_end()).filter(|k| valid_name(k))
}

/// Text where a name should be is shown only when it reads as one: short, made of
/// name-like characters, and upper case or close to a variable we know. A bare word
/// or a long run may be a pasted password, key or base64 line.
fn shows_safely(text: &str) -> bool {
    let charset = text.chars().all(|c| c.is_ascii_alphanumeric() || "_.- ".contains(c));
    let normalized = text.to_ascii_uppercase().replace([' ', '-', '.'], "_");
    let known = crate::vars::lookup(&normalized).is_some() || did_you_mean(&normalized).is_some();
    text.len() <= 40 && charset && (!text.chars().any(|c| c.is_ascii_lowercase()) || known)
}

/// What went wrong in a value dotenvy refused, and the fix, without the value.
fn syntax_message(key: &str, problem: Option<Problem>) -> String {
    let backslash = "write the value in single quotes, or escape the backslash as \\\\";
    match problem {
        Some(Problem::BadEscape { escaped: '\n', quoted: _ }) => {
            format!("{key}: a backslash at the end of a line is not a valid escape: {backslash}")
        }
        Some(Problem::BadEscape { escaped, quoted: true }) => {
            format!("{key}: \\{escaped} is not a valid escape inside double quotes: {backslash}")
        }
        Some(Problem::BadEscape { escaped, quoted: false }) => {
            format!("{key}: \\{escaped} is not a valid escape: {backslash}")
        }
        Some(Problem::UnquotedSpace) => format!(
            "{key}: the value has spaces but no quotes: wrap it in double quotes (or in single \
             quotes to keep `$` and `\\` as written)"
        ),
        Some(Problem::Unclosed { quote, after_reference: true }) => format!(
            "{key}: the {quote} right after a `$NAME` reference is read as part of the value, so \
             the quotes do not balance: write the value in single quotes, or escape the `$` as \
             \\$ (for a variable, write ${{NAME}})"
        ),
        Some(Problem::Unclosed { quote, after_reference: false }) => format!(
            "{key}: unbalanced quote: the {quote} opened here is never closed; close it on the \
             same line, or escape it as \\{quote}"
        ),
        Some(Problem::UnclosedBrace) => format!(
            "{key}: a `${{` is never closed with `}}`: close it, or write the value in single \
             quotes for a literal `$`"
        ),
        None => format!(
            "{key}: the value cannot be read: check its quotes and backslashes (single quotes \
             keep every character as written)"
        ),
    }
}

/// The warning for `$` references dotenvy replaced by nothing, or read with a
/// shorter name than written. For a secret, neither the value nor the names in
/// it are shown.
fn reference_warning(
    key: &str,
    refs: &[Reference],
    defined: impl Fn(&str) -> bool,
) -> Option<String> {
    let lost = |r: &&Reference| r.name.is_empty() || !defined(&r.name);
    let literal = "for a literal `$` put the value in single quotes";
    if looks_secret(key) {
        refs.iter().find(lost)?;
        return Some(format!(
            "{key} has a `$` that dotenv read as a reference to a variable that is not defined \
             and replaced by nothing, so the value used is not the one written: {literal}"
        ));
    }
    let reference = refs.iter().find(|r| lost(r) || !r.cut.is_empty())?;
    let name = &reference.name;
    let written = if reference.braced { format!("${{{name}}}") } else { format!("${name}") };
    let longer = format!("{name}{}", reference.cut);
    Some(match (name.is_empty(), lost(&reference), reference.cut.is_empty()) {
        (true, _, _) => {
            format!("{key} has a `$` not followed by a name, which dotenv dropped: {literal}")
        }
        (false, true, true) => format!(
            "{key} refers to `{written}`, which is not defined, so it was replaced by nothing: \
             {literal}"
        ),
        (false, true, false) => format!(
            "{key} refers to `{written}`, which is not defined, so it was replaced by nothing \
             (dotenv ends a `$NAME` at `_`: `${longer}` reads as `{written}` then `{}`): \
             {literal}, or write `${{{longer}}}` for that variable",
            reference.cut
        ),
        (false, false, _) => format!(
            "{key} refers to `${longer}`, which dotenv reads as `{written}` then `{}` (a `$NAME` \
             ends at `_`): write `${{{longer}}}` for that variable, or put the value in single \
             quotes for a literal `$`",
            reference.cut
        ),
    })
}

/// A `$NAME` or `${NAME}` dotenvy substituted.
#[derive(Debug, PartialEq, Eq)]
struct Reference {
    /// The name dotenvy looked up (empty for a lone `$`).
    name: String,
    braced: bool,
    /// For `$NAME_REST`, the `_REST` dotenvy left out of the name and kept as text.
    cut: String,
}

/// Why dotenvy refused a value.
#[derive(Debug, PartialEq, Eq)]
enum Problem {
    BadEscape { escaped: char, quoted: bool },
    UnquotedSpace,
    Unclosed { quote: char, after_reference: bool },
    UnclosedBrace,
}

/// What dotenvy does with one value, replayed to explain it.
#[derive(Debug, Default)]
struct ValueScan {
    refs: Vec<Reference>,
    problem: Option<Problem>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Substitution {
    None,
    Name,
    Braced,
}

/// Replays dotenvy 0.15's value parser (`parse_value`) step by step, recording the
/// references it substitutes and the first reason it fails. Its quirks are kept on
/// purpose: a name ends at the first character that is not a letter or digit (so
/// at `_`), and the character ending a `$NAME` is kept as text even when it is a
/// quote. The real parse is still dotenvy's; this only explains it.
fn scan_value(input: &str) -> ValueScan {
    let mut scan = ValueScan::default();
    let (mut strong, mut weak, mut escaped, mut expecting_end) = (false, false, false, false);
    let mut mode = Substitution::None;
    let mut name = String::new();
    let mut quote_eaten = false;
    for (pos, c) in input.char_indices() {
        if expecting_end {
            match c {
                ' ' | '\t' => continue,
                '#' => break,
                _ => {
                    scan.problem = Some(Problem::UnquotedSpace);
                    return scan;
                }
            }
        } else if escaped {
            if !matches!(c, '\\' | '\'' | '"' | '$' | ' ' | 'n') {
                scan.problem = Some(Problem::BadEscape { escaped: c, quoted: weak });
                return scan;
            }
            escaped = false;
        } else if strong {
            strong = c != '\'';
        } else if mode != Substitution::None {
            if c.is_alphanumeric() {
                name.push(c);
            } else if mode == Substitution::Braced {
                if c == '}' {
                    mode = Substitution::None;
                    let name = std::mem::take(&mut name);
                    scan.refs.push(Reference { name, braced: true, cut: String::new() });
                } else {
                    name.push(c);
                }
            } else if c == '{' && name.is_empty() {
                mode = Substitution::Braced;
            } else {
                let cut = if c == '_' && !name.is_empty() {
                    input[pos..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
                } else {
                    String::new()
                };
                let name = std::mem::take(&mut name);
                scan.refs.push(Reference { name, braced: false, cut });
                if c != '$' {
                    mode = Substitution::None;
                    quote_eaten |= c == '"' || c == '\'';
                }
            }
        } else if c == '$' {
            mode = Substitution::Name;
        } else if weak {
            match c {
                '"' => weak = false,
                '\\' => escaped = true,
                _ => {}
            }
        } else {
            match c {
                '\'' => strong = true,
                '"' => weak = true,
                '\\' => escaped = true,
                ' ' | '\t' => expecting_end = true,
                _ => {}
            }
        }
    }
    if mode == Substitution::Braced {
        scan.problem = Some(Problem::UnclosedBrace);
    } else if strong || weak {
        let quote = if strong { '\'' } else { '"' };
        scan.problem = Some(Problem::Unclosed { quote, after_reference: quote_eaten });
    } else if mode == Substitution::Name {
        scan.refs.push(Reference { name, braced: false, cut: String::new() });
    }
    scan
}

#[derive(Debug)]
enum ChunkKind {
    Blank,
    Assignment,
    Unterminated(char),
}

/// A logical line: one physical line, or several when a quoted value spans them.
#[derive(Debug)]
struct Chunk {
    line: usize,
    text: String,
    kind: ChunkKind,
    /// Byte offset of a trailing `# comment`, which dotenvy cuts off before parsing.
    comment: Option<usize>,
}

/// Splits text into logical lines with the same quote rules dotenvy applies: a
/// quote anywhere opens a value that runs until its matching quote, `#` after
/// whitespace starts a comment, a backslash escapes the next character.
fn logical_lines(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((index, first)) = lines.next() {
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            let text = first.to_string();
            chunks.push(Chunk { line: index + 1, text, kind: ChunkKind::Blank, comment: None });
            continue;
        }
        let mut text = first.to_string();
        let (mut open, mut comment) = open_quote(&text);
        while open.is_some() {
            let Some((_, next)) = lines.next() else { break };
            text.push('\n');
            text.push_str(next);
            (open, comment) = open_quote(&text);
        }
        let kind = open.map_or(ChunkKind::Assignment, ChunkKind::Unterminated);
        chunks.push(Chunk { line: index + 1, text, kind, comment });
    }
    chunks
}

/// The quote left open at the end of `text`, if any, and where a trailing comment starts.
fn open_quote(text: &str) -> (Option<char>, Option<usize>) {
    let mut open: Option<char> = None;
    let mut escaped = false;
    let mut after_space = true;
    for (pos, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match open {
            Some(q) if c == q => open = None,
            Some(_) if c == '\\' => escaped = true,
            Some(_) => {}
            None if c == '#' && after_space => return (None, Some(pos)),
            None if c == '\\' => escaped = true,
            None if c == '"' || c == '\'' => open = Some(c),
            None => {}
        }
        after_space = c.is_whitespace();
    }
    (open, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Parsed {
        parse(Path::new(".env"), text).unwrap()
    }

    fn entries(text: &str) -> Vec<(String, String, usize)> {
        parsed(text).entries.into_iter().map(|e| (e.key, e.value, e.line)).collect()
    }

    fn warnings(text: &str) -> Vec<String> {
        parsed(text).warnings.iter().map(ToString::to_string).collect()
    }

    fn error(text: &str) -> String {
        let e = parse(Path::new(".env"), text).unwrap_err();
        format!("{}:{}: {}", e.path.display(), e.line, e.message)
    }

    #[test]
    fn reads_quotes_comments_and_export() {
        let got = entries(
            "# top\nA=1\nexport B=\"two words\" # note\nC='x#y'\n\nD=plain # trailing\nE=\n",
        );
        assert_eq!(
            got,
            vec![
                ("A".into(), "1".into(), 2),
                ("B".into(), "two words".into(), 3),
                ("C".into(), "x#y".into(), 4),
                ("D".into(), "plain".into(), 6),
                ("E".into(), "".into(), 7),
            ]
        );
    }

    #[test]
    fn reads_crlf_and_bom_files() {
        let got = entries("\u{feff}A=1\r\nB=\"q\"\r\n");
        assert_eq!(got, vec![("A".into(), "1".into(), 1), ("B".into(), "q".into(), 2)]);
    }

    #[test]
    fn multi_line_value_keeps_following_line_numbers() {
        let got = entries("A=\"one\ntwo\"\nB=3\n");
        assert_eq!(got, vec![("A".into(), "one\ntwo".into(), 1), ("B".into(), "3".into(), 3)]);
    }

    #[test]
    fn fail_line_without_equals_names_line_and_fix() {
        assert_eq!(
            error("A=1\nBASTION_PORT 22\n"),
            ".env:2: `BASTION_PORT` has no `=`: write it as `BASTION_PORT=value`, \
             or comment it out with `#`"
        );
    }

    #[test]
    fn fail_line_without_equals_hides_a_word_that_is_not_a_name() {
        assert_eq!(
            error("A=1\nSup3rS3cret\n"),
            ".env:2: this line has no `=`: write it as `NAME=value`, or comment it out with `#` \
             (its text is not shown: it may be a secret)"
        );
    }

    #[test]
    fn fail_unbalanced_quote_names_the_opening_line() {
        assert_eq!(
            error("A=1\nREDIS_PASSWORD=\"abc\nB=2\n"),
            ".env:2: REDIS_PASSWORD: unbalanced quote: the \" opened here is never closed; \
             close it on the same line, or escape it as \\\""
        );
    }

    #[test]
    fn fail_unquoted_value_with_spaces_asks_for_quotes() {
        assert_eq!(
            error("A=1\nTUNNEL_EXTRA_FORWARDS=6381:a:6380, 6382:b:6380\n"),
            ".env:2: TUNNEL_EXTRA_FORWARDS: the value has spaces but no quotes: wrap it in \
             double quotes (or in single quotes to keep `$` and `\\` as written)"
        );
    }

    #[test]
    fn fail_bad_variable_name() {
        assert_eq!(
            error("9LIVES=1\n"),
            ".env:1: `9LIVES` is not a variable name: use letters, digits and `_`, \
             like `REDIS_TUNNEL_PORT=6379`"
        );
        assert_eq!(
            error("A=1\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC+/Sup3rS3cret==\n"),
            ".env:2: the text before `=` is not a variable name: use letters, digits and `_`, \
             like `REDIS_TUNNEL_PORT=6379` (not shown: it may be a secret)"
        );
    }

    #[test]
    fn fail_bad_escape_in_double_quotes_names_the_variable_not_the_value() {
        assert_eq!(
            error("BASTION_HOST_IP=1.2.3.4\nREDIS_PASSWORD=\"Sup3r\\zS3cret\"\n"),
            ".env:2: REDIS_PASSWORD: \\z is not a valid escape inside double quotes: write the \
             value in single quotes, or escape the backslash as \\\\"
        );
    }

    #[test]
    fn fail_bad_escape_without_quotes() {
        assert_eq!(
            error("AWS_SECRET_ACCESS_KEY=Sup3r\\qS3cret\n"),
            ".env:1: AWS_SECRET_ACCESS_KEY: \\q is not a valid escape: write the value in single \
             quotes, or escape the backslash as \\\\"
        );
    }

    #[test]
    fn fail_reference_before_the_closing_quote_explains_the_open_quote() {
        assert_eq!(
            error("REDIS_PASSWORD=\"Sup3r$S3cret\"\n"),
            ".env:1: REDIS_PASSWORD: the \" right after a `$NAME` reference is read as part of \
             the value, so the quotes do not balance: write the value in single quotes, or \
             escape the `$` as \\$ (for a variable, write ${NAME})"
        );
    }

    #[test]
    fn fail_unclosed_brace_of_a_reference() {
        assert_eq!(
            error("A=1\nMESH_ROOT=${HOME/src\n"),
            ".env:2: MESH_ROOT: a `${` is never closed with `}`: close it, or write the value in \
             single quotes for a literal `$`"
        );
    }

    #[test]
    fn no_syntax_error_shows_any_part_of_a_secret() {
        for line in [
            "REDIS_PASSWORD=\"Sup3r\\zS3cret\"",
            "REDIS_PASSWORD=Sup3r S3cret",
            "REDIS_PASSWORD=\"Sup3r$S3cret\"",
            "REDIS_PASSWORD=\"Sup3rS3cret",
            "REDIS_PASSWORD=${Sup3rS3cret",
            "Sup3rS3cret",
            "Sup3r S3cret==",
            "Sup3r-S3cret=x",
        ] {
            let text = error(&format!("A=1\n{line}\nB=2\n"));
            assert!(!text.contains("Sup3r") && !text.contains("S3cret"), "{line}: {text}");
        }
    }

    #[test]
    fn undefined_reference_in_a_secret_warns_without_the_value() {
        let got = parsed("REDIS_PASSWORD=abc$NOPE\n");
        assert_eq!(got.entries[0].value, "abc");
        let warnings: Vec<String> = got.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [".env:1: REDIS_PASSWORD has a `$` that dotenv read as a reference to a variable \
              that is not defined and replaced by nothing, so the value used is not the one \
              written: for a literal `$` put the value in single quotes"]
        );
    }

    #[test]
    fn undefined_reference_is_cut_at_underscore_and_warned() {
        let got = parsed("K=abc$NOPE_UNDEFINED\n");
        assert_eq!(got.entries[0].value, "abc_UNDEFINED", "what dotenvy really does");
        assert_eq!(
            got.warnings[0].to_string(),
            ".env:1: K refers to `$NOPE`, which is not defined, so it was replaced by nothing \
             (dotenv ends a `$NAME` at `_`: `$NOPE_UNDEFINED` reads as `$NOPE` then \
             `_UNDEFINED`): for a literal `$` put the value in single quotes, or write \
             `${NOPE_UNDEFINED}` for that variable"
        );
    }

    #[test]
    fn undefined_braced_reference_and_lone_dollar_warn() {
        assert_eq!(
            warnings("K=\"x${NOPE}\"\n"),
            [".env:1: K refers to `${NOPE}`, which is not defined, so it was replaced by \
              nothing: for a literal `$` put the value in single quotes"]
        );
        assert_eq!(entries("K=abc$\n")[0].1, "abc");
        assert_eq!(
            warnings("K=abc$\n"),
            [".env:1: K has a `$` not followed by a name, which dotenv dropped: for a literal \
              `$` put the value in single quotes"]
        );
    }

    #[test]
    fn reference_to_an_earlier_key_cut_at_underscore_warns() {
        let got = parsed("A=1\nB=x${A}\nC=$A_X\n");
        assert_eq!((got.entries[1].value.as_str(), got.entries[2].value.as_str()), ("x1", "1_X"));
        let warnings: Vec<String> = got.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [".env:3: C refers to `$A_X`, which dotenv reads as `$A` then `_X` (a `$NAME` ends \
              at `_`): write `${A_X}` for that variable, or put the value in single quotes for \
              a literal `$`"]
        );
    }

    #[test]
    fn literal_dollars_do_not_warn() {
        let got = parsed("A='abc$NOPE'\nB=\"abc\\$NOPE\"\nC=abc\\$NOPE\nD=a$A\n");
        let values: Vec<&str> = got.entries.iter().map(|e| e.value.as_str()).collect();
        assert_eq!(values, ["abc$NOPE", "abc$NOPE", "abc$NOPE", "aabc$NOPE"]);
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    }
}
