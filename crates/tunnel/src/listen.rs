//! Binding the local listeners before any network wait, and naming who holds a taken port.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket};

use crate::spec::TunnelSpec;
use crate::TunnelError;

/// One bound listener and the index of its forward in the spec.
pub(crate) struct Listener {
    pub forward: usize,
    pub listener: TcpListener,
}

/// Binds every forward on every address. A port of 0 binds a free port, and the other
/// addresses of that forward then bind the same port.
pub(crate) fn bind_all(spec: &TunnelSpec) -> Result<Vec<Listener>, TunnelError> {
    let (addrs, defaulted) = spec.bind_addrs_or_default();
    let mut listeners = Vec::new();
    for (index, forward) in spec.forwards.iter().enumerate() {
        let mut port = forward.local_port;
        let mut bound_any = false;
        for &ip in &addrs {
            let addr = SocketAddr::new(ip, port);
            match bind_one(addr) {
                Ok(listener) => {
                    port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
                    tracing::debug!(forward = %forward.name, %addr, "listener bound");
                    listeners.push(Listener { forward: index, listener });
                    bound_any = true;
                }
                // IPv6 loopback missing (disabled IPv6, some containers) is not an error.
                Err(e) if defaulted && ip.is_ipv6() && ipv6_unavailable(&e) => {
                    tracing::debug!(%addr, error = %e, "ipv6 loopback unavailable, skipped");
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    return Err(TunnelError::PortInUse {
                        forward: forward.name.clone(),
                        port,
                        addr,
                        holder: port_holder(port)
                            .map(|(pid, command)| format!("{command} (pid {pid})")),
                    });
                }
                Err(source) => {
                    return Err(TunnelError::Bind { forward: forward.name.clone(), addr, source })
                }
            }
        }
        if !bound_any {
            let addr = SocketAddr::new(addrs[0], port);
            let source = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address bound");
            return Err(TunnelError::Bind { forward: forward.name.clone(), addr, source });
        }
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() { TcpSocket::new_v6()? } else { TcpSocket::new_v4()? };
    // SO_REUSEADDR lets a restarted tunnel bind while old connections sit in TIME_WAIT; on
    // Linux it never lets two listeners share a port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::AddrNotAvailable | io::ErrorKind::Unsupported)
        || e.raw_os_error() == Some(97) // EAFNOSUPPORT
}

/// The process listening on a TCP port, as `/proc` tells: (pid, command name).
/// `None` where `/proc` is absent or the socket belongs to another user's process.
pub fn port_holder(port: u16) -> Option<(u32, String)> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            let link = link.to_string_lossy();
            let holds = inodes.iter().any(|inode| link == format!("socket:[{inode}]"));
            if holds {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

/// Inodes of sockets in LISTEN state (0A) on `port` in a `/proc/net/tcp*` table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// The address a local client dialled, for the `direct-tcpip` originator fields.
pub(crate) fn originator(peer: SocketAddr) -> (String, u32) {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    (ip.to_string(), u32::from(peer.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_inode_is_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:18EB 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1\n";
        assert_eq!(listening_inodes(table, 0x18EB), vec!["12345".to_string()]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn port_holder_names_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _command) = port_holder(port).expect("/proc should name the holder");
        assert_eq!(pid, std::process::id());
    }
}
