//! The Redis protocol (RESP2) on byte buffers: encoding a command, finding where one reply ends
//! without allocating (the load generator's hot path, and how a check tells Redis from
//! something else by its first bytes), and decoding a reply into a [`Value`].
//!
//! [`Client`] is a small blocking client over these, plain or TLS, for callers without a
//! runtime (the sandbox's stand-in services). We never ask for RESP3 (`HELLO 3`): [`frame`]
//! still finds the end of a RESP3 reply, but [`decode`] calls one malformed.

mod client;

pub use client::{Client, ClientError};

/// Arrays nested deeper than this are refused rather than followed: real replies nest a few
/// levels (XREADGROUP four), and following a hostile depth would overflow the stack.
const MAX_DEPTH: usize = 64;

/// The bytes do not follow the Redis protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{seen}` is not the Redis protocol ({reason})")]
pub struct Malformed {
    /// The start of the offending data, printable, for the message.
    pub seen: String,
    /// What is wrong with it, e.g. `not a RESP type byte`.
    pub reason: &'static str,
}

/// A complete reply at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// How many bytes it takes.
    pub len: usize,
    /// True when it is an error reply (`-ERR ...`, `!` in RESP3).
    pub error: bool,
}

/// One decoded RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`: a status line.
    Simple(String),
    /// `-ERR ...`: the whole line after the `-`, code first.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nabc`: binary-safe bytes.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: no value (a missing key, a BLOCK that timed out).
    Null,
    /// `*2\r\n...`.
    Array(Vec<Value>),
}

impl Value {
    /// The text of a simple or bulk string (bulk bytes read as UTF-8, lossily).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Simple(text) => Some(text.clone()),
            Value::Bulk(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// An integer reply, or a string holding one (SCAN's cursor, CLUSTER SLOTS' ports).
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            other => other.text()?.parse().ok(),
        }
    }

    /// The items of an array reply.
    pub fn into_array(self) -> Option<Vec<Value>> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Value::Bulk(bytes) => Some(bytes),
            Value::Simple(text) => Some(text.into_bytes()),
            _ => None,
        }
    }
}

/// `args` as the array of bulk strings a client sends: `*N\r\n$len\r\narg\r\n...`.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|arg| arg.len() + 16).sum::<usize>());
    encode_into(&mut out, args);
    out
}

