//! Real configurations start unchanged: etcd's own sample config files, kubeadm's etcd flags
//! and an rke2-style generated YAML each start a server that serves etcdctl (against etcd
//! 3.5.1 too, where etcd accepts the input); every flag of `etcd --help` is known; typos are
//! all named at once; honoured settings take effect. Tests of cairn-only behaviour say so
//! and skip under `CAIRN_TEST_SERVER=etcd`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_tests::{
    free_port, parse_metrics, run_until_exit, server_args, testing_cairn, Layout, Server,
    ServerKind,
};

use crate::ok;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

/// Writes `text` with the layout's addresses and data dir filled in as `<dir>/<name>`.
fn write_config(layout: &Layout, name: &str, text: &str) -> anyhow::Result<String> {
    let text = text
        .replace("${CLIENT_URL}", &layout.client_url())
        .replace("${PEER_URL}", &layout.peer_url())
        .replace("${DATA_DIR}", &layout.data_dir.display().to_string());
    let path = layout.dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

/// Starts a server from a fixture config file and nothing else on its command line.
async fn start_from_fixture(fixture: &str) -> Server {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(fixture)).expect("fixture");
    Server::start_custom(|layout| {
        let path = write_config(layout, "etcd.conf.yml", &text)?;
        Ok(vec![format!("--config-file={path}")])
    })
    .await
    .unwrap_or_else(|e| panic!("{fixture}: {e:#}"))
}

/// A put and a get through etcdctl.
async fn serves_etcdctl(server: &Server) {
    assert_eq!(
        ok(server, &["put", "config-test", "works"]).await.trim(),
        "OK"
    );
    assert_eq!(
        ok(server, &["get", "config-test", "--print-value-only"])
            .await
            .trim(),
        "works"
    );
}

#[tokio::test]
async fn etcd_351_sample_config_file_starts() {
    let server = start_from_fixture("etcd-3.5.1.conf.yml").await;
    serves_etcdctl(&server).await;
}

#[tokio::test]
async fn etcd_36_sample_config_file_starts() {
    let server = start_from_fixture("etcd-3.6.conf.yml").await;
    serves_etcdctl(&server).await;
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: cairn's own configuration messages"
)]
#[tokio::test]
async fn settings_without_effect_are_named_in_one_warning_line() {
    let server = start_from_fixture("etcd-3.6.conf.yml").await;
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("accepted, no effect in cairn"))
        .collect();
    assert_eq!(lines.len(), 1, "log:\n{log}");
    // Keys the sample leaves empty (`cors:`) count as not set.
    for key in [
        "max-wals",
        "max-snapshots",
        "proxy-failure-wait",
        "proxy-read-timeout",
        "discovery-fallback",
    ] {
        assert!(lines[0].contains(key), "{key} missing from {}", lines[0]);
    }
    // Honoured settings are not in it.
    for key in [
        "enable-pprof",
        "cipher-suites",
        "tls-min-version",
        "self-signed-cert-validity",
    ] {
        assert!(!lines[0].contains(key), "{key} in {}", lines[0]);
    }
}

/// kubeadm's etcd static pod command line (kubeadm 1.2x), without the TLS flags and with
/// http URLs until cairn has TLS.
#[tokio::test]
async fn kubeadm_etcd_flags_start() {
    let metrics_port = free_port().expect("port");
    let server = Server::start_custom(|l| {
        Ok(vec![
            format!("--advertise-client-urls={}", l.client_url()),
            format!("--data-dir={}", l.data_dir.display()),
            "--experimental-initial-corrupt-check=true".into(),
            "--experimental-watch-progress-notify-interval=5s".into(),
            format!("--initial-advertise-peer-urls={}", l.peer_url()),
            format!("--initial-cluster=node1={}", l.peer_url()),
            format!("--listen-client-urls=http://127.0.0.1:{}", l.client_port),
            format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
            format!("--listen-peer-urls={}", l.peer_url()),
            "--name=node1".into(),
            "--snapshot-count=10000".into(),
        ])
    })
    .await
    .expect("server starts with kubeadm's flags");
    serves_etcdctl(&server).await;
    let body = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics listener answers")
        .text()
        .await
        .expect("metrics body");
    assert!(body.contains("etcd_server_has_leader"), "{body}");
}

