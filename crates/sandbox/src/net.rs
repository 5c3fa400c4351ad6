//! Free loopback ports and random secrets, the two things every sandbox piece
//! needs before it starts.

use crate::{Result, SandboxError};
use std::net::{Ipv4Addr, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// FIXME: the port is released before the caller binds it (redis-server and
/// the tunnel bind it themselves), so another process can take it in between;
/// the cost is a rare start failure that says which port was taken.
pub fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| {
        SandboxError::Bind { host: Ipv4Addr::LOCALHOST.to_string(), port: 0, source }
    })?;
    listener.local_addr().map(|addr| addr.port()).map_err(|source| SandboxError::Bind {
        host: Ipv4Addr::LOCALHOST.to_string(),
        port: 0,
        source,
    })
}

/// `len` random characters from `[a-z0-9]` (DNS-safe, shell-safe, URL-safe).
pub(crate) fn random_token(len: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|err| SandboxError::Random(err.to_string()))?;
    // 256 is not a multiple of 36, so the first 4 letters come up slightly more
    // often; for throwaway passwords of 32 characters that bias does not matter.
    Ok(bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

/// 32 random bytes, the seed of an ed25519 key.
pub(crate) fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|err| SandboxError::Random(err.to_string()))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_differ_and_use_the_safe_alphabet() {
        let a = random_token(32).unwrap();
        let b = random_token(32).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
    }

    #[test]
    fn free_port_can_be_bound_again() {
        let port = free_loopback_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
