//! Loading the service manifest: the default file's contract, interpolation,
//! and the exact errors a team sees for a bad file.

use mesh_supervisor::{
    check_paths, Check, Condition, Manifest, ManifestError, Program, Restart, Signal,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("/team/services.toml"), &vars(&[("ROOT", "/src/mesh")]))
}

fn error(text: &str) -> String {
    parse(text).expect_err("the manifest should be refused").to_string()
}

fn default_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services.toml")
}

#[test]
fn default_manifest_describes_the_services_contract() {
    let config = vars(&[
        ("MESH_ROOT", "/srv/mesh"),
        ("ENVIRONMENT", "development"),
        ("REDIS_TUNNEL_PORT", "6380"),
        ("REDIS_PASSWORD", "s3cret"),
        ("REDIS_TLS_ENABLED", "true"),
        ("REDIS_TLS_SKIP_VERIFY", "true"),
    ]);
    let manifest = Manifest::load(&default_manifest(), &config).unwrap();
    let names: Vec<&str> = manifest.services().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["rest-api", "mcp-server", "worker"]);

    let api = manifest.service("rest-api").unwrap();
    assert_eq!(api.program, Program::Argv(vec!["go".into(), "run".into(), "./cmd/api".into()]));
    assert_eq!(api.cwd, Path::new("/srv/mesh/apps/rest-api"));
    assert_eq!(api.port, Some(8081));
    let Some(Check::Http(http)) = api.ready.as_ref().map(|p| &p.check) else { panic!() };
    assert_eq!((http.url.as_str(), http.status), ("http://127.0.0.1:8081/readyz", 200));

    let mcp = manifest.service("mcp-server").unwrap();
    assert_eq!(mcp.depends_on[0].service, "rest-api");
    assert_eq!(mcp.depends_on[0].condition, Condition::Ready);
    let Some(Check::Http(http)) = mcp.ready.as_ref().map(|p| &p.check) else { panic!() };
    assert_eq!(http.body_contains.as_deref(), Some("healthy"));
    assert_eq!(manifest.service("worker").unwrap().depends_on[0].service, "mcp-server");

    for service in manifest.services() {
        let env = &service.env;
        assert_eq!(env["REDIS_ADDR"], "127.0.0.1:6380", "{}", service.name);
        assert_eq!(env["REDIS_ADDRESS"], "127.0.0.1:6380");
        assert_eq!(env["REDIS_PASSWORD"], "s3cret");
        assert_eq!(env["REDIS_TLS_ENABLED"], "true");
        assert_eq!(env["REDIS_TLS_SKIP_VERIFY"], "true");
        assert_eq!(env["ENVIRONMENT"], "development");
        assert_eq!(env["MCP_CONFIG_FILE"], "/srv/mesh/configs/config.development.yaml");
        for (database, db) in
            [("HOST", "HOST"), ("PORT", "PORT"), ("NAME", "NAME"), ("USER", "USER")]
        {
            assert_eq!(env[&format!("DATABASE_{database}")], env[&format!("DB_{db}")]);
        }
        assert_eq!(env["DB_HOST"], "127.0.0.1");
    }
    assert_eq!(manifest.required_programs().into_iter().collect::<Vec<_>>(), ["go".to_string()]);
}

#[test]
fn fail_default_manifest_with_missing_checkout_says_how_to_set_mesh_root() {
    let config = vars(&[("MESH_ROOT", "/nonexistent/developer-mesh")]);
    let path = default_manifest();
    let manifest = Manifest::load(&path, &config).unwrap();
    let error = check_paths(&manifest).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "service `rest-api`: working directory /nonexistent/developer-mesh/apps/rest-api does \
             not exist; it is built from MESH_ROOT=/nonexistent/developer-mesh in {}: point \
             MESH_ROOT at your checkout of the platform (the directory holding `apps/`), in \
             .env.local or the shell, e.g. `MESH_ROOT=$HOME/src/developer-mesh`",
            path.display()
        )
    );
}

