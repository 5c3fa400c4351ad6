//! Readiness probes: one try of an HTTP GET, a TCP connect or a command, each
//! bounded by the probe's timeout. (`log_line` is watched by the log readers.)

use crate::manifest::{Check, HttpCheck, Probe};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an HTTP response a probe reads.
const MAX_RESPONSE: usize = 64 * 1024;

/// What a probe checks, in words, for a spinner: "GET http://…/readyz → 200".
pub(crate) fn describe(probe: &Probe) -> String {
    match &probe.check {
        Check::Http(http) => match &http.body_contains {
            Some(body) => format!("GET {} → {} containing `{body}`", http.url, http.status),
            None => format!("GET {} → {}", http.url, http.status),
        },
        Check::Tcp(addr) => format!("TCP connect to {addr}"),
        Check::Command(argv) => format!("`{}` exits 0", argv.join(" ")),
        Check::LogLine(pattern) => format!("a log line matching `{}`", pattern.text),
    }
}

/// One try; `Err` says why the service is not ready yet.
pub(crate) async fn try_once(
    probe: &Probe,
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let attempt = async {
        match &probe.check {
            Check::Http(http) => http_get(http).await,
            Check::Tcp(addr) => TcpStream::connect(addr.as_str())
                .await
                .map(drop)
                .map_err(|e| format!("connect to {addr}: {e}")),
            Check::Command(argv) => command(argv, cwd, env).await,
            Check::LogLine(_) => Err("the line has not been printed yet".to_string()),
        }
    };
    match tokio::time::timeout(probe.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}", humantime::format_duration(probe.timeout))),
    }
}

async fn http_get(http: &HttpCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect((http.host.as_str(), http.port))
        .await
        .map_err(|e| format!("GET {}: {e}", http.url))?;
    let host = if http.host.contains(':') { format!("[{}]", http.host) } else { http.host.clone() };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: mesh-supervisor\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        http.path, http.port
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {}: {e}", http.url))?;

    // Read until the server closes, the declared length arrived, or the cap.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("GET {}: {e}", http.url))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if response.len() >= MAX_RESPONSE || complete(&response) {
            break;
        }
    }
    check_response(http, &response)
}

/// True once the headers and a `Content-Length` body have arrived.
fn complete(response: &[u8]) -> bool {
    let Some(end) = find(response, b"\r\n\r\n") else { return false };
    let headers = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|len| response.len() >= end + 4 + len)
}

fn check_response(http: &HttpCheck, response: &[u8]) -> Result<(), String> {
    let head_end = find(response, b"\r\n\r\n").unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {}: not an HTTP response", http.url))?;
    if status != http.status {
        return Err(format!("GET {} answered {status}, expecting {}", http.url, http.status));
    }
    if let Some(needle) = &http.body_contains {
        // A chunked body is searched raw: fine for the short bodies health
        // endpoints return, where the text does not straddle a chunk boundary.
        let body = &response[(head_end + 4).min(response.len())..];
        if find(body, needle.as_bytes()).is_none() {
            return Err(format!(
                "GET {} answered {status} without `{needle}` in the body",
                http.url
            ));
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn command(
    argv: &[String],
    cwd: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let status = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| format!("`{}` could not start: {e}", argv[0]))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` {status}", argv.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(body: Option<&str>) -> HttpCheck {
        HttpCheck {
            url: "http://127.0.0.1:1/health".into(),
            host: "127.0.0.1".into(),
            port: 1,
            path: "/health".into(),
            status: 200,
            body_contains: body.map(str::to_string),
        }
    }

    #[test]
    fn status_and_body_are_both_checked() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"status\":\"healthy\"}";
        assert_eq!(check_response(&http(Some("healthy")), ok), Ok(()));
        let degraded = b"HTTP/1.1 200 OK\r\n\r\n{\"status\":\"degraded\"}";
        assert!(check_response(&http(Some("healthy")), degraded).unwrap_err().contains("without"));
        let down = b"HTTP/1.0 503 Service Unavailable\r\n\r\n";
        assert!(check_response(&http(None), down).unwrap_err().contains("answered 503"));
        assert!(check_response(&http(None), b"SSH-2.0-x\r\n").unwrap_err().contains("not an HTTP"));
    }

    #[test]
    fn a_content_length_body_completes_the_response() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"));
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nab"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n"));
    }
}
