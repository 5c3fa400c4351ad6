//! A child's output: read in bounded chunks, split into lines, prefixed with
//! the service's aligned (optionally coloured) name, kept in a short tail for
//! failure reports and written in full to the service's log file.

use crate::manifest::LinePattern;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// How much of one line is shown and kept in memory; the rest of a longer
/// line goes to the log file only.
pub const MAX_LINE_SHOWN: usize = 4096;

/// How many of a service's last lines a failure report shows.
pub const TAIL_LINES: usize = 20;

const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a service's output.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub service: String,
    pub stream: Stream,
    /// The line without its newline, at most [`MAX_LINE_SHOWN`] bytes (lossy UTF-8).
    pub text: String,
    /// The line's full length in bytes when it was longer than shown.
    pub truncated: Option<usize>,
    pub at: SystemTime,
    /// Prefix and text as the terminal should print it.
    pub rendered: String,
}

/// How lines are prefixed for the terminal.
#[derive(Debug, Clone)]
pub struct LogStyle {
    /// The longest service name, so prefixes line up.
    pub width: usize,
    pub color: bool,
    pub timestamps: bool,
}

const PALETTE: &[&str] = &["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

impl LogStyle {
    /// `name | text`, the name padded to `width` and coloured by `color_index`
    /// when colour is on, after a local `HH:MM:SS.mmm` when timestamps are on.
    pub fn render(&self, service: &str, color_index: usize, at: SystemTime, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + self.width + 20);
        if self.timestamps {
            out.push_str(&clock(at));
            out.push(' ');
        }
        let name = format!("{service:<width$} |", width = self.width);
        if self.color {
            let code = PALETTE[color_index % PALETTE.len()];
            out.push_str(&format!("\x1b[{code}m{name}\x1b[0m"));
        } else {
            out.push_str(&name);
        }
        if !text.is_empty() {
            out.push(' ');
            out.push_str(text);
        }
        out
    }
}

/// Local wall-clock time of day, `HH:MM:SS.mmm`.
pub(crate) fn clock(at: SystemTime) -> String {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as libc::time_t;
    // SAFETY: localtime_r writes only into the zeroed `tm` we own; a null
    // return (no such time) leaves it zeroed, which prints as midnight.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, since.subsec_millis())
}

/// The last lines of a service, shared by its stdout and stderr readers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    pub(crate) fn push(&self, line: &str) {
        let mut lines = self.0.lock().expect("tail lock");
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.to_string());
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().expect("tail lock").iter().cloned().collect()
    }
}

/// A service's log file, shared by both readers (and by the supervisor's
/// own notes, such as a restart).
#[derive(Debug, Clone)]
pub(crate) struct LogFile {
    pub(crate) path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

impl LogFile {
    /// Creates (truncates) the file; a file that cannot be written only loses
    /// the copy on disk, never the terminal output, so the error is returned
    /// for the caller to report.
    pub(crate) fn create(path: PathBuf) -> std::io::Result<LogFile> {
        // Services log what they see (tokens in URLs, stack traces with data): owner only.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // `mode` only applies to a new file: tighten one left by an older run.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(LogFile { path, file: Arc::new(Mutex::new(Some(file))) })
    }

    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut guard = self.file.lock().expect("log file lock");
        if let Some(file) = guard.as_mut() {
            if let Err(error) = file.write_all(bytes) {
                let path = self.path.display();
                tracing::warn!(%path, %error, "log file write failed, no longer writing it");
                *guard = None;
            }
        }
    }

    /// A whole line with its timestamp.
    pub(crate) fn line(&self, at: SystemTime, text: &str) {
        let stamp = humantime::format_rfc3339_millis(at);
        self.write(format!("{stamp} {text}\n").as_bytes());
    }
}

/// Everything a reader needs besides its pipe.
#[derive(Clone)]
pub(crate) struct Sink {
    pub(crate) service: String,
    pub(crate) color_index: usize,
    pub(crate) style: LogStyle,
    pub(crate) events: mpsc::Sender<crate::Event>,
    pub(crate) tail: Tail,
    pub(crate) file: LogFile,
    /// Set once a line matches the `log_line` readiness pattern.
    pub(crate) ready_line: Option<(LinePattern, watch::Sender<bool>)>,
}