#[test]
fn check_paths_passes_when_the_checkout_exists() {
    let root = tempfile::tempdir().unwrap();
    for app in ["rest-api", "mcp-server", "worker"] {
        std::fs::create_dir_all(root.path().join("apps").join(app)).unwrap();
    }
    let config = vars(&[("MESH_ROOT", root.path().to_str().unwrap())]);
    let manifest = Manifest::load(&default_manifest(), &config).unwrap();
    check_paths(&manifest).unwrap();
}

#[test]
fn fail_undefined_variable_names_it_the_service_and_the_file() {
    let text = "[services.api]\ncommand = [\"run\"]\nenv = { A = \"${MESH_TEST_UNSET_VAR}/x\" }\n";
    assert_eq!(
        error(text),
        "/team/services.toml: service `api`, `env.A` uses `${MESH_TEST_UNSET_VAR}`, which is not \
         set; set MESH_TEST_UNSET_VAR in .env.local or the shell, or give a fallback with \
         `${MESH_TEST_UNSET_VAR:-value}`"
    );
}

#[test]
fn interpolation_reads_vars_then_fallbacks_and_keeps_double_dollars() {
    let text = r#"
        [env]
        SHARED = "shared"
        A = "from-top"
        [services.api]
        shell = "echo $$HOME ${ROOT}"
        cwd = "${ROOT}/apps/api"
        env = { A = "${ROOT}", B = "${MESH_TEST_UNSET_VAR:-fallback}", C = 8081, D = true }
    "#;
    let manifest = parse(text).unwrap();
    let api = manifest.service("api").unwrap();
    assert_eq!(api.program, Program::Shell("echo $HOME /src/mesh".into()));
    assert_eq!(api.program.argv(), ["sh", "-c", "echo $HOME /src/mesh"]);
    assert_eq!(api.cwd, Path::new("/src/mesh/apps/api"));
    let env: Vec<(&str, &str)> = api.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        env,
        [("A", "/src/mesh"), ("B", "fallback"), ("C", "8081"), ("D", "true"), ("SHARED", "shared")]
    );
}

#[test]
fn fail_cycle_is_named_in_order() {
    let text = r#"
        [services.a]
        command = ["a"]
        depends_on = ["c"]
        [services.b]
        command = ["b"]
        depends_on = ["a"]
        [services.c]
        command = ["c"]
        depends_on = [{ service = "b", condition = "started" }]
    "#;
    assert_eq!(
        error(text),
        "/team/services.toml: `depends_on` forms a cycle: a -> c -> b -> a; remove one of these \
         dependencies"
    );
}

#[test]
fn fail_unknown_dependency_suggests_the_close_name() {
    let text = r#"
        [services.rest-api]
        command = ["api"]
        [services.worker]
        command = ["w"]
        depends_on = ["rest_api"]
    "#;
    assert_eq!(
        error(text),
        "/team/services.toml: service `worker`, `depends_on`: there is no service `rest_api` \
         (did you mean `rest-api`?); depend on one of: rest-api, worker"
    );
}

#[test]
fn fail_unknown_key_names_the_service_and_the_likely_key() {
    let text = "[services.api]\ncomand = [\"run\"]\n";
    let message = error(text);
    assert!(message.starts_with("/team/services.toml: in service `api`: "), "{message}");
    assert!(message.contains("unknown field `comand`"), "{message}");
    assert!(message.ends_with("did you mean `command`?"), "{message}");
}

#[test]
fn fail_bad_duration_says_how_to_write_one() {
    let text = "[services.api]\ncommand = [\"run\"]\nready = { tcp = \"127.0.0.1:1\", interval = \"5 secs please\" }\n";
    assert_eq!(
        error(text),
        "/team/services.toml: service `api`, `ready.interval`: `5 secs please` is not a duration; \
         write it like \"500ms\", \"30s\" or \"2m\""
    );
}

#[test]
fn fail_secret_in_argv_is_refused() {
    let text = "[services.api]\ncommand = [\"redis-cli\", \"-a\", \"${REDIS_PASSWORD:-x}\"]\n";
    assert_eq!(
        error(text),
        "/team/services.toml: service `api`, `command`: `${REDIS_PASSWORD}` is a secret and \
         would show in the process list; pass it through `env` instead (`env = { \
         REDIS_PASSWORD = \"${REDIS_PASSWORD}\" }`)"
    );
}