/// Appends `args`, encoded as by [`encode`], to `out`.
pub fn encode_into(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The first complete reply in `buf`, `Ok(None)` when more bytes are needed, or [`Malformed`].
pub fn frame(buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    let Some(&kind) = buf.first() else { return Ok(None) };
    let error = matches!(kind, b'-' | b'!');
    match skip(buf, 0, 0)? {
        Some(len) => Ok(Some(Frame { len, error })),
        None => Ok(None),
    }
}

/// The end offset of the value starting at `at`, or `None` if `buf` holds only part of it.
fn skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Malformed> {
    let Some(Header { kind, line, next }) = header(buf, at)? else { return Ok(None) };
    match kind {
        b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => Ok(Some(next)),
        b'$' | b'!' | b'=' => match bulk_len(buf, at, line)? {
            None => Ok(Some(next)),
            Some(len) => {
                let end = next.saturating_add(len).saturating_add(2);
                Ok((buf.len() >= end).then_some(end))
            }
        },
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = parse_len(line).ok_or_else(|| malformed(&buf[at..], "a bad count"))?;
            let items = if matches!(kind, b'%' | b'|') { count.saturating_mul(2) } else { count };
            if items > 0 && depth >= MAX_DEPTH {
                return Err(malformed(&buf[at..], "arrays nested too deep"));
            }
            let mut pos = next;
            for _ in 0..items.max(0) {
                match skip(buf, pos, depth + 1)? {
                    Some(end) => pos = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(pos))
        }
        _ => Err(malformed(&buf[at..], "not a RESP type byte")),
    }
}

/// The first complete RESP2 reply in `buf` and how many bytes it took, `Ok(None)` when more
/// bytes are needed, or [`Malformed`] (RESP3 types included).
pub fn decode(buf: &[u8]) -> Result<Option<(Value, usize)>, Malformed> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, Malformed> {
    let Some(Header { kind, line, next }) = header(buf, at)? else { return Ok(None) };
    let text = || String::from_utf8_lossy(line).into_owned();
    let value = match kind {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => {
            Value::Integer(parse_len(line).ok_or_else(|| malformed(&buf[at..], "a bad integer"))?)
        }
        b'$' => match bulk_len(buf, at, line)? {
            None => Value::Null,
            Some(len) => {
                let end = next.saturating_add(len);
                if buf.len() < end.saturating_add(2) {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(malformed(&buf[at..], "a bulk string longer than its length"));
                }
                return Ok(Some((Value::Bulk(buf[next..end].to_vec()), end + 2)));
            }
        },
        b'*' => return decode_array(buf, at, line, next, depth),
        _ if is_type_byte(kind) => return Err(malformed(&buf[at..], "a RESP3 type")),
        _ => return Err(malformed(&buf[at..], "not a RESP type byte")),
    };
    Ok(Some((value, next)))
}

fn decode_array(
    buf: &[u8],
    at: usize,
    line: &[u8],
    next: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, Malformed> {
    let count = parse_len(line).ok_or_else(|| malformed(&buf[at..], "a bad count"))?;
    if count == -1 {
        return Ok(Some((Value::Null, next)));
    }
    if count < 0 {
        return Err(malformed(&buf[at..], "a negative count"));
    }
    if count > 0 && depth >= MAX_DEPTH {
        return Err(malformed(&buf[at..], "arrays nested too deep"));
    }

    // Every item takes at least 3 bytes, so a count the buffer cannot hold is not trusted
    // for the allocation.
    let mut items = Vec::with_capacity((count as usize).min((buf.len() - next) / 3));
    let mut pos = next;
    for _ in 0..count {
        match decode_at(buf, pos, depth + 1)? {
            Some((item, end)) => {
                items.push(item);
                pos = end;
            }
            None => return Ok(None),
        }
    }
    Ok(Some((Value::Array(items), pos)))
}

/// The first line of a value: its type byte, the rest of the line, and where the next line
/// starts.
struct Header<'a> {
    kind: u8,
    line: &'a [u8],
    next: usize,
}

/// The first line of the value at `at`; `None` when the line is not complete yet.
fn header(buf: &[u8], at: usize) -> Result<Option<Header<'_>>, Malformed> {
    let Some(&kind) = buf.get(at) else { return Ok(None) };
    let Some(line_end) = find_crlf(buf, at + 1) else {
        // Reject non-RESP early instead of waiting for a line end that never comes.
        return if is_type_byte(kind) {
            Ok(None)
        } else {
            Err(malformed(&buf[at..], "not a RESP type byte"))
        };
    };
    Ok(Some(Header { kind, line: &buf[at + 1..line_end], next: line_end + 2 }))
}

