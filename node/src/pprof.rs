//! `--enable-pprof`: a CPU profile at `/debug/pprof/profile?seconds=N` on the client URLs, in
//! pprof's protobuf format, so `go tool pprof http://host:2379/debug/pprof/profile?seconds=10`
//! works against cairn as against etcd. Only the CPU profile: Go's heap, goroutine and other
//! runtime profiles have no equivalent in a Rust process.
//!
//! Owns the profiler for the length of one request; pprof-rs allows one profile at a time,
//! so a second concurrent request is answered 500, as Go answers it.

use std::time::Duration;

use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

/// Go's default when `seconds` is absent or 0.
const DEFAULT_SECONDS: u64 = 30;
/// An upper bound so a typo cannot tie up the profiler for days.
const MAX_SECONDS: u64 = 3600;
/// Samples per second: Go's default CPU profiling rate.
const FREQUENCY: i32 = 100;

/// The `/debug/pprof/profile` route, to merge into the client router.
pub fn router() -> Router {
    Router::new().route("/debug/pprof/profile", get(profile))
}

#[derive(Deserialize)]
struct Params {
    seconds: Option<u64>,
}

async fn profile(Query(params): Query<Params>) -> Response {
    let seconds = match params.seconds {
        None | Some(0) => DEFAULT_SECONDS,
        Some(n) => n.min(MAX_SECONDS),
    };
    // The profiler guard is not Send, so the whole profile runs on a blocking thread.
    let result =
        tokio::task::spawn_blocking(move || cpu_profile(Duration::from_secs(seconds))).await;
    match result {
        Ok(Ok(body)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profiling task failed: {e}"),
        )
            .into_response(),
    }
}

/// Samples every thread for `length`, then encodes the profile as pprof protobuf.
fn cpu_profile(length: Duration) -> Result<Vec<u8>, String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Unwinding through these from a signal handler can deadlock or crash.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| format!("Could not enable CPU profiling: {e}"))?;
    std::thread::sleep(length);
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("building the profile: {e}"))?;
    let profile = report
        .pprof()
        .map_err(|e| format!("encoding the profile: {e}"))?;
    Ok(pprof::protos::Message::encode_to_vec(&profile))
}