/// The etcd config file rke2 and k3s generate: durations as integer nanoseconds, lists as
/// YAML lists, and etcd 3.6's `listen-client-http-urls` (which etcd 3.5.1 ignores).
#[tokio::test]
async fn rke2_style_generated_yaml_starts() {
    let http_port = free_port().expect("port");
    let metrics_port = free_port().expect("port");
    let server = Server::start_custom(|l| {
        let yaml = format!(
            "advertise-client-urls: ${{CLIENT_URL}}\n\
             client-transport-security:\n  client-cert-auth: false\n\
             data-dir: ${{DATA_DIR}}\n\
             election-timeout: 5000\n\
             experimental-initial-corrupt-check: true\n\
             experimental-watch-progress-notify-interval: 5000000000\n\
             heartbeat-interval: 500\n\
             initial-advertise-peer-urls: ${{PEER_URL}}\n\
             initial-cluster: node1=${{PEER_URL}}\n\
             initial-cluster-state: new\n\
             listen-client-http-urls: http://127.0.0.1:{http_port}\n\
             listen-client-urls: ${{CLIENT_URL}}\n\
             listen-metrics-urls: http://127.0.0.1:{metrics_port}\n\
             listen-peer-urls: ${{PEER_URL}}\n\
             log-outputs:\n- stderr\n\
             logger: zap\n\
             name: node1\n\
             peer-transport-security:\n  client-cert-auth: false\n\
             snapshot-count: 10000\n"
        );
        let path = write_config(l, "config.yaml", &yaml)?;
        Ok(vec![format!("--config-file={path}")])
    })
    .await
    .expect("server starts from an rke2-style config");
    serves_etcdctl(&server).await;
    if testing_cairn() {
        let health = reqwest::get(format!("http://127.0.0.1:{http_port}/health"))
            .await
            .expect("listen-client-http-urls answers")
            .text()
            .await
            .expect("health body");
        assert!(health.contains("\"health\":\"true\""), "{health}");
    }
}

/// Flag names in `--help` output: lines that start (after indentation) with `--name`.
fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn help_of(kind: ServerKind) -> String {
    let out = Command::new(kind.binary().expect("binary"))
        .arg("--help")
        .output()
        .expect("--help runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: cairn's own configuration messages"
)]
#[tokio::test]
async fn every_flag_of_etcd_351_help_is_known() {
    let etcd = help_flags(&help_of(ServerKind::Etcd));
    assert!(
        etcd.len() >= 90,
        "parsed only {} flags from etcd --help",
        etcd.len()
    );
    let cairn = help_flags(&help_of(ServerKind::Cairn));
    let missing: Vec<_> = etcd.difference(&cairn).collect();
    assert!(missing.is_empty(), "cairn --help lacks {missing:?}");
    // Known means accepted, not just listed: `config show` loads them all at etcd's default
    // values (a bare boolean flag means true, so booleans get an explicit false).
    let etcd_help = help_of(ServerKind::Etcd);
    let mut args = vec!["config".to_string(), "show".to_string()];
    for flag in &etcd {
        let default = etcd_help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("--{flag} ")))
            .and_then(|l| l.split('\'').nth(1));
        if let Some(value) = default.filter(|v| !v.is_empty() && !v.contains('$')) {
            args.push(format!("--{flag}={value}"));
        }
    }
    let out = Command::new(ServerKind::Cairn.binary().expect("binary"))
        .args(&args)
        .output()
        .expect("config show runs");
    assert!(
        out.status.success(),
        "{args:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: cairn's own configuration messages"
)]
#[tokio::test]
async fn yaml_with_two_typos_fails_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("typos.yaml");
    std::fs::write(
        &path,
        "name: n1\nsnapshot-cuont: 100\ndata_dir: /tmp/x\nlog-level: info\n",
    )
    .expect("write");
    let exited = run_until_exit(
        ServerKind::Cairn,
        &[format!("--config-file={}", path.display())],
        Duration::from_secs(10),
    )
    .await
    .expect("cairn exits");
    assert!(!exited.status.success());
    let p = path.display();
    let want = format!(
        "cairn: unknown keys: \"data_dir\" in file {p} (did you mean \"data-dir\"?); \
         \"snapshot-cuont\" in file {p} (did you mean \"snapshot-count\"?)"
    );
    assert_eq!(exited.output.trim(), want);
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: cairn's own configuration messages"
)]
#[tokio::test]
async fn unknown_flags_are_named_together() {
    let exited = run_until_exit(
        ServerKind::Cairn,
        &["--nmae=x".into(), "--max-wal=3".into()],
        Duration::from_secs(10),
    )
    .await
    .expect("cairn exits");
    assert!(!exited.status.success());
    assert_eq!(
        exited.output.trim(),
        "cairn: unknown flags: \"--nmae\" (did you mean \"--name\"?); \"--max-wal\" (did you \
         mean \"--max-wals\"?)"
    );
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: cairn's own configuration messages"
)]
#[tokio::test]
async fn refused_values_still_name_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = server_args(
        "n1",
        &dir.path().join("data"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    args.push("--host-whitelist=example.com".into());
    let exited = run_until_exit(ServerKind::Cairn, &args, Duration::from_secs(10))
        .await
        .expect("cairn exits");
    assert!(!exited.status.success());
    assert!(
        exited
            .output
            .contains("--host-whitelist: checking the HTTP Host header is not supported yet"),
        "{}",
        exited.output
    );
}

#[tokio::test]
async fn metrics_level_basic_omits_the_grpc_histogram_and_extensive_adds_it() {
    for (level, exported) in [("basic", false), ("extensive", true)] {
        let flag = format!("--metrics={level}");
        let server = Server::start_with(&[&flag]).await.expect("server starts");
        ok(&server, &["put", "k", "v"]).await;
        let (_, body) = server.http_get("/metrics").await.expect("metrics");
        let has = parse_metrics(&body)
            .iter()
            .any(|s| s.name.starts_with("grpc_server_handling_seconds"));
        assert_eq!(has, exported, "{flag}");
    }
}

#[tokio::test]
async fn log_outputs_write_to_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let flag = format!("--log-outputs={}", log.display());
    let server = Server::start_with(&[&flag]).await.expect("server starts");
    serves_etcdctl(&server).await;
    let text = std::fs::read_to_string(&log).expect("log file exists");
    assert!(!text.trim().is_empty(), "log file is empty");
}

