//! WebAssembly plugins (cairn-only): the quick-start config, denials that never reach raft,
//! and hostile plugins the node survives. The example plugins are built for wasm32-wasip2
//! by scripts/test.sh into `plugins/target/wasm32-wasip2/release` (or `CAIRN_PLUGIN_DIR`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_tests::{parse_metrics, run_until_exit, server_args, Layout, Server, ServerKind};

use etcd_client::{GetOptions, Txn, TxnOp};

use crate::{assert_grpc_error, current_revision, grpc_error, ok, Code};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A built example plugin, by crate name.
pub(crate) fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CAIRN_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(REPO).join("plugins/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} missing: build the plugins first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Starts a server with `plugins_yaml` (the `plugins:` list) in its config file.
pub(crate) async fn start_with_plugins(plugins_yaml: &str) -> Server {
    start_with_plugins_and(plugins_yaml, &[]).await
}

/// [`start_with_plugins`], with more flags.
pub(crate) async fn start_with_plugins_and(plugins_yaml: &str, flags: &[String]) -> Server {
    Server::start_custom(|layout: &Layout| {
        let path = layout.dir.join("plugins.yaml");
        std::fs::write(&path, format!("plugins:\n{plugins_yaml}"))?;
        let mut args = server_args(
            &layout.name,
            &layout.data_dir,
            layout.client_port,
            layout.peer_port,
        );
        args.push(format!("--config-file={}", path.display()));
        args.extend_from_slice(flags);
        Ok(args)
    })
    .await
    .expect("server with plugins starts")
}

/// The value of metric `name` whose labels include every pair of `labels`, 0 if none.
pub(crate) async fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, body) = server.http_get("/metrics").await.expect("metrics");
    parse_metrics(&body)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn quick_start_config_guards_json_and_leaves_other_keys_alone() {
    plugin("schema-guard");
    // The repository's own quick-start file, with flags overriding its name and data dir.
    let server = Server::start_custom(|layout: &Layout| {
        let mut args = server_args(
            &layout.name,
            &layout.data_dir,
            layout.client_port,
            layout.peer_port,
        );
        args.push(format!("--config-file={REPO}/config/plugins.yaml"));
        Ok(args)
    })
    .await
    .expect("quick start serves");
    let mut client = server.client().await.unwrap();

    ok(&server, &["put", "/json/a", r#"{"a":1}"#]).await;
    let before = current_revision(&mut client).await;
    let out = server.ctl(&["put", "/json/b", "nope"]).await.unwrap();
    assert_ne!(out.code, 0, "a non-JSON value was accepted");
    assert!(
        out.stderr
            .contains("plugin schema-guard: /json/b: value is not JSON"),
        "{}",
        out.stderr
    );
    assert_eq!(
        current_revision(&mut client).await,
        before,
        "a denied put reached raft"
    );
    assert!(client.get("/json/b", None).await.unwrap().kvs().is_empty());

    let (code, message) = grpc_error(client.put("/json/users/1", r#"{"age":3}"#, None).await);
    assert_eq!(code, Code::PermissionDenied);
    assert_eq!(
        message,
        "plugin schema-guard: /json/users/1: missing required field `name`"
    );

    ok(&server, &["put", "/other", "x"]).await;
    assert_eq!(current_revision(&mut client).await, before + 1);

    let calls = |result| {
        [
            ("plugin", "schema-guard"),
            ("hook", "admission"),
            ("result", result),
        ]
    };
    assert_eq!(
        metric(&server, "cairn_plugin_calls_total", &calls("deny")).await,
        2.0
    );
    // /other was never shown to the plugin.
    assert_eq!(
        metric(&server, "cairn_plugin_calls_total", &calls("allow")).await,
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "cairn_plugin_loaded",
            &[("plugin", "schema-guard")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn hostile_plugins_are_contained_and_their_policy_decides() {
    let hostile = plugin("hostile").display().to_string();
    let entry = |name: &str, mode: &str, policy: &str| {
        format!(
            "  - {{name: {name}, path: {hostile}, hooks: [admission], prefixes: [/{name}/], \
             failure-policy: {policy}, memory: 4MiB, config: {{mode: {mode}}}}}\n"
        )
    };
    // The loops end on their fuel budget, except `wall`, whose budget is too large to
    // spend: its wall-clock backstop stops it.
    let wall = entry("wall", "loop", "fail-closed").replace(
        "memory: 4MiB",
        "memory: 4MiB, fuel: 10000000000, deadline: 50ms",
    );
    let yaml = [
        entry("loop", "loop", "fail-closed"),
        wall,
        entry("alloc", "alloc", "fail-closed"),
        entry("trap", "trap", "fail-closed"),
        entry("garbage", "garbage", "fail-closed"),
        entry("spam", "spam", "fail-closed"),
        entry("open-loop", "loop", "fail-open"),
        entry("open-trap", "trap", "fail-open"),
    ]
    .concat();
    let server = start_with_plugins(&yaml).await;
    let mut client = server.client().await.unwrap();

    let refused = [
        (
            "loop",
            "plugin loop: ran out of fuel (write refused: fail-closed)",
        ),
        (
            "wall",
            "plugin wall: timed out (write refused: fail-closed)",
        ),
        (
            "alloc",
            "plugin alloc: exceeded its memory limit (write refused: fail-closed)",
        ),
        ("trap", "plugin trap: trapped"),
        ("garbage", "plugin garbage: answered nonsense"),
    ];
    for (name, want) in refused {
        let before = current_revision(&mut client).await;
        let started = Instant::now();
        let (code, message) = grpc_error(client.put(format!("/{name}/k"), "v", None).await);
        assert_eq!(code, Code::PermissionDenied, "{name}: {message}");
        assert!(message.starts_with(want), "{name}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name} held the write too long"
        );
        assert_eq!(
            current_revision(&mut client).await,
            before,
            "{name}: write reached raft"
        );
        // The node keeps serving writes the plugin does not cover.
        client.put("/fine", name, None).await.unwrap();
    }
    // Log spam is capped, and the call itself is fine.
    client.put("/spam/k", "v", None).await.unwrap();
    // Fail-open lets the write through.
    for name in ["open-loop", "open-trap"] {
        client.put(format!("/{name}/k"), "v", None).await.unwrap();
    }

    let count = |name: &'static str| [("plugin", name), ("hook", "admission")];
    assert_eq!(
        metric(&server, "cairn_plugin_timeouts_total", &count("loop")).await,
        1.0
    );
    assert_eq!(
        metric(&server, "cairn_plugin_timeouts_total", &count("wall")).await,
        1.0
    );
    assert_eq!(
        metric(&server, "cairn_plugin_timeouts_total", &count("open-loop")).await,
        1.0
    );
    assert_eq!(
        metric(&server, "cairn_plugin_traps_total", &count("alloc")).await,
        1.0
    );
    assert_eq!(
        metric(&server, "cairn_plugin_traps_total", &count("trap")).await,
        1.0
    );
    assert_eq!(
        metric(&server, "cairn_plugin_traps_total", &count("garbage")).await,
        1.0
    );
    let failures = [
        ("plugin", "trap"),
        ("hook", "admission"),
        ("result", "failure"),
    ];
    assert_eq!(
        metric(&server, "cairn_plugin_calls_total", &failures).await,
        1.0
    );
    let log = server.log();
    assert!(
        log.contains("plugin log limit reached"),
        "spam was not capped"
    );
    // The host keeps 16 KiB of a call's log: about 150 of the 2,000 messages.
    assert!(log.matches("spam ").count() < 200, "spam reached the log");
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn deny_code_rewrite_and_namespace_quota() {
    let hostile = plugin("hostile").display().to_string();
    let quota = plugin("namespace-quota").display().to_string();
    let yaml = format!(
        "  - {{name: pre, path: {hostile}, hooks: [admission], prefixes: [/pre/], \
              deny-code: failed-precondition, config: {{mode: deny}}}}
  - {{name: rw, path: {hostile}, hooks: [admission], prefixes: [/rw/], allow-rewrite: true, \
              config: {{mode: rewrite}}}}
  - {{name: no-rw, path: {hostile}, hooks: [admission], prefixes: [/no-rw/], \
              config: {{mode: rewrite}}}}
  - name: quota
    path: {quota}
    hooks: [admission]
    prefixes: [/team/, /free/]
    values: false
    config:
      namespaces:
        - {{prefix: /team/, owners: [alice]}}
        - {{prefix: /free/, max-keys: 2, max-value-bytes: 8}}
"
    );
    let server = start_with_plugins(&yaml).await;
    let mut client = server.client().await.unwrap();

    let (code, message) = grpc_error(client.put("/pre/k", "v", None).await);
    assert_eq!(
        (code, message.as_str()),
        (Code::FailedPrecondition, "plugin pre: hostile says no")
    );

    client.put("/rw/k", "original", None).await.unwrap();
    let got = client.get("/rw/k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"rewritten");
    let (code, message) = grpc_error(client.put("/no-rw/k", "v", None).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("allow-rewrite is off"), "{message}");

    // The anonymous caller owns no team namespace.
    let (code, message) = grpc_error(client.put("/team/k", "v", None).await);
    assert_eq!(
        (code, message.as_str()),
        (
            Code::PermissionDenied,
            "plugin quota: \"\" does not own namespace /team/"
        )
    );
    client.put("/free/1", "a", None).await.unwrap();
    client.put("/free/2", "b", None).await.unwrap();
    client.put("/free/1", "c", None).await.unwrap(); // an update needs no room
    let (_, message) = grpc_error(client.put("/free/3", "d", None).await);
    assert_eq!(message, "plugin quota: namespace /free/ is full (2 keys)");
    let (_, message) = grpc_error(client.put("/free/1", "123456789", None).await);
    assert_eq!(
        message,
        "plugin quota: value of 9 bytes exceeds 8 bytes in namespace /free/"
    );
}

/// A `max-keys` above the 1000 pairs one `host.range` returns: namespace-quota counts the
/// namespace with `host.count`, so the namespace still fills up at exactly its limit.
#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn namespace_quota_counts_past_the_range_cap() {
    const MAX: usize = 1500;
    let quota = plugin("namespace-quota").display().to_string();
    let yaml = format!(
        "  - name: quota
    path: {quota}
    hooks: [admission]
    prefixes: [/big/]
    values: false
    config:
      namespaces:
        - {{prefix: /big/, max-keys: {MAX}}}
"
    );
    let server = start_with_plugins(&yaml).await;
    let mut client = server.client().await.unwrap();
    let keys: Vec<String> = (0..MAX).map(|i| format!("/big/{i:04}")).collect();
    // etcd's default --max-txn-ops is 128.
    for batch in keys.chunks(125) {
        let puts = batch.iter().map(|k| TxnOp::put(k.as_str(), "v", None));
        let resp = client
            .txn(Txn::new().and_then(puts.collect::<Vec<_>>()))
            .await
            .unwrap();
        assert!(resp.succeeded());
    }
    let held = client
        .get(
            "/big/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(held.count(), MAX as i64);

    assert_grpc_error(
        client.put("/big/new", "v", None).await,
        Code::PermissionDenied,
        &format!("plugin quota: namespace /big/ is full ({MAX} keys)"),
    );
    client
        .put(keys[MAX - 1].as_str(), "updated", None)
        .await
        .unwrap();
    let got = client.get(keys[MAX - 1].as_str(), None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"updated");
    // Room made by a delete is room again.
    client.delete(keys[0].as_str(), None).await.unwrap();
    client.put("/big/new", "v", None).await.unwrap();
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn a_bad_plugin_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    let cases = [
        (
            dir.path().join("missing.wasm"),
            "plugin \"broken\": cannot read",
        ),
        (not_wasm, "plugin \"broken\": "),
    ];
    for (path, want) in cases {
        let config = dir.path().join("c.yaml");
        std::fs::write(
            &config,
            format!(
                "plugins:\n  - {{name: broken, path: {}, hooks: [admission]}}\n",
                path.display()
            ),
        )
        .unwrap();
        let mut args = server_args(
            "n",
            &dir.path().join("data"),
            cairn_tests::free_port().unwrap(),
            cairn_tests::free_port().unwrap(),
        );
        args.push(format!("--config-file={}", config.display()));
        let exited = run_until_exit(ServerKind::Cairn, &args, Duration::from_secs(20))
            .await
            .expect("cairn exits");
        assert!(!exited.status.success());
        assert!(exited.output.contains(want), "{}", exited.output);
        assert!(
            exited.output.contains("is not a valid cairn plugin") || want.contains("read"),
            "{}",
            exited.output
        );
    }
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn plugin_check_accepts_components_and_names_bad_files() {
    let bin = ServerKind::Cairn.binary().unwrap();
    let good = plugin("schema-guard");
    let out = std::process::Command::new(&bin)
        .args(["plugin", "check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok (version "));

    let bad = PathBuf::from(REPO).join("README.md");
    let out = std::process::Command::new(&bin)
        .args(["plugin", "check"])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("README.md: not a valid cairn plugin"),
        "{stdout}"
    );
}

/// Runs `cairn plugin ARGS...` and returns (success, stdout, stderr).
async fn plugin_cli(args: &[&str]) -> (bool, String, String) {
    let bin = ServerKind::Cairn.binary().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&bin)
            .arg("plugin")
            .args(args)
            .output(),
    )
    .await
    .expect("cairn plugin finishes within 2 minutes")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `guard` plugin's entry: `file` on /json/, with `memory`.
fn guard_config(file: &std::path::Path, memory: &str) -> String {
    format!(
        "plugins:\n  - {{name: guard, path: {}, hooks: [admission], prefixes: [/json/], memory: {memory}}}\n",
        file.display()
    )
}

/// The version `GET /cairn/v1/plugins` reports for `name`.
async fn loaded_version(server: &Server, name: &str) -> Option<String> {
    let (_, body) = server.http_get("/cairn/v1/plugins").await.expect("list");
    let listing: serde_json::Value = serde_json::from_str(&body).expect("JSON listing");
    listing["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["version"].as_str().map(str::to_owned))
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn hot_reload_under_load_fails_no_allowed_write_and_keeps_the_old_version() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let schema_guard = plugin("schema-guard");
    // Another component that allows every write: swapping to it changes the module.
    let allow_all = plugin("hostile");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugins.yaml");
    std::fs::write(&config, guard_config(&schema_guard, "16MiB")).unwrap();
    let server = Server::start_with(&[&format!("--config-file={}", config.display())])
        .await
        .unwrap();
    let endpoint = server.client_url();
    let first = loaded_version(&server, "guard")
        .await
        .expect("guard loaded");

    // Bounded load: four clients put JSON objects (which every version allows) until the
    // reloads are done, at most 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let mut client = server.client().await.unwrap();
        let stop = stop.clone();
        load.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let until = Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                match client
                    .put(
                        format!("/json/{worker}/{i}"),
                        format!(r#"{{"n":{i}}}"#),
                        None,
                    )
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                i += 1;
            }
            (ok, failed)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Four swaps of the module, by the CLI and by SIGHUP in turn, ending on schema-guard.
    let versions = [
        (&allow_all, "cli"),
        (&schema_guard, "hup"),
        (&allow_all, "hup"),
        (&schema_guard, "cli"),
    ];
    let mut current = first.clone();
    for (file, how) in versions {
        std::fs::write(&config, guard_config(file, "16MiB")).unwrap();
        if how == "cli" {
            let (ok, stdout, stderr) = plugin_cli(&["reload", "--endpoint", &endpoint]).await;
            assert!(ok, "{stdout}{stderr}");
            assert!(
                stdout.starts_with("loaded guard ") && stdout.contains(&format!("(was {current})")),
                "{stdout}"
            );
        } else {
            let pid = i32::try_from(server.pid().unwrap()).unwrap();
            kill(Pid::from_raw(pid), Signal::SIGHUP).unwrap();
            let until = Instant::now() + Duration::from_secs(60);
            while loaded_version(&server, "guard").await.as_ref() == Some(&current) {
                assert!(Instant::now() < until, "SIGHUP did not reload the plugin");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let now = loaded_version(&server, "guard").await.unwrap();
        assert_ne!(now, current, "{how} reload kept the old module");
        current = now;
    }
    assert_eq!(current, first, "the last swap is back to schema-guard");

    // A broken file, then a version that fails its self-check (a memory limit below the
    // component's own initial memory): both reported, and the old version keeps serving.
    let not_wasm = dir.path().join("broken.wasm");
    std::fs::write(&not_wasm, b"not a component").unwrap();
    for (yaml, want) in [
        (
            guard_config(&not_wasm, "16MiB"),
            "is not a valid cairn plugin component",
        ),
        (
            guard_config(&schema_guard, "64KiB"),
            "failed its self-check",
        ),
    ] {
        std::fs::write(&config, yaml).unwrap();
        let (ok, stdout, _) = plugin_cli(&["reload", "--endpoint", &endpoint]).await;
        assert!(!ok, "a failed reload exited 0: {stdout}");
        assert!(stdout.starts_with("failed guard: "), "{stdout}");
        assert!(stdout.contains(want), "{stdout}");
        assert!(
            stdout.contains(&format!("(version {first} still serves)")),
            "{stdout}"
        );
        assert_eq!(loaded_version(&server, "guard").await, Some(first.clone()));
    }

    stop.store(true, Ordering::Relaxed);
    let (mut allowed, mut failures) = (0u64, Vec::new());
    while let Some(done) = load.join_next().await {
        let (ok, failed) = done.unwrap();
        allowed += ok;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "writes failed during reloads: {failures:?}"
    );
    assert!(allowed > 0);

    // schema-guard still judges: a non-JSON value is refused.
    let mut client = server.client().await.unwrap();
    let (code, message) = grpc_error(client.put("/json/x", "nope", None).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.starts_with("plugin guard: /json/x: value is not JSON"),
        "{message}"
    );

    // One loaded series, for the serving version; the two failures counted.
    let (_, body) = server.http_get("/metrics").await.unwrap();
    let loaded: Vec<_> = parse_metrics(&body)
        .into_iter()
        .filter(|s| s.name == "cairn_plugin_loaded" && s.labels["plugin"] == "guard")
        .collect();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0].labels["version"], first);
    assert_eq!(
        metric(
            &server,
            "cairn_plugin_load_failures_total",
            &[("plugin", "guard")]
        )
        .await,
        2.0
    );

    // `plugin list` counts every call across the reloads: each allowed put and the denial.
    let (ok, stdout, stderr) = plugin_cli(&["list", "--endpoint", &endpoint, "--json"]).await;
    assert!(ok, "{stderr}");
    let listing: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let guard = &listing["plugins"][0];
    assert_eq!(guard["name"], "guard");
    assert_eq!(guard["version"], first.as_str());
    assert_eq!(guard["hooks"], serde_json::json!(["admission"]));
    assert_eq!(guard["prefixes"], serde_json::json!(["/json/"]));
    assert_eq!(guard["failure_policy"], "fail-closed");
    assert_eq!(guard["calls"], allowed + 1);
    assert_eq!(guard["denials"], 1);
    assert_eq!(guard["failures"], 0);
    let (ok, table, _) = plugin_cli(&["list", "--endpoint", &endpoint]).await;
    assert!(ok);
    assert!(
        table.contains(&format!(
            "guard\t{first}\tadmission\t/json/\tfail-closed\t{}\t1\t0",
            allowed + 1
        )),
        "{table}"
    );
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn reload_without_a_config_file_or_with_a_broken_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugins.yaml");
    std::fs::write(&config, guard_config(&plugin("schema-guard"), "16MiB")).unwrap();
    let server = Server::start_with(&[&format!("--config-file={}", config.display())])
        .await
        .unwrap();
    let version = loaded_version(&server, "guard").await.unwrap();
    std::fs::write(&config, "plugins:\n  - {name: guard, hooks: [admission]}\n").unwrap();
    let (ok, _, stderr) = plugin_cli(&["reload", "--endpoint", &server.client_url()]).await;
    assert!(!ok);
    assert!(
        stderr.contains("400 Bad Request: no plugins reloaded:")
            && stderr.contains("plugin \"guard\": missing field `path`"),
        "{stderr}"
    );
    assert_eq!(loaded_version(&server, "guard").await, Some(version));

    // A node started without --config-file lists no plugins and has nothing to reload.
    let plain = Server::start().await.unwrap();
    let (ok, stdout, _) = plugin_cli(&["list", "--endpoint", &plain.client_url()]).await;
    assert!(ok);
    assert_eq!(stdout.lines().count(), 1, "only the header: {stdout}");
    let (ok, _, stderr) = plugin_cli(&["reload", "--endpoint", &plain.client_url()]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "409 Conflict: no plugins reloaded: the node was started without --config-file"
        ),
        "{stderr}"
    );
}

#[tokio::test]
#[cfg_attr(against_etcd, ignore = "cairn-only: plugins")]
async fn plugin_new_scaffolds_a_crate_that_builds_tests_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().display().to_string();
    let sdk = format!("{REPO}/sdk");
    let (ok, stdout, stderr) =
        plugin_cli(&["new", "max-size", "--dir", &parent, "--sdk", &sdk]).await;
    assert!(ok, "{stdout}{stderr}");
    let krate = dir.path().join("max-size");
    for file in ["Cargo.toml", "src/lib.rs", "README.md"] {
        assert!(krate.join(file).exists(), "{file} missing");
    }
    let (ok, _, stderr) = plugin_cli(&["new", "max-size", "--dir", &parent]).await;
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let (ok, _, stderr) = plugin_cli(&["new", "Bad_Name", "--dir", &parent]).await;
    assert!(!ok && stderr.contains("invalid plugin name"), "{stderr}");

    // The crate's own test passes natively, and it builds into a component the node
    // accepts. Bounded: a cold build on a loaded 2-core machine takes minutes.
    let target = dir.path().join("target");
    let tested = cargo_in(&krate, &target, &["test"]).await;
    assert!(
        tested.contains("values_over_the_limit_are_refused ... ok"),
        "{tested}"
    );
    cargo_in(
        &krate,
        &target,
        &["build", "--release", "--target", "wasm32-wasip2"],
    )
    .await;
    let wasm = dir
        .path()
        .join("target/wasm32-wasip2/release/max_size.wasm");
    let (ok, stdout, stderr) = plugin_cli(&["check", &wasm.display().to_string()]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(": ok (version "), "{stdout}");
}

/// `cargo ARGS --offline` in `krate`, bounded; its stdout. Offline: the SDK's dependencies
/// are in cargo's cache once the example plugins were built.
async fn cargo_in(krate: &std::path::Path, target: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(900),
        tokio::process::Command::new("cargo")
            .args(args)
            .arg("--offline")
            .current_dir(krate)
            .env("CARGO_TARGET_DIR", target)
            .env_remove("RUSTFLAGS")
            .output(),
    )
    .await
    .expect("cargo finishes within 15 minutes")
    .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
