//! `cairn plugin ...`: check files, scaffold a plugin crate, and list or reload the plugins
//! of a running node through its client URL (`/cairn/v1/plugins`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use http_body_util::BodyExt as _;

use super::loader::ReloadReport;
use super::{PluginError, PluginInfo};

#[derive(Debug, Parser)]
#[command(
    name = "cairn plugin",
    about = "Check, scaffold, list and reload plugins"
)]
struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate plugin components: the cairn:plugin world, and a self-check instantiation.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Create a plugin crate NAME (in the current directory, or --dir).
    New(super::scaffold::NewArgs),
    /// The plugins a running node has loaded, with their call counts.
    List {
        #[command(flatten)]
        node: NodeArgs,
        /// Print the node's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a running node read its config file's plugin list again (as SIGHUP does).
    Reload {
        #[command(flatten)]
        node: NodeArgs,
    },
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The node's client URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
}

/// Runs the sub-command; `args` are the words after `plugin`.
pub async fn run(args: Vec<OsString>) -> Result<(), PluginError> {
    let argv = std::iter::once(OsString::from("cairn plugin")).chain(args);
    // clap prints --help / usage errors itself and exits with its conventional codes.
    let args = PluginArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
    match args.command {
        PluginCommand::Check { files } => super::check::run(files).await,
        PluginCommand::New(new) => super::scaffold::run(&new),
        PluginCommand::List { node, json } => list(&node.endpoint, json).await,
        PluginCommand::Reload { node } => reload(&node.endpoint).await,
    }
}

async fn list(endpoint: &str, json: bool) -> Result<(), PluginError> {
    let body = request(endpoint, http::Method::GET, "/cairn/v1/plugins").await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Listing {
        plugins: Vec<PluginInfo>,
    }
    let listing: Listing = serde_json::from_str(&body)
        .map_err(|e| PluginError::Cli(format!("{endpoint}: unexpected answer: {e}")))?;
    println!("NAME\tVERSION\tHOOKS\tPREFIXES\tPOLICY\tCALLS\tDENIALS\tFAILURES");
    for p in listing.plugins {
        let prefixes = match p.prefixes.is_empty() {
            true => "*".to_string(),
            false => p.prefixes.join(","),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            p.name,
            p.version,
            p.hooks.join(","),
            prefixes,
            p.failure_policy,
            p.calls,
            p.denials,
            p.failures
        );
    }
    Ok(())
}

async fn reload(endpoint: &str) -> Result<(), PluginError> {
    let body = request(endpoint, http::Method::POST, "/cairn/v1/plugins/reload").await?;
    let report: ReloadReport = serde_json::from_str(&body)
        .map_err(|e| PluginError::Cli(format!("{endpoint}: unexpected answer: {e}")))?;
    for c in &report.loaded {
        match &c.previous {
            Some(previous) => println!("loaded {} {} (was {previous})", c.name, c.version),
            None => println!("loaded {} {}", c.name, c.version),
        }
    }
    for name in &report.unchanged {
        println!("unchanged {name}");
    }
    for name in &report.removed {
        println!("removed {name}");
    }
    for f in &report.failed {
        match &f.kept {
            Some(kept) => println!(
                "failed {}: {} (version {kept} still serves)",
                f.name, f.error
            ),
            None => println!("failed {}: {} (not loaded)", f.name, f.error),
        }
    }
    match report.failed.len() {
        0 => Ok(()),
        n => Err(PluginError::Cli(format!("{n} plugin(s) failed to reload"))),
    }
}

/// One HTTP/1.1 request to the node; the body of a 2xx answer, else an error with the
/// node's message.
async fn request(endpoint: &str, method: http::Method, path: &str) -> Result<String, PluginError> {
    let fail = |what: String| PluginError::Cli(format!("{endpoint}: {what}"));
    let url = url::Url::parse(endpoint).map_err(|e| fail(format!("not a URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(fail(
            "only http:// client URLs are supported; with TLS, use curl on the same path".into(),
        ));
    }
    let host = url.host_str().ok_or_else(|| fail("no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(2379);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .body(String::new())
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        return Ok(body);
    }
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or(body);
    Err(fail(format!("{status}: {message}")))
}
