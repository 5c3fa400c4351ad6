//! The tunnel's log file: the last lines, and following it as it grows.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// A detached start moves a log past this size to `tunnel.log.1` first.
pub const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// The last `n` lines of the file at `path`, read from its end (a long log is
/// not read whole).
pub fn tail_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf = Vec::new();
    // Read backwards in chunks until n + 1 line breaks are in hand.
    while start > 0 && buf.iter().filter(|b| **b == b'\n').count() <= n {
        let chunk = start.min(64 * 1024);
        start -= chunk;
        let mut part = vec![0; chunk as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut part)?;
        part.extend_from_slice(&buf);
        buf = part;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect())
}

/// Copies what is appended to `path` into `out`, polling every `poll`, until
/// `keep_going` returns false. Starts at the current end. A truncated or
/// replaced (rotated) file is read again from its start.
pub fn follow(
    path: &Path,
    out: &mut dyn Write,
    poll: Duration,
    mut keep_going: impl FnMut() -> bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut inode = file.metadata()?.ino();
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut buf = vec![0; 64 * 1024];
    while keep_going() {
        let n = file.read(&mut buf)?;
        if n > 0 {
            pos += n as u64;
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        std::thread::sleep(poll);
        match std::fs::metadata(path) {
            Ok(meta) if meta.ino() != inode || meta.len() < pos => {
                file = File::open(path)?;
                inode = file.metadata()?.ino();
                pos = 0;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test can read while `follow` holds it.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tail_returns_the_last_lines_of_a_long_log() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tunnel.log");
        let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail_lines(&path, 3).unwrap(), ["line 19997", "line 19998", "line 19999"]);
        assert_eq!(tail_lines(&path, 0).unwrap(), Vec::<String>::new());

        std::fs::write(&path, "only\n").unwrap();
        assert_eq!(tail_lines(&path, 10).unwrap(), ["only"]);
        std::fs::write(&path, "").unwrap();
        assert!(tail_lines(&path, 10).unwrap().is_empty());
    }

    #[test]
    fn follow_prints_appended_lines_and_survives_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tunnel.log");
        std::fs::write(&path, "old\n").unwrap();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut f = std::fs::OpenOptions::new().append(true).open(&writer_path).unwrap();
            f.write_all(b"new 1\n").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            std::fs::rename(&writer_path, writer_path.with_extension("log.1")).unwrap();
            std::fs::write(&writer_path, "after rotation\n").unwrap();
        });

        let out = SharedBuf::default();
        let seen = out.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        follow(&path, &mut out.clone(), Duration::from_millis(10), || {
            !seen.text().contains("after rotation") && std::time::Instant::now() < deadline
        })
        .unwrap();
        writer.join().unwrap();
        assert_eq!(out.text(), "new 1\nafter rotation\n");
    }
}
