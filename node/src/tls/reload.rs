//! Certificate rotation without a restart. etcd re-reads its files on every handshake;
//! cairn instead looks at the files' metadata (modification time, size, inode) at most once
//! per [`CHECK_EVERY`], on a handshake, and rebuilds the TLS configuration only when one of
//! them changed. A replacement that cannot be used (a half-written file, a key that does
//! not match the certificate yet) is logged, naming the file, and the previous
//! configuration stays in use until the files change again.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::{Side, TlsError};

/// How stale the view of the files may be: a rotation is used within this time.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A value built from files, rebuilt when they change.
pub(super) struct Reloading<T> {
    side: Side,
    files: Vec<(&'static str, PathBuf)>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: T,
    /// Bumped on each successful rebuild.
    generation: u64,
    /// The files as last looked at (whether or not the build from them succeeded).
    seen: Vec<Stamp>,
    checked: Instant,
}

impl<T: Clone> Reloading<T> {
    /// Builds the first value; an error here is a start-up error.
    pub(super) fn new(
        side: Side,
        files: Vec<(&'static str, PathBuf)>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let seen = stamps(&files);
        let current = build()?;
        Ok(Reloading {
            side,
            files,
            build: Box::new(build),
            state: Mutex::new(State {
                current,
                generation: 0,
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value and its generation, rebuilt first if the files changed.
    pub(super) fn current(&self) -> (u64, T) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = stamps(&self.files);
            if now != state.seen {
                state.seen = now;
                self.rebuild(&mut state);
            }
        }
        (state.generation, state.current.clone())
    }

    fn rebuild(&self, state: &mut State<T>) {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(name, path)| format!("{} {}", self.side.flag(name), path.display()))
            .collect();
        match (self.build)() {
            Ok(value) => {
                state.current = value;
                state.generation += 1;
                tracing::info!(files = %names.join(", "), "TLS files changed: new handshakes use them");
            }
            Err(e) => tracing::error!(
                error = %e,
                "TLS files changed but cannot be used; keeping the previous ones"
            ),
        }
    }
}

fn stamps(files: &[(&'static str, PathBuf)]) -> Vec<Stamp> {
    files
        .iter()
        .map(|(_, path)| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok(), meta.len(), meta.ino()))
        })
        .collect()
}
