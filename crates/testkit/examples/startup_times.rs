//! Prints how long each testkit server takes to start and stop on this machine:
//! `cargo run -p mesh-testkit --example startup_times`.

use std::time::Instant;

use mesh_testkit::{KeyType, RedisServer, Sshd};

fn measure(label: &str, rounds: u32, mut start: impl FnMut()) {
    let began = Instant::now();
    for _ in 0..rounds {
        start();
    }
    let each = began.elapsed() / rounds;
    println!("{label:<44} {:>6.1} ms", each.as_secs_f64() * 1000.0);
}

fn main() {
    let rounds = 5;
    println!("mean of {rounds} rounds, start + drop:");
    measure("redis-server, password", rounds, || {
        drop(RedisServer::builder().password("p").start())
    });
    measure("redis-server, TLS (new CA + certificate)", rounds, || {
        drop(RedisServer::builder().tls("cache.test.internal").start())
    });
    measure("redis-server, cluster mode", rounds, || {
        drop(RedisServer::builder().cluster().start())
    });
    measure("sshd, ed25519 host key", rounds, || {
        drop(Sshd::builder().host_key_types(&[KeyType::Ed25519]).start())
    });
    measure("sshd, ed25519 + ecdsa + rsa-2048 host keys", rounds, || drop(Sshd::builder().start()));

    let mut redis = RedisServer::builder().start();
    measure("redis-server stop + start", rounds, || {
        redis.stop();
        redis.start();
    });
    let mut sshd = Sshd::builder().start();
    measure("sshd stop + start", rounds, || {
        sshd.stop();
        sshd.start();
    });
}