#[tokio::test]
async fn enable_pprof_serves_a_cpu_profile() {
    let server = Server::start_with(&["--enable-pprof"])
        .await
        .expect("starts");
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .get(format!(
            "{}/debug/pprof/profile?seconds=1",
            server.client_url()
        ))
        .send()
        .await
        .expect("profile request");
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.expect("profile body");
    assert!(!body.is_empty());
    if testing_cairn() {
        // pprof's protobuf: its string table names the sample type (Go's is gzipped).
        let contains = |word: &[u8]| body.windows(word.len()).any(|w| w == word);
        assert!(contains(b"cpu") && contains(b"nanoseconds"));
    }
    // Without the flag there is no profile (cairn answers unknown paths with gRPC's
    // Unimplemented, etcd with 404).
    let plain = Server::start().await.expect("starts");
    let resp = reqwest::get(format!(
        "{}/debug/pprof/profile?seconds=1",
        plain.client_url()
    ))
    .await
    .expect("request");
    let content_type = resp.headers().get("content-type").cloned();
    assert!(
        resp.status().as_u16() == 404
            || content_type.is_some_and(|t| t.as_bytes().starts_with(b"application/grpc")),
        "{resp:?}"
    );
}

#[tokio::test]
async fn watch_progress_notify_interval_is_honoured() {
    let server = Server::start_with(&["--experimental-watch-progress-notify-interval=1s"])
        .await
        .expect("starts");
    let mut watch = server
        .ctl_spawn(&["watch", "--progress-notify", "quiet-key"])
        .expect("etcdctl watch");
    // The default interval is 10 minutes; with 1s a notification comes within seconds.
    let line = watch
        .next_line(Duration::from_secs(10))
        .await
        .expect("a progress notification");
    assert!(line.starts_with("progress notify"), "{line}");
}

#[tokio::test]
async fn unsafe_no_fsync_keeps_writes_across_a_process_crash() {
    let mut server = Server::start_with(&["--unsafe-no-fsync"])
        .await
        .expect("starts");
    ok(&server, &["put", "survives", "kill-9"]).await;
    server.restart().await.expect("restarts after kill -9");
    assert_eq!(
        ok(&server, &["get", "survives", "--print-value-only"])
            .await
            .trim(),
        "kill-9"
    );
}
