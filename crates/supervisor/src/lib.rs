//! The platform's services, run for development: a TOML manifest (commands,
//! environment, dependencies, readiness, restarts, stop signals) and a
//! supervisor that starts them in order, multiplexes their logs and stops
//! every process it started, with a reaper process that stops them should the
//! supervisor's own process die first.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # async fn demo(vars: BTreeMap<String, String>) -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_supervisor::{check_paths, Manifest, Options, Outcome, Supervisor};
//! let manifest = Manifest::load("services.toml".as_ref(), &vars)?;
//! check_paths(&manifest)?;
//! let log_dir = "logs".into();
//! // A reaper: this binary's hidden subcommand calling `mesh_supervisor::reaper::run`.
//! let mut reaper = std::process::Command::new(std::env::current_exe()?);
//! reaper.arg("__reaper");
//! let (only, color, timestamps, reaper) = (vec![], true, false, Some(reaper));
//! let options = Options { vars, only, log_dir, color, timestamps, reaper };
//! let supervisor = Supervisor::new(manifest, options);
//! let stop = supervisor.stop_handle(); // call stop.request() on Ctrl+C (twice escalates)
//! let (events, mut rx) = tokio::sync::mpsc::channel(1024);
//! let run = tokio::spawn(supervisor.run(events));
//! while let Some(event) = rx.recv().await { /* draw it */ }
//! match run.await?? {
//!     Outcome::Stopped => {}
//!     Outcome::Failed(failure) => return Err(failure.into()),
//! }
//! # Ok(()) }
//! ```

mod interpolate;
mod logs;
mod manifest;
mod probe;
mod process;
pub mod reaper;
mod supervisor;

pub use logs::{LogLine, LogStyle, Stream, MAX_LINE_SHOWN, TAIL_LINES};
pub use manifest::{
    check_paths, check_selected_paths, Check, Condition, Dependency, HttpCheck, LinePattern,
    Manifest, ManifestError, PathError, Probe, Program, Restart, Service, DEFAULT_MANIFEST_FILE,
};
pub use nix::sys::signal::Signal;
pub use reaper::Reaped;
pub use supervisor::{
    Event, Failure, FailureReason, Options, Outcome, StopHandle, SuperviseError, Supervisor,
};
