//! The monitoring kit in `dashboards/`: the rules pass `promtool` (syntax and unit tests,
//! every alert tested firing and silent), the dashboard and the rules query only metrics a
//! running cluster exports, and a real Prometheus scraping a 3-member cluster sees a
//! `kill -9` of the leader as etcd's alerts expect.
//!
//! The same tests run against etcd 3.5.1: there the metric names the kit queries under
//! etcd's names must be etcd's own (cairn's `cairn_*` are left out), which shows etcd's
//! dashboards and alerts work on cairn unchanged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::prometheus::{tool, Prometheus, QuerySample};
use cairn_tests::{parse_metrics, testing_cairn};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};

const DASHBOARDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards");
/// How long a cluster's metrics, or Prometheus' view of them, may take to show a change.
const SETTLE: Duration = Duration::from_secs(30);

fn kit_file(name: &str) -> PathBuf {
    Path::new(DASHBOARDS).join(name)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool").unwrap())
        .args(args)
        .current_dir(DASHBOARDS)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_pass_promtool() {
    promtool(&["check", "rules", "alerts.yaml", "recording-rules.yaml"]);
    promtool(&["check", "config", "prometheus.yml"]);
    let tested = promtool(&["test", "rules", "tests/alerts-test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let alerts: BTreeSet<String> = yaml_values(&read(&kit_file("alerts.yaml")), "alert")
        .into_iter()
        .collect();
    let (fires, silent) = alert_tests(&read(&kit_file("tests/alerts-test.yaml")));
    let untested = |cases: &BTreeSet<String>| -> Vec<&String> {
        alerts.iter().filter(|a| !cases.contains(*a)).collect()
    };
    assert!(alerts.len() >= 18, "{alerts:?}");
    assert_eq!(
        untested(&fires),
        Vec::<&String>::new(),
        "alerts never seen firing"
    );
    assert_eq!(
        untested(&silent),
        Vec::<&String>::new(),
        "alerts never seen silent"
    );
}

/// Starts a 3-member cluster with `--metrics=extensive` (the gRPC latency histogram the
/// kit reads) and, on cairn, an admission plugin (the plugin series) and periodic backups.
async fn monitored_cluster(config: &tempfile::TempDir) -> Cluster {
    let mut options = ClusterOptions::new(3);
    options.extra_args.push("--metrics=extensive".into());
    if testing_cairn() {
        let plugins = config.path().join("plugins.yaml");
        std::fs::write(
            &plugins,
            format!(
                "plugins:\n  - name: schema-guard\n    path: {}\n    hooks: [admission]\n    prefixes: [/json/]\n",
                crate::plugins::plugin("schema-guard").display()
            ),
        )
        .unwrap();
        options
            .extra_args
            .push(format!("--config-file={}", plugins.display()));
    }
    Cluster::start_with(options).await.unwrap()
}

/// Unary calls of every KV kind, a watch and a lease keep-alive stream, so the gRPC series
/// the dashboard reads exist.
async fn client_traffic(
    cluster: &Cluster,
) -> (etcd_client::WatchStream, etcd_client::LeaseKeepAliveStream) {
    let leader = cluster.leader().await.unwrap();
    let mut client = cluster.client(leader).await.unwrap();
    client.put("/json/a", r#"{"a":1}"#, None).await.unwrap();
    client
        .get("/json/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    client
        .txn(
            Txn::new()
                .when([Compare::version("/json/a", CompareOp::Greater, 0)])
                .and_then([TxnOp::put("/json/b", r#"{"b":2}"#, None)]),
        )
        .await
        .unwrap();
    client.delete("/json/b", None).await.unwrap();
    let watch = client
        .watch("/json/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let (mut keeper, keep_alive) = client.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    (watch, keep_alive)
}

#[tokio::test]
async fn dashboard_and_rules_query_only_exported_metrics() {
    let queried = queried_metric_names();
    // Sanity: the parser found the kit's metrics of every kind.
    for name in [
        "etcd_server_has_leader",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "grpc_server_handled_total",
        "cairn_plugin_calls_total",
    ] {
        assert!(queried.contains(name), "{name} not among {queried:?}");
    }
    // Against etcd, cairn's own metrics are not expected.
    let wanted: BTreeSet<&String> = queried
        .iter()
        .filter(|n| testing_cairn() || !n.starts_with("cairn_"))
        .collect();

    let config = tempfile::tempdir().unwrap();
    let mut cluster = monitored_cluster(&config).await;
    let _streams = client_traffic(&cluster).await;
    // A dead member makes the peer failure series appear where they are created lazily
    // (etcd's are); the leader keeps the cluster writable.
    let leader = cluster.leader().await.unwrap();
    let victim = (leader + 1) % 3;
    cluster.kill9(victim).unwrap();

    let deadline = Instant::now() + SETTLE;
    loop {
        let mut exported = BTreeSet::new();
        for i in (0..3).filter(|i| *i != victim) {
            let (_, body) = cluster.member(i).http_get("/metrics").await.unwrap();
            exported.extend(parse_metrics(&body).into_iter().map(|s| s.name));
        }
        let missing: Vec<&&String> = wanted.iter().filter(|n| !exported.contains(**n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queried by dashboards/ but not exported: {missing:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn prometheus_sees_leader_kill9_as_etcd_alerts_expect() {
    let config = tempfile::tempdir().unwrap();
    let mut cluster = monitored_cluster(&config).await;
    let targets: Vec<String> = cluster
        .client_urls()
        .iter()
        .map(|u| u.trim_start_matches("http://").to_string())
        .collect();
    let prometheus = Prometheus::start(
        &targets,
        &[kit_file("alerts.yaml"), kit_file("recording-rules.yaml")],
    )
    .await
    .unwrap();
    let all_up = |s: &[QuerySample]| s.len() == 1 && s[0].value == 3.0;
    prometheus
        .wait_until(r#"sum(up{job="etcd"})"#, SETTLE, all_up)
        .await
        .unwrap();
    let no_leader = r#"etcd_server_has_leader{job="etcd"} == 0"#;
    assert_eq!(prometheus.query(no_leader).await.unwrap(), vec![]);

    let old = cluster.leader().await.unwrap();
    let changes = r#"etcd_server_leader_changes_seen_total{job="etcd"}"#;
    let before = prometheus.query(changes).await.unwrap();
    let instance = |i: usize| targets[i].clone();
    let seen_before = |i: usize| {
        before
            .iter()
            .find(|s| s.labels["instance"] == instance(i))
            .map_or(0.0, |s| s.value)
    };
    cluster.kill9(old).unwrap();
    let new = new_leader(&cluster, old).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();

    // Every survivor counted the change, and Prometheus saw it.
    prometheus
        .wait_until(changes, SETTLE, |s| {
            survivors.iter().all(|i| {
                s.iter()
                    .any(|x| x.labels["instance"] == instance(*i) && x.value > seen_before(*i))
            })
        })
        .await
        .unwrap();
    // The dead leader is down, the others have a leader: no etcdNoLeader, quorum kept.
    prometheus
        .wait_until(r#"up{job="etcd"} == 0"#, SETTLE, |s| {
            s.len() == 1 && s[0].labels["instance"] == instance(old)
        })
        .await
        .unwrap();
    assert_eq!(prometheus.query(no_leader).await.unwrap(), vec![]);
    let insufficient = r#"sum(up{job=~".*etcd.*"} == bool 1) without (instance) < ((count(up{job=~".*etcd.*"}) without (instance) + 1) / 2)"#;
    assert_eq!(prometheus.query(insufficient).await.unwrap(), vec![]);

    // A second death loses the quorum: the last member has no leader, and the loaded
    // rules put etcdNoLeader and etcdInsufficientMembers in pending (both wait before
    // firing).
    cluster.kill9(new).unwrap();
    let last = survivors.into_iter().find(|i| *i != new).unwrap();
    prometheus
        .wait_until(no_leader, SETTLE, |s| {
            s.len() == 1 && s[0].labels["instance"] == instance(last)
        })
        .await
        .unwrap();
    prometheus
        .wait_until(insufficient, SETTLE, |s| s.len() == 1 && s[0].value == 1.0)
        .await
        .unwrap();
    for alert in ["etcdNoLeader", "etcdInsufficientMembers"] {
        let pending = format!(r#"ALERTS{{alertname="{alert}", alertstate="pending"}}"#);
        prometheus
            .wait_until(&pending, SETTLE, |s| s.len() == 1)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", prometheus.log()));
    }
}

/// Waits (bounded) until the live members agree on a leader other than `old`.
async fn new_leader(cluster: &Cluster, old: usize) -> usize {
    let deadline = Instant::now() + SETTLE;
    loop {
        let leader = cluster.leader().await.unwrap();
        if leader != old {
            return leader;
        }
        assert!(Instant::now() < deadline, "no new leader after {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// --- Reading the kit's files -----------------------------------------------------------

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name the dashboard and the rules query, less what Prometheus makes itself
/// (`up`, `ALERTS`) and what the recording rules record.
fn queried_metric_names() -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&kit_file("cairn-cluster.json"))).unwrap();
    let mut exprs = Vec::new();
    json_strings(&dashboard, "expr", &mut exprs);
    let mut names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let mut variables = Vec::new();
    json_strings(&dashboard, "definition", &mut variables);
    for v in variables {
        // `label_values(metric{...}, label)`: only the metric is one.
        let inner = v.trim_start_matches("label_values(");
        names.extend(metric_names(inner.split(',').next().unwrap_or_default()));
    }
    let mut recorded = BTreeSet::new();
    for file in ["alerts.yaml", "recording-rules.yaml"] {
        let text = read(&kit_file(file));
        names.extend(rule_exprs(&text).iter().flat_map(|e| metric_names(e)));
        recorded.extend(yaml_values(&text, "record"));
    }
    names.retain(|n| !recorded.contains(n) && n != "up" && n != "ALERTS");
    names
}

/// The string values of every `key` field in a JSON tree.
fn json_strings(value: &serde_json::Value, key: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => out.push(s.to_string()),
                    _ => json_strings(v, key, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, key, out)),
        _ => {}
    }
}

/// The values of `- key: value` / `key: value` lines of a YAML file.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    text.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .collect()
}

/// The `expr:` of every rule: an inline value or a `|` block (the lines indented deeper).
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if value.trim() != "|" {
            exprs.push(value.trim().to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .copied()
            .collect();
        exprs.push(block.join("\n"));
    }
    exprs
}

/// From a promtool test file: the alerts some case expects firing (`exp_alerts` follows
/// the `alertname`) and those some case expects silent (no `exp_alerts`).
fn alert_tests(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("alertname:") {
            let expects_alerts = lines
                .get(i + 1)
                .is_some_and(|l| l.starts_with("exp_alerts:"));
            let cases = if expects_alerts {
                &mut fires
            } else {
                &mut silent
            };
            cases.insert(name.trim().to_string());
        }
    }
    (fires, silent)
}

/// Words followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that are not metric names when not followed by `(`: operators, and
/// the aggregations, which may be followed by `by (...)` first.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression reads: identifiers outside label matchers, ranges,
/// strings and label lists that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_past(&chars, i, '}');
        } else if c == '[' {
            i = skip_past(&chars, i, ']');
        } else if c == '$' || c.is_ascii_digit() {
            // A dashboard variable, or a number or duration (`0.99`, `4h`, `1e9`).
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || "_.".contains(chars[i])) {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if called && LABEL_LISTS.contains(&word.as_str()) {
                i = skip_past(&chars, next, ')');
            } else if !called
                && !KEYWORDS.contains(&word.as_str())
                && !LABEL_LISTS.contains(&word.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The index after the string starting at `i` (backslash escapes honoured).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

/// The index after the first `close` from `i` on, strings inside skipped.
fn skip_past(chars: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != close {
        j = if "\"'`".contains(chars[j]) {
            skip_string(chars, j)
        } else {
            j + 1
        };
    }
    j + 1
}

#[test]
fn metric_names_are_found_in_promql() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(etcd_disk_wal_fsync_duration_seconds_bucket{job=~"$job", le!="}"}[$__rate_interval])))"#,
            &["etcd_disk_wal_fsync_duration_seconds_bucket"],
        ),
        (
            r#"sum(up{job=~".*etcd.*"} == bool 1) without (instance) < ((count(up{job=~".*etcd.*"}) without (instance) + 1) / 2)"#,
            &["up"],
        ),
        (
            "increase((max without (instance) (a_total) or 0*absent(a_total))[15m:1m]) >= 4",
            &["a_total"],
        ),
        (
            "(time() - x_seconds > 2 * y_seconds) and on (job, instance) (z > 0)",
            &["x_seconds", "y_seconds", "z"],
        ),
        (
            "instance:a_b:ratio > 0.8 offset 5m",
            &["instance:a_b:ratio"],
        ),
    ];
    for (expr, want) in cases {
        let got: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(got, *want, "{expr}");
    }
}
