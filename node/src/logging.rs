//! Logging set-up: `--log-level` and `--log-outputs` applied to `tracing`. `CAIRN_LOG` (a
//! `tracing` filter) overrides the level for debugging. Called once, from `main`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogOutput;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("--log-outputs {}: cannot open for appending: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
}

/// Installs the global subscriber writing at `level` to every one of `outputs`.
pub fn init(level: &str, outputs: &[LogOutput]) -> Result<(), LoggingError> {
    // etcd's `panic` and `fatal` levels mean "errors only" here.
    let level = match level {
        "panic" | "fatal" => "error",
        other => other,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},openraft=warn,fjall=warn,lsm_tree=warn"
        ))
    });
    let targets = outputs
        .iter()
        .map(|output| match output {
            LogOutput::Stderr => Ok(Target::Stderr),
            LogOutput::Stdout => Ok(Target::Stdout),
            LogOutput::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(|f| Target::File(Arc::new(f)))
                .map_err(|source| LoggingError::Open {
                    path: path.clone(),
                    source,
                }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Colours only when the sole output is a terminal.
    let ansi = matches!(outputs, [LogOutput::Stderr])
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Targets(targets))
        .with_ansi(ansi)
        .init();
    Ok(())
}

#[derive(Clone)]
enum Target {
    Stderr,
    Stdout,
    File(Arc<File>),
}

/// Every configured output; each log line is written to all of them.
struct Targets(Vec<Target>);

impl<'a> MakeWriter<'a> for Targets {
    type Writer = Tee<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Tee(&self.0)
    }
}

/// One log line's writer, fanning out to every target.
struct Tee<'a>(&'a [Target]);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A failing output (a full disk, a closed pipe) must not silence the others, and
        // logging has nowhere to report its own failure: errors are dropped per target.
        for target in self.0 {
            let _ = match target {
                Target::Stderr => io::stderr().write_all(buf),
                Target::Stdout => io::stdout().write_all(buf),
                Target::File(file) => (&**file).write_all(buf),
            };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        for target in self.0 {
            let _ = match target {
                Target::Stderr => io::stderr().flush(),
                Target::Stdout => io::stdout().flush(),
                Target::File(file) => (&**file).flush(),
            };
        }
        Ok(())
    }
}
