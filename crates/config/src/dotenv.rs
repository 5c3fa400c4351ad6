//! Reading one dotenv file into ordered entries, each with the line it came from.
//!
//! Values are parsed by `dotenvy` (quotes, escapes, inline comments, multi-line
//! values); this module adds what it does not report: the line of every entry,
//! and errors that say which line is wrong and how.

use std::path::{Path, PathBuf};

/// One `NAME=value` assignment as written in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub key: String,
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// A line that cannot be read as an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

/// Parses dotenv text. `path` is only used to name the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Vec<FileEntry>, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).replace("\r\n", "\n");
    let chunks = logical_lines(&text);
    let err = |line, message: String| SyntaxError { path: path.to_path_buf(), line, message };

    let mut keys = Vec::new();
    for chunk in &chunks {
        match chunk.kind {
            ChunkKind::Blank => {}
            ChunkKind::Unterminated(quote) => {
                return Err(err(
                    chunk.line,
                    format!(
                        "unbalanced quote: the {quote} opened here is never closed; \
                         close it on the same line, or escape it as \\{quote}"
                    ),
                ))
            }
            ChunkKind::Assignment => keys.push((assignment_key(chunk, &err)?, chunk.line)),
        }
    }

    let parsed: Result<Vec<(String, String)>, _> =
        dotenvy::from_read_iter(text.as_bytes()).collect();
    let parsed = parsed.map_err(|e| {
        let fragment = match &e {
            dotenvy::Error::LineParse(bad, _) => bad.trim().to_string(),
            _ => String::new(),
        };
        let chunk = chunks.iter().find(|c| {
            matches!(c.kind, ChunkKind::Assignment) && c.text.contains(fragment.as_str())
        });
        let value = chunk.and_then(|c| c.text.split_once('=')).map(|(_, v)| v.trim());
        let message = match value {
            Some(v) if !v.starts_with(['"', '\'']) && v.contains(char::is_whitespace) => {
                "the value has spaces but no quotes: wrap it in double quotes".to_string()
            }
            _ => format!("cannot be read as NAME=value ({e}): check the quoting"),
        };
        err(chunk.map_or(1, |c| c.line), message)
    })?;

    Ok(parsed
        .into_iter()
        .zip(keys)
        .map(|((key, value), (_, line))| FileEntry { key, value, line })
        .collect())
}

/// Checks the part before `=` and returns the variable name.
fn assignment_key(
    chunk: &Chunk,
    err: &dyn Fn(usize, String) -> SyntaxError,
) -> Result<String, SyntaxError> {
    let body = chunk.text.trim_start();
    let body = body.strip_prefix("export ").map(str::trim_start).unwrap_or(body);
    let Some((key, _)) = body.split_once('=') else {
        let word = body.split_whitespace().next().unwrap_or(body);
        return Err(err(
            chunk.line,
            format!("`{word}` has no `=`: write it as `{word}=value`, or comment it out with `#`"),
        ));
    };
    let key = key.trim_end();
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(err(
            chunk.line,
            format!(
                "`{key}` is not a variable name: use letters, digits and `_`, \
                 like `REDIS_TUNNEL_PORT=6379`"
            ),
        ));
    }
    Ok(key.to_string())
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
}

/// Splits text into logical lines with the same quote rules dotenvy applies: a
/// quote anywhere opens a value that runs until its matching quote, `#` after
/// whitespace starts a comment, a backslash escapes the next character.
fn logical_lines(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((index, first)) = lines.next() {
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            chunks.push(Chunk { line: index + 1, text: first.to_string(), kind: ChunkKind::Blank });
            continue;
        }
        let mut text = first.to_string();
        let mut open = open_quote(&text);
        while open.is_some() {
            let Some((_, next)) = lines.next() else { break };
            text.push('\n');
            text.push_str(next);
            open = open_quote(&text);
        }
        let kind = open.map_or(ChunkKind::Assignment, ChunkKind::Unterminated);
        chunks.push(Chunk { line: index + 1, text, kind });
    }
    chunks
}

/// The quote left open at the end of `text`, if any.
fn open_quote(text: &str) -> Option<char> {
    let mut open: Option<char> = None;
    let mut escaped = false;
    let mut after_space = true;
    for c in text.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match open {
            Some(q) if c == q => open = None,
            Some(_) if c == '\\' => escaped = true,
            Some(_) => {}
            None if c == '#' && after_space => return None,
            None if c == '\\' => escaped = true,
            None if c == '"' || c == '\'' => open = Some(c),
            None => {}
        }
        after_space = c.is_whitespace();
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<(String, String, usize)> {
        parse(Path::new(".env"), text)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value, e.line))
            .collect()
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
    fn fail_unbalanced_quote_names_the_opening_line() {
        assert_eq!(
            error("A=1\nREDIS_PASSWORD=\"abc\nB=2\n"),
            ".env:2: unbalanced quote: the \" opened here is never closed; \
             close it on the same line, or escape it as \\\""
        );
    }

    #[test]
    fn fail_unquoted_value_with_spaces_asks_for_quotes() {
        assert_eq!(
            error("A=1\nTUNNEL_EXTRA_FORWARDS=6381:a:6380, 6382:b:6380\n"),
            ".env:2: the value has spaces but no quotes: wrap it in double quotes"
        );
    }

    #[test]
    fn fail_bad_variable_name() {
        assert_eq!(
            error("9LIVES=1\n"),
            ".env:1: `9LIVES` is not a variable name: use letters, digits and `_`, \
             like `REDIS_TUNNEL_PORT=6379`"
        );
    }
}