impl Sink {
    async fn emit(&self, stream: Stream, bytes: &[u8], full_len: usize) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let text = String::from_utf8_lossy(bytes).into_owned();
        let at = SystemTime::now();
        let truncated = (full_len > MAX_LINE_SHOWN).then_some(full_len);
        let mut shown = text.clone();
        if let Some(len) = truncated {
            shown.push_str(&format!(
                " … [line of {len}+ bytes cut; all of it is in {}]",
                self.file.path.display()
            ));
        }
        if let Some((pattern, seen)) = &self.ready_line {
            if !*seen.borrow() && pattern.matches(&text) {
                seen.send_replace(true);
            }
        }
        self.tail.push(&shown);
        let rendered = self.style.render(&self.service, self.color_index, at, &shown);
        let line = LogLine { service: self.service.clone(), stream, text, truncated, at, rendered };
        // A receiver that went away only means nobody watches any more.
        let _ = self.events.send(crate::Event::Log(line)).await;
    }
}

/// Reads `pipe` to its end, line by line, in chunks of at most 64 KiB. A line
/// longer than [`MAX_LINE_SHOWN`] is shown cut as soon as that much arrived;
/// the rest of it streams to the log file only, so memory stays bounded and a
/// line without a newline never stalls the others.
pub(crate) async fn pump(mut pipe: impl AsyncRead + Unpin, stream: Stream, sink: Sink) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut line_len = 0usize;
    let mut line_start = SystemTime::now();
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(service = %sink.service, %error, "output pipe read failed");
                break;
            }
        };
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            let (piece, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = if newline { &rest[piece.len() + 1..] } else { &[] };
            if line_len == 0 {
                line_start = SystemTime::now();
            }
            let was_long = line_len > MAX_LINE_SHOWN;
            let room = MAX_LINE_SHOWN.saturating_sub(line.len());
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            line_len += piece.len();
            if was_long {
                sink.file.write(piece);
            } else if line_len > MAX_LINE_SHOWN {
                // The line just outgrew what is shown: show it cut now, and
                // write what arrived of it so far to the file.
                let stamp = humantime::format_rfc3339_millis(line_start);
                sink.file.write(format!("{stamp} ").as_bytes());
                sink.file.write(&line);
                sink.file.write(&piece[piece.len().min(room)..]);
                sink.emit(stream, &line, line_len).await;
            }
            if newline {
                if line_len > MAX_LINE_SHOWN {
                    sink.file.write(b"\n");
                } else {
                    let bytes = line.strip_suffix(b"\r").unwrap_or(&line);
                    sink.file.line(line_start, &String::from_utf8_lossy(bytes));
                    sink.emit(stream, &line, line_len).await;
                }
                line.clear();
                line_len = 0;
            }
        }
    }
    if line_len > MAX_LINE_SHOWN {
        sink.file.write(b"\n");
    } else if line_len > 0 {
        sink.file.line(line_start, &String::from_utf8_lossy(&line));
        sink.emit(stream, &line, line_len).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_padded_to_the_longest_name() {
        let style = LogStyle { width: 10, color: false, timestamps: false };
        let at = SystemTime::now();
        assert_eq!(style.render("worker", 0, at, "hello"), "worker     | hello");
        assert_eq!(style.render("mcp-server", 1, at, "hi"), "mcp-server | hi");
    }

    #[test]
    fn colour_wraps_only_the_prefix() {
        let style = LogStyle { width: 3, color: true, timestamps: false };
        assert_eq!(style.render("api", 0, SystemTime::now(), "up"), "\x1b[36mapi |\x1b[0m up");
    }

    #[test]
    fn timestamps_lead_the_line() {
        let style = LogStyle { width: 3, color: false, timestamps: true };
        let line = style.render("api", 0, SystemTime::now(), "up");
        let (clock, rest) = line.split_once(' ').unwrap();
        assert_eq!(clock.len(), "12:00:00.000".len(), "{line}");
        assert_eq!(rest, "api | up");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let tail = Tail::default();
        for i in 0..30 {
            tail.push(&format!("line {i}"));
        }
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.first().unwrap(), "line 10");
        assert_eq!(lines.last().unwrap(), "line 29");
    }
}
