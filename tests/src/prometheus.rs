//! A real Prometheus server for the monitoring tests: Debian's `prometheus` package
//! (installed with `promtool` by scripts/install-test-deps.sh), listening on 127.0.0.1 only,
//! scraping the given targets as job `etcd` every second and evaluating the given rule files
//! every second, with its data in a temporary directory. Killed (`kill -9`) when dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::free_port;

/// How long Prometheus may take to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a Prometheus tool (`prometheus`, `promtool`) on `PATH`; an error that says how to
/// install it otherwise. The tests never skip for want of it: the test script installs it.
pub fn tool(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on PATH: run scripts/install-test-deps.sh (Debian's prometheus package)")
        })
}

/// One sample of a query answer: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, plain http) as job `etcd`, with
    /// `rule_files`, and waits until it is ready.
    pub async fn start(targets: &[String], rule_files: &[PathBuf]) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, rule_files))?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(tool("prometheus")?)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        prometheus.wait_ready().await?;
        Ok(prometheus)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", self.log());
            }
            let ready = http()?.get(format!("{}/-/ready", self.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "prometheus not ready after {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Evaluates `expr` now through the HTTP API (`/api/v1/query`); an instant vector's
    /// samples, or a scalar as one sample without labels.
    pub async fn query(&self, expr: &str) -> Result<Vec<QuerySample>> {
        let resp: Value = http()?
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        ensure!(resp["status"] == "success", "query {expr}: {resp}");
        let data = &resp["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .context("vector result")?
                .iter()
                .map(|s| sample(&s["metric"], &s["value"]))
                .collect(),
            Some("scalar") => Ok(vec![sample(&Value::Null, &data["result"])?]),
            _ => bail!("query {expr}: unexpected answer {resp}"),
        }
    }

    /// Polls `expr` every 500 ms until `done` accepts its samples, for at most `timeout`;
    /// returns the accepted samples, or an error with the last ones.
    pub async fn wait_until(
        &self,
        expr: &str,
        timeout: Duration,
        done: impl Fn(&[QuerySample]) -> bool,
    ) -> Result<Vec<QuerySample>> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.query(expr).await?;
            if done(&samples) {
                return Ok(samples);
            }
            ensure!(
                Instant::now() < deadline,
                "{expr} still {samples:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prometheus' own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn config_text(targets: &[String], rule_files: &[PathBuf]) -> String {
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules = list(rule_files.iter().map(|p| p.display().to_string()).collect());
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: [{rules}]\n\
         scrape_configs:\n  - job_name: etcd\n    static_configs:\n      - targets: [{}]\n",
        list(targets.to_vec())
    )
}

fn sample(metric: &Value, value: &Value) -> Result<QuerySample> {
    let labels = metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let value = value[1]
        .as_str()
        .context("sample value")?
        .parse()
        .context("sample value is a number")?;
    Ok(QuerySample { labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_scrapes_targets_as_job_etcd_every_second() {
        let text = config_text(
            &["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()],
            &[PathBuf::from("/r/alerts.yaml")],
        );
        assert!(text.contains("scrape_interval: 1s"), "{text}");
        assert!(text.contains("job_name: etcd"), "{text}");
        assert!(
            text.contains("targets: [\"127.0.0.1:1\", \"127.0.0.1:2\"]"),
            "{text}"
        );
        assert!(text.contains("rule_files: [\"/r/alerts.yaml\"]"), "{text}");
    }
}
