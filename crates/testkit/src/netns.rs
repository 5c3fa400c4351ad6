//! Network namespaces and veth links (root only), for a real VPC shape in tests: Redis that
//! only the bastion can reach, and faults only a network makes (a silent blackhole, a link
//! that comes back).
//!
//! ```no_run
//! use mesh_testkit::{Link, NetNs, RedisServer, Sshd};
//!
//! let (bastion, vpc) = (NetNs::new(), NetNs::new());
//! let outside = Link::new(None, &bastion); // the test (root namespace) <-> the bastion
//! let inside = Link::new(Some(&bastion), &vpc); // the bastion <-> the VPC
//! let redis = RedisServer::builder().netns(&vpc, inside.b_addr()).start();
//! let sshd = Sshd::builder().netns(&bastion, outside.b_addr()).start();
//! // Tunnel to sshd.addr(), forward to redis.addr(); `outside.cut()` is a silent blackhole.
//! # let _ = (redis, sshd);
//! ```

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::process::run_checked;
use crate::require;

/// Numbers namespaces and links within this process; with the pid it makes names unique.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn require_root(what: &str) {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "{what} needs root (network namespaces): run the tests as root, as \
             `cargo xtask ci` does in CI, or `sudo -E cargo test`"
        );
    }
}

fn ip(args: &[&str]) -> String {
    let mut command = Command::new(require("ip"));
    command.args(args).stdin(Stdio::null());
    run_checked(&mut command, &format!("ip {}", args.join(" ")))
}

/// A network namespace of our own with its loopback up; deleted when the last clone drops.
#[derive(Clone, Debug)]
pub struct NetNs {
    /// Shared with the servers running inside, so the namespace outlives them.
    inner: Arc<NsName>,
}

#[derive(Debug)]
struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        let mut command = Command::new("ip");
        command.args(["netns", "delete", &self.0]).stdin(Stdio::null()).stderr(Stdio::null());
        if !command.status().is_ok_and(|status| status.success()) {
            tracing::warn!(netns = %self.0, "cannot delete network namespace");
        }
    }
}

