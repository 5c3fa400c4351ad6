//! Prints how fast the supervisor moves a child's output to events and the log
//! file, and how much memory it holds while doing so: a million short lines,
//! then one 100 MB line without a newline until the end.
//!
//! `cargo run --release -p mesh-supervisor --example log_throughput`

use mesh_supervisor::{Event, Manifest, Options, Supervisor};
use std::collections::BTreeMap;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cases = [
        (
            "lines",
            "yes 'a line of some sixty characters, about what a service logs' | head -n 1000000",
        ),
        ("one-line", "head -c 100000000 /dev/zero | tr '\\0' x; echo"),
    ];
    for (name, shell) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.toml");
        let text = format!(
            "[services.{name}]\nshell = \"{}\"\n",
            shell.replace('\\', "\\\\").replace('"', "\\\"")
        );
        std::fs::write(&path, text).unwrap();
        let vars = BTreeMap::new();
        let manifest = Manifest::load(&path, &vars).unwrap();
        let log_dir = dir.path().join("logs");
        let options =
            Options { vars, only: vec![], log_dir, color: false, timestamps: true, reaper: None };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let began = Instant::now();
        let run = tokio::spawn(Supervisor::new(manifest, options).run(tx));
        let (mut lines, mut shown_bytes) = (0u64, 0u64);
        while let Some(event) = rx.recv().await {
            if let Event::Log(line) = event {
                lines += 1;
                shown_bytes += line.rendered.len() as u64;
            }
        }
        let _ = run.await;
        let took = began.elapsed();
        let file = std::fs::metadata(dir.path().join(format!("logs/{name}.log"))).unwrap().len();
        println!(
            "{name:>8}: {lines} lines, {:.1} MB shown, {:.1} MB in the log file, {:.2} s, \
             {:.0} MB/s, peak RSS {}",
            shown_bytes as f64 / 1e6,
            file as f64 / 1e6,
            took.as_secs_f64(),
            file as f64 / 1e6 / took.as_secs_f64(),
            peak_rss()
        );
    }
}

fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map_or("unknown".into(), |v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}
