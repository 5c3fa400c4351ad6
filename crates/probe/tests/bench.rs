//! The load generator against a real redis-server: every test runs, figures are sane, error
//! replies are counted, and the keys it wrote are gone afterwards.

use mesh_config::Secret;
use mesh_probe::bench::{self, BenchOptions, Test};
use mesh_probe::{NoTunnel, Target, TlsMode, TlsState};
use mesh_testkit::RedisServer;

fn small(tests: Vec<Test>) -> BenchOptions {
    BenchOptions {
        clients: 4,
        requests: 2_000,
        pipeline: 4,
        value_size: 16,
        keyspace: 500,
        tests,
        progress: false,
    }
}

#[test]
fn runs_every_test_and_deletes_only_its_own_keys() {
    let server = RedisServer::builder().password("s3cret").start();
    server.cli(&["SET", "user:1", "keep me"]);
    let target = Target::new("127.0.0.1", server.port()).password(Secret::new("s3cret"));

    let report = bench::run_blocking(&target, &NoTunnel, &small(Test::ALL.to_vec())).unwrap();

    let names: Vec<_> = report.results.iter().map(|r| r.test.name()).collect();
    assert_eq!(names, ["ping", "set", "get", "incr", "lpush", "xadd"]);
    for result in &report.results {
        assert_eq!((result.requests, result.errors), (2_000, 0), "{result:?}");
        assert!(result.ops_per_sec > 0.0, "{result:?}");
        let l = result.latency_ms;
        assert!(0.0 < l.p50 && l.p50 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max, "{result:?}");
    }
    assert!(report.key_prefix.starts_with("mesh-bench:{"), "{}", report.key_prefix);
    // SET and INCR wrote at most 500 keys each, LPUSH and XADD one each.
    assert!(report.keys_deleted > 2 && report.keys_deleted <= 1002, "{report:?}");
    assert_eq!(server.cli(&["DBSIZE"]), "1");
    assert_eq!(server.cli(&["GET", "user:1"]), "keep me");
    assert!(!serde_json::to_string(&report).unwrap().contains("s3cret"));
}

#[test]
fn counts_error_replies_and_keeps_the_first() {
    let server = RedisServer::builder()
        .password("admin")
        .extra_config("user reader on >reader-pw ~* +@read +ping +scan +unlink")
        .start();
    let target =
        Target::new("127.0.0.1", server.port()).user("reader").password(Secret::new("reader-pw"));

    let report =
        bench::run_blocking(&target, &NoTunnel, &small(vec![Test::Get, Test::Set])).unwrap();

    assert_eq!(report.results[0].errors, 0);
    let set = &report.results[1];
    assert_eq!(set.errors, 2_000);
    let first = set.first_error.as_deref().unwrap_or_default();
    assert!(first.starts_with("NOPERM"), "{first}");
}

#[test]
fn benchmarks_over_tls_verified_as_the_endpoint_name() {
    let server = RedisServer::builder().tls("cache.mesh.test").start();
    let ca_cert = Some(server.tls().unwrap().ca_cert.clone());
    let target =
        Target::new("cache.mesh.test", 6379).via(server.addr()).tls(TlsMode::Verify { ca_cert });

    let report = bench::run_blocking(&target, &NoTunnel, &small(vec![Test::Set])).unwrap();

    assert_eq!(report.tls, TlsState::Verified);
    assert_eq!((report.results[0].requests, report.results[0].errors), (2_000, 0));
}

#[test]
fn a_failing_connection_is_classified_before_any_test_runs() {
    let server = RedisServer::builder().password("s3cret").start();
    let target = Target::new("127.0.0.1", server.port());
    let err = bench::run_blocking(&target, &NoTunnel, &small(vec![Test::Set])).unwrap_err();
    assert_eq!(err.class(), "noauth");
}