impl NetNs {
    /// Creates `mesh-PID-N` with loopback up; panics unless running as root.
    pub fn new() -> NetNs {
        require_root("NetNs::new");
        let name = format!("mesh-{}-{}", std::process::id(), next_id());
        ip(&["netns", "add", &name]);
        let ns = NetNs { inner: Arc::new(NsName(name)) };
        ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.inner.0
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(require("ip"));
        command.args(["netns", "exec", self.name()]).arg(program);
        command
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

/// A veth pair: end A in the root namespace or a [`NetNs`], end B in a [`NetNs`], on a /30
/// of 10.213.0.0/16. Removed on drop.
#[derive(Debug)]
pub struct Link {
    /// Interface name of end A (in `a_ns`).
    a_if: String,
    /// Interface name of end B (in `b_ns`).
    b_if: String,
    /// End A's namespace; `None` is the root namespace (where the test runs).
    a_ns: Option<NetNs>,
    /// End B's namespace.
    b_ns: NetNs,
    /// End A's address.
    a_addr: Ipv4Addr,
    /// End B's address.
    b_addr: Ipv4Addr,
    /// End A's MAC address, fixed so that neighbour entries can be permanent.
    a_mac: String,
    /// End B's MAC address.
    b_mac: String,
}

impl Link {
    /// Connects `a` (the root namespace when `None`) and `b`, both ends up.
    pub fn new(a: Option<&NetNs>, b: &NetNs) -> Link {
        require_root("Link::new");
        let id = next_id();
        let (a_addr, b_addr) = subnet(std::process::id(), id);
        // Interface names are at most 15 bytes.
        let stem = format!("mk{}x{id}", std::process::id() % 100_000);
        let link = Link {
            a_if: format!("{stem}a"),
            b_if: format!("{stem}b"),
            a_ns: a.cloned(),
            b_ns: b.clone(),
            a_addr,
            b_addr,
            a_mac: mac(id, 0xa),
            b_mac: mac(id, 0xb),
        };
        let mut create = vec!["link", "add", &link.a_if, "address", &link.a_mac, "type", "veth"];
        create.extend(["peer", "name", &link.b_if, "address", &link.b_mac]);
        create.extend(["netns", link.b_ns.name()]);
        ip(&create);
        if let Some(ns) = &link.a_ns {
            ip(&["link", "set", &link.a_if, "netns", ns.name()]);
        }
        link.in_a(&["addr", "add", &format!("{a_addr}/30"), "dev", &link.a_if]);
        link.in_b(&["addr", "add", &format!("{b_addr}/30"), "dev", &link.b_if]);
        link.restore();
        link
    }

    /// End A's address (in the root namespace when A is `None`).
    pub fn a_addr(&self) -> Ipv4Addr {
        self.a_addr
    }

    /// End B's address.
    pub fn b_addr(&self) -> Ipv4Addr {
        self.b_addr
    }

    /// Takes end B down: what A sends is dropped without a word (a silent blackhole, as when a
    /// security group starts dropping packets); established TCP connections hang.
    pub fn cut(&self) {
        self.in_b(&["link", "set", &self.b_if, "down"]);
    }

    /// Brings both ends up again: the link comes back, and so do hung connections.
    pub fn restore(&self) {
        self.in_a(&["link", "set", &self.a_if, "up"]);
        self.in_b(&["link", "set", &self.b_if, "up"]);
        // Permanent neighbour entries keep ARP out of the way, so a cut link drops packets
        // silently instead of answering "no route to host" once ARP gives up. Taking a device
        // down flushes them, so they are set again on every restore.
        let (a_addr, b_addr) = (self.a_addr.to_string(), self.b_addr.to_string());
        let (a_if, b_if) = (self.a_if.as_str(), self.b_if.as_str());
        self.in_a(&[
            "neigh",
            "replace",
            &b_addr,
            "lladdr",
            &self.b_mac,
            "dev",
            a_if,
            "nud",
            "permanent",
        ]);
        self.in_b(&[
            "neigh",
            "replace",
            &a_addr,
            "lladdr",
            &self.a_mac,
            "dev",
            b_if,
            "nud",
            "permanent",
        ]);
    }

    fn in_a(&self, args: &[&str]) {
        match &self.a_ns {
            Some(ns) => ip(&[&["-n", ns.name()], args].concat()),
            None => ip(args),
        };
    }

    fn in_b(&self, args: &[&str]) {
        ip(&[&["-n", self.b_ns.name()], args].concat());
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let mut command = Command::new("ip");
        if let Some(ns) = &self.a_ns {
            command.args(["-n", ns.name()]);
        }
        command.args(["link", "delete", &self.a_if]).stdin(Stdio::null()).stderr(Stdio::null());
        let _ = command.status();
    }
}

/// A locally administered MAC address for end `end` of link `id`.
fn mac(id: u32, end: u8) -> String {
    let pid = std::process::id();
    format!("02:6d:{:02x}:{:02x}:{:02x}:{end:02x}", (pid >> 8) & 0xff, pid & 0xff, id & 0xff)
}

/// The two host addresses of a /30 in 10.213.0.0/16, spread by pid so test processes running
/// at once rarely pick the same one.
fn subnet(pid: u32, id: u32) -> (Ipv4Addr, Ipv4Addr) {
    let block = (pid.wrapping_mul(97).wrapping_add(id)) % (1 << 14);
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_distinct_slash_30s_inside_10_213() {
        let (a, b) = subnet(4242, 0);
        assert_eq!(u32::from(b) - u32::from(a), 1);
        assert_eq!(u32::from(a) % 4, 1);
        assert_eq!(a.octets()[..2], [10, 213]);
        assert_ne!(subnet(4242, 1), subnet(4242, 0));
        assert_eq!(subnet(u32::MAX, u32::MAX).1.octets()[..2], [10, 213]);
    }
}
