//! The checks, one module per category, and how they run together: each
//! category concurrently, each bounded, the network ones chained where one
//! needs another's result (Redis through the bastion's session).

pub(crate) mod aws;
pub(crate) mod bastion;
pub(crate) mod config;
pub(crate) mod key;
pub(crate) mod port;
pub(crate) mod redis;
pub(crate) mod services;
pub(crate) mod tools;

use std::future::Future;
use std::time::{Duration, Instant};

use mesh_config::{Config, ConfigError, Secret};

use crate::env::Env;
use crate::{Category, CategoryReport, Check, SharedSession};

/// Runs every category at once; returns their reports and the session the
/// bastion check opened, if any.
pub(crate) async fn run_all(
    env: &Env<'_>,
    config: &Result<Config, ConfigError>,
    passphrase: Option<&Secret>,
) -> (Vec<CategoryReport>, Option<SharedSession>) {
    let limit = env.options.timeout + Duration::from_millis(500);
    let network = async {
        let bastion_limit = env.options.timeout * 2 + limit;
        let ((tunnel, running), (bastion, session)) = tokio::join!(
            timed_pair(Category::Tunnel, limit, port::check(env)),
            timed_pair(Category::Bastion, bastion_limit, bastion::check(env, passphrase)),
        );
        let session = session.flatten();
        let through = running.flatten();
        let redis =
            timed(Category::Redis, limit, redis::check(env, through, session.clone())).await;
        (tunnel, bastion, redis, session)
    };
    let (configuration, tools, key, aws, services, (tunnel, bastion, redis, session)) = tokio::join!(
        timed(Category::Configuration, limit, config::check(env, config)),
        timed(Category::Tools, limit, tools::check(env)),
        timed(Category::SshKey, limit, key::check(env, passphrase)),
        timed(Category::Aws, limit, aws::check(env)),
        timed(Category::Services, limit, services::check(env)),
        network,
    );
    (vec![configuration, tools, key, aws, bastion, tunnel, redis, services], session)
}

/// Every category, failed, when the whole run ran out of time.
pub(crate) fn out_of_time(deadline: Duration) -> Vec<CategoryReport> {
    let message = format!("the doctor did not finish within {}s", deadline.as_secs_f32());
    let check = Check::fail(
        "deadline",
        message.clone(),
        "run `cargo xtask doctor -v` to see which check hangs, and report it",
    );
    crate::Category::ALL
        .iter()
        .map(|&c| CategoryReport::new(c, message.clone(), vec![check.clone()]))
        .collect()
}

/// A category's report, timed, or a `[✗]` naming the limit it overran.
async fn timed(
    category: Category,
    limit: Duration,
    check: impl Future<Output = CategoryReport>,
) -> CategoryReport {
    timed_pair(category, limit, async { (check.await, ()) }).await.0
}

/// Like [`timed`] for checks that also hand back a value (`None` when overrun).
async fn timed_pair<T>(
    category: Category,
    limit: Duration,
    check: impl Future<Output = (CategoryReport, T)>,
) -> (CategoryReport, Option<T>) {
    let started = Instant::now();
    match tokio::time::timeout(limit, check).await {
        Ok((mut report, value)) => {
            report.elapsed = started.elapsed();
            (report, Some(value))
        }
        Err(_) => {
            let message = format!("did not finish within {}s", limit.as_secs_f32());
            let fix = "run again with -v; if it persists, raise --timeout";
            let check = Check::fail(category.title(), message.clone(), fix).took(limit);
            let mut report = CategoryReport::new(category, message, vec![check]);
            report.elapsed = started.elapsed();
            (report, None)
        }
    }
}

/// Runs `check` and stamps the time it took on its result.
pub(crate) async fn stamp(check: impl Future<Output = Check>) -> Check {
    let started = Instant::now();
    let result = check.await;
    let elapsed = started.elapsed();
    result.took(elapsed)
}

/// Categories that need the configuration report this when it did not load.
pub(crate) fn needs_config(category: Category) -> CategoryReport {
    CategoryReport::skipped(category, "not checked: the configuration has errors (see above)")
}

/// Categories left out of the quick check.
pub(crate) fn not_quick(category: Category) -> CategoryReport {
    CategoryReport::skipped(category, "not checked by the quick check (run `cargo xtask doctor`)")
}