#[test]
fn fail_command_written_as_a_string_points_to_argv_or_shell() {
    let message = error("[services.api]\ncommand = \"go run .\"\n");
    assert!(message.contains("`command` is a string (`go run .`)"), "{message}");
    assert!(message.contains("use `shell = \"...\"`"), "{message}");
}

#[test]
fn fail_probe_needs_exactly_one_kind() {
    let message =
        error("[services.api]\ncommand = [\"x\"]\nready = { tcp = \"127.0.0.1:1\", http = \"http://a/\" }\n");
    assert!(message.contains("exactly one of `http`, `tcp`, `command`, `log_line`"), "{message}");
    let message = error("[services.api]\ncommand = [\"x\"]\nready = { http = \"https://a/\" }\n");
    assert!(message.contains("not a plain http:// URL"), "{message}");
}

#[test]
fn restart_stop_and_probe_settings_are_read() {
    let text = r#"
        [services.api]
        command = ["x"]
        restart = { on_failure = { max = 5, backoff_max = "3s" } }
        stop_signal = "INT"
        stop_grace = "250ms"
        ready = { log_line = "listening on :(\\d+)", interval = "100ms", retries = 7 }
        [services.other]
        command = ["y"]
        restart = "never"
    "#;
    let manifest = parse(text).unwrap();
    let api = manifest.service("api").unwrap();
    assert_eq!(api.restart, Restart::OnFailure { max: 5, backoff_max: Duration::from_secs(3) });
    assert_eq!(api.stop_signal, Signal::SIGINT);
    assert_eq!(api.stop_grace, Duration::from_millis(250));
    let probe = api.ready.as_ref().unwrap();
    assert_eq!((probe.interval, probe.retries), (Duration::from_millis(100), 7));
    let Check::LogLine(pattern) = &probe.check else { panic!() };
    assert!(pattern.matches("http: listening on :8080"));
    assert!(!pattern.matches("starting"));
    assert_eq!(manifest.service("other").unwrap().restart, Restart::Never);
    assert_eq!(manifest.service("other").unwrap().stop_grace, Duration::from_secs(10));

    let message = error("[services.api]\ncommand = [\"x\"]\nstop_signal = \"TERMINATE\"\n");
    assert!(message.contains("`TERMINATE` is not a signal"), "{message}");
}

#[test]
fn only_selects_a_subset_with_its_dependencies() {
    let text = r#"
        [services.db]
        command = ["db"]
        [services.api]
        command = ["api"]
        depends_on = ["db"]
        [services.web]
        command = ["web"]
        depends_on = ["api"]
        [services.docs]
        command = ["docs"]
    "#;
    let manifest = parse(text).unwrap();
    let names = |idx: Vec<usize>| -> Vec<String> {
        idx.into_iter().map(|i| manifest.services()[i].name.clone()).collect()
    };
    assert_eq!(names(manifest.select(&["api".into()]).unwrap()), ["db", "api"]);
    assert_eq!(manifest.select(&[]).unwrap().len(), 4);
    assert_eq!(
        manifest.select(&["wbe".into()]).unwrap_err().to_string(),
        "no service `wbe` in /team/services.toml (did you mean `web`?); the services are: db, \
         api, docs, web"
    );
}

#[test]
fn fail_unset_mesh_root_says_what_it_points_at() {
    // Built directly: a developer's shell may well have MESH_ROOT set.
    let error = ManifestError::Undefined {
        path: PathBuf::from("/work/services.toml"),
        service: "rest-api".into(),
        key: "cwd".into(),
        name: "MESH_ROOT".into(),
    };
    assert_eq!(
        error.to_string(),
        "/work/services.toml: service `rest-api`, `cwd` uses `${MESH_ROOT}`, which is not set; \
         set MESH_ROOT to your checkout of the platform (the directory holding `apps/`) in \
         .env.local or the shell, e.g. `MESH_ROOT=$HOME/src/developer-mesh`"
    );
}
