//! One local port forwarded through the bastion to a host and port inside the VPC.

use serde::Serialize;
use std::fmt;

/// A local listener and the remote target its connections are carried to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Forward {
    /// What the forward is for: `redis`, `postgres`, or `extra-<port>`.
    pub name: String,
    /// The port bound on the local bind addresses.
    pub local_port: u16,
    /// The target as the bastion resolves it (an in-VPC name or address).
    pub remote_host: String,
    pub remote_port: u16,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}:{}", self.name, self.local_port, self.remote_host, self.remote_port)
    }
}
