//! Finding where one RESP reply ends in a byte buffer, without allocating: the load generator's
//! hot path, and how a check tells Redis from something else by its first bytes.
//!
//! Decoding a whole reply into a value is left to the `redis` crate
//! (`redis::parse_redis_value`); this module only frames.

/// The bytes do not follow the Redis protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The start of the offending data, printable, for the message.
    pub seen: String,
}

/// A complete reply at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// How many bytes it takes.
    pub len: usize,
    /// True when it is an error reply (`-ERR ...`, `!` in RESP3).
    pub error: bool,
}

/// The first complete reply in `buf`, `Ok(None)` when more bytes are needed, or [`Malformed`].
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let error = matches!(kind, b'-' | b'!');
    match skip(buf, 0)? {
        Some(len) => Ok(Some(Frame { len, error })),
        None => Ok(None),
    }
}

/// The end offset of the value starting at `at`, or `None` if `buf` holds only part of it.
fn skip(buf: &[u8], at: usize) -> Result<Option<usize>, Malformed> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some(line_end) = find_crlf(buf, at + 1) else {
        // Reject non-RESP early instead of waiting for a line end that never comes.
        return if is_type_byte(kind) { Ok(None) } else { Err(malformed(&buf[at..])) };
    };
    let line = &buf[at + 1..line_end];
    let next = line_end + 2;
    match kind {
        b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => Ok(Some(next)),
        b'$' | b'!' | b'=' => {
            let len = parse_len(line).ok_or_else(|| malformed(&buf[at..]))?;
            if len < 0 {
                return Ok(Some(next));
            }
            let end = next + len as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = parse_len(line).ok_or_else(|| malformed(&buf[at..]))?;
            let items = if matches!(kind, b'%' | b'|') { count * 2 } else { count };
            let mut pos = next;
            for _ in 0..items.max(0) {
                match skip(buf, pos)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err(malformed(&buf[at..])),
    }
}

fn is_type_byte(byte: u8) -> bool {
    b"+-:$*!=,#(_~>%|".contains(&byte)
}

/// The index of the first `\r\n` at or after `from`. A plain loop: this runs once per reply,
/// and iterator adapters are slow in the unoptimized build users run.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\r' && buf[i + 1] == b'\n' {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn parse_len(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn malformed(bytes: &[u8]) -> Malformed {
    Malformed { seen: printable(bytes) }
}

/// The start of `bytes` as one short printable line: the first line of text, or hex for binary.
pub fn printable(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(48)];
    let text_like = head.iter().take_while(|b| **b != b'\r' && **b != b'\n').count();
    let line = &head[..text_like];
    if !line.is_empty() && line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(line).into_owned()
    } else {
        head.iter().take(16).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Option<Frame> {
        frame(bytes).expect("valid RESP")
    }

    #[test]
    fn frames_every_reply_type_a_benchmark_meets() {
        assert_eq!(whole(b"+PONG\r\n"), Some(Frame { len: 7, error: false }));
        assert_eq!(whole(b"-ERR no\r\n+OK\r\n"), Some(Frame { len: 9, error: true }));
        assert_eq!(whole(b":42\r\n"), Some(Frame { len: 5, error: false }));
        assert_eq!(whole(b"$3\r\nabc\r\n"), Some(Frame { len: 9, error: false }));
        assert_eq!(whole(b"$-1\r\n"), Some(Frame { len: 5, error: false }));
        assert_eq!(whole(b"*2\r\n$1\r\na\r\n:1\r\n"), Some(Frame { len: 15, error: false }));
        assert_eq!(whole(b"*-1\r\n"), Some(Frame { len: 5, error: false }));
    }

    #[test]
    fn a_partial_reply_asks_for_more_bytes() {
        assert_eq!(whole(b""), None);
        assert_eq!(whole(b"+PON"), None);
        assert_eq!(whole(b"$3\r\nab"), None);
        assert_eq!(whole(b"*2\r\n$1\r\na\r\n"), None);
    }

    #[test]
    fn a_bulk_string_may_hold_crlf() {
        assert_eq!(whole(b"$4\r\n\r\n\r\n\r\n"), Some(Frame { len: 10, error: false }));
    }

    #[test]
    fn an_ssh_banner_is_malformed_at_once() {
        let err = frame(b"SSH-2.0-OpenSSH_9.2").unwrap_err();
        assert_eq!(err.seen, "SSH-2.0-OpenSSH_9.2");
    }

    #[test]
    fn an_http_answer_is_malformed_and_shows_its_first_line() {
        let err = frame(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert_eq!(err.seen, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn a_tls_alert_is_shown_as_hex() {
        let err = frame(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]).unwrap_err();
        assert_eq!(err.seen, "15 03 03 00 02 02 46");
    }
}
