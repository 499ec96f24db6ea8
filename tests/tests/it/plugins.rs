//! WebAssembly plugins (cairn-only): the quick-start config, denials that never reach raft,
//! and hostile plugins the node survives. The example plugins are built for wasm32-wasip2
//! by scripts/test.sh into `plugins/target/wasm32-wasip2/release` (or `CAIRN_PLUGIN_DIR`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_tests::{parse_metrics, run_until_exit, server_args, Layout, Server, ServerKind};

use crate::{current_revision, grpc_error, ok, Code};

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
    // Only the loops are about the deadline: the others get 2 s, so that on a loaded machine
    // a debug build's slow allocation or log spam still ends in the failure under test.
    let untimed = |name: &str, mode: &str, policy: &str| {
        entry(name, mode, policy).replace("memory: 4MiB", "memory: 4MiB, deadline: 2s")
    };
    let yaml = [
        entry("loop", "loop", "fail-closed"),
        untimed("alloc", "alloc", "fail-closed"),
        untimed("trap", "trap", "fail-closed"),
        untimed("garbage", "garbage", "fail-closed"),
        untimed("spam", "spam", "fail-closed"),
        entry("open-loop", "loop", "fail-open"),
        untimed("open-trap", "trap", "fail-open"),
    ]
    .concat();
    let server = start_with_plugins(&yaml).await;
    let mut client = server.client().await.unwrap();

    let refused = [
        (
            "loop",
            "plugin loop: timed out (write refused: fail-closed)",
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
    // Deadlines of 2 s: this case is about answers, not time, and a debug build on a loaded
    // 2-core machine can take more than the default 5 ms.
    let yaml = format!(
        "  - {{name: pre, path: {hostile}, hooks: [admission], prefixes: [/pre/], deadline: 2s, \
              deny-code: failed-precondition, config: {{mode: deny}}}}
  - {{name: rw, path: {hostile}, hooks: [admission], prefixes: [/rw/], deadline: 2s, allow-rewrite: true, \
              config: {{mode: rewrite}}}}
  - {{name: no-rw, path: {hostile}, hooks: [admission], prefixes: [/no-rw/], deadline: 2s, \
              config: {{mode: rewrite}}}}
  - name: quota
    path: {quota}
    hooks: [admission]
    prefixes: [/team/, /free/]
    deadline: 2s
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