/// The length of a bulk string from its header line; `None` for the null bulk string (`-1`).
fn bulk_len(buf: &[u8], at: usize, line: &[u8]) -> Result<Option<usize>, Malformed> {
    match parse_len(line) {
        Some(-1) => Ok(None),
        Some(len) if len >= 0 => Ok(Some(len as usize)),
        _ => Err(malformed(&buf[at..], "a bad length")),
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

fn malformed(bytes: &[u8], reason: &'static str) -> Malformed {
    Malformed { seen: printable(bytes), reason }
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

    fn value(bytes: &[u8]) -> Value {
        let (value, len) = decode(bytes).expect("valid RESP").expect("a whole reply");
        assert_eq!(len, bytes.len(), "the whole input is one reply");
        value
    }

    fn bulk(text: &str) -> Value {
        Value::Bulk(text.as_bytes().to_vec())
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
        assert_eq!(
            err.to_string(),
            "`SSH-2.0-OpenSSH_9.2` is not the Redis protocol (not a RESP type byte)"
        );
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

    #[test]
    fn a_bad_length_is_malformed_not_incomplete() {
        assert_eq!(frame(b"$x\r\n").unwrap_err().reason, "a bad length");
        assert_eq!(frame(b"$-2\r\n").unwrap_err().reason, "a bad length");
        assert_eq!(frame(b"*z\r\n").unwrap_err().reason, "a bad count");
    }

    #[test]
    fn hostile_nesting_is_refused_not_followed() {
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(frame(&deep).unwrap_err().reason, "arrays nested too deep");
        assert_eq!(decode(&deep).unwrap_err().reason, "arrays nested too deep");
        let mut fine = b"*1\r\n".repeat(MAX_DEPTH);
        fine.extend_from_slice(b":1\r\n");
        assert!(whole(&fine).is_some());
        assert!(decode(&fine).unwrap().is_some());
    }

    #[test]
    fn encodes_a_command_as_an_array_of_bulk_strings() {
        assert_eq!(encode(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(encode(&[b"SET", b"k", b""]), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let mut out = b"+".to_vec();
        encode_into(&mut out, &[b"a\r\nb"]);
        assert_eq!(out, b"+*1\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn an_encoded_command_decodes_back_to_its_arguments() {
        let args: [&[u8]; 4] = [b"XADD", b"s", b"*", &[0, 13, 10, 255]];
        let expected = Value::Array(args.iter().map(|a| Value::Bulk(a.to_vec())).collect());
        assert_eq!(value(&encode(&args)), expected);
    }

    #[test]
    fn decodes_every_resp2_type() {
        assert_eq!(value(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(value(b"-WRONGPASS invalid\r\n"), Value::Error("WRONGPASS invalid".into()));
        assert_eq!(value(b":-7\r\n"), Value::Integer(-7));
        assert_eq!(value(b"$0\r\n\r\n"), bulk(""));
        assert_eq!(value(b"$-1\r\n"), Value::Null);
        assert_eq!(value(b"*-1\r\n"), Value::Null);
        assert_eq!(value(b"*0\r\n"), Value::Array(vec![]));
        assert_eq!(
            value(b"*3\r\n$1\r\na\r\n*1\r\n:2\r\n$-1\r\n"),
            Value::Array(vec![bulk("a"), Value::Array(vec![Value::Integer(2)]), Value::Null])
        );
    }

    #[test]
    fn decode_reports_how_many_bytes_the_first_reply_took() {
        assert_eq!(decode(b"+OK\r\n:1\r\n").unwrap(), Some((Value::Simple("OK".into()), 5)));
    }

    #[test]
    fn decode_asks_for_more_bytes_at_every_cut() {
        let reply = b"*2\r\n$5\r\nhello\r\n*1\r\n:42\r\n";
        for cut in 0..reply.len() {
            assert_eq!(decode(&reply[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(frame(&reply[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode(reply).unwrap().is_some());
    }

    #[test]
    fn decode_tells_protocol_errors_apart() {
        let reason = |bytes: &[u8]| decode(bytes).unwrap_err().reason;
        assert_eq!(reason(b"SSH-2.0-OpenSSH_9.2\r\n"), "not a RESP type byte");
        assert_eq!(reason(b":4x\r\n"), "a bad integer");
        assert_eq!(reason(b"$3\r\nabcd\r\n"), "a bulk string longer than its length");
        assert_eq!(reason(b"*-2\r\n"), "a negative count");
        assert_eq!(reason(b"*1\r\n?\r\n"), "not a RESP type byte");
        assert_eq!(reason(b"%1\r\n+a\r\n+b\r\n"), "a RESP3 type");
        assert_eq!(reason(b"_\r\n"), "a RESP3 type");
    }

    #[test]
    fn a_huge_count_or_length_waits_without_allocating_it() {
        assert_eq!(decode(b"*999999999999\r\n:1\r\n"), Ok(None));
        assert_eq!(decode(b"$999999999999\r\nab"), Ok(None));
        assert_eq!(frame(b"$9223372036854775807\r\nab"), Ok(None));
    }

    #[test]
    fn values_convert_to_what_callers_read() {
        assert_eq!(bulk("12").int(), Some(12));
        assert_eq!(Value::Integer(3).int(), Some(3));
        assert_eq!(Value::Null.int(), None);
        assert_eq!(Value::Simple("PONG".into()).text().as_deref(), Some("PONG"));
        assert_eq!(Value::Integer(1).text(), None);
        assert_eq!(Value::Array(vec![Value::Null]).into_array(), Some(vec![Value::Null]));
        assert_eq!(bulk("x").into_array(), None);
        assert_eq!(bulk("x").into_bytes(), Some(b"x".to_vec()));
    }
}
