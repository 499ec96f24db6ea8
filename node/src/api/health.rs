//! etcd's probe endpoints, answered as etcd answers them: `/health` (etcd 3.5: JSON
//! `{"health","reason"}`, `?exclude=ALARM`, `?serializable=true`) and etcd 3.6's `/livez`
//! and `/readyz` (text: `ok`, or with `?verbose` one `[+]check ok` line per check;
//! `?exclude=check`; one path per check, `/readyz/linearizable_read`). Every probe is GET
//! only; the verdicts come from [`Core::health`] and [`Core::check`].

use std::sync::Arc;

use axum::{
    extract::{RawQuery, State},
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use serde_json::json;

use super::http::go_http_error;
use crate::core::{Core, Health, HealthCheck};

pub fn router(core: Arc<Core>) -> Router {
    let mut router = Router::new().route("/health", any(health));
    for (root, checks) in [
        ("/livez", HealthCheck::LIVEZ),
        ("/readyz", HealthCheck::READYZ),
    ] {
        router = router.route(
            root,
            any(move |method, query, state| probe(method, query, state, checks.to_vec(), true)),
        );
        for &check in checks {
            router = router.route(
                &format!("{root}/{}", check.name()),
                any(move |method, query, state| probe(method, query, state, vec![check], false)),
            );
        }
    }
    router.with_state(core)
}

/// etcd's answer to a probe called with another method than GET.
fn method_not_allowed() -> Response {
    let mut resp = go_http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    resp
}

/// The values of a repeatable query parameter, empty ones skipped (as etcd's `getQuerySet`).
fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Whether the query names `name` at all, with or without a value (`?verbose`).
fn query_has(query: Option<&str>, name: &str) -> bool {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes()).any(|(k, _)| k == name)
}

async fn health(
    method: Method,
    RawQuery(query): RawQuery,
    State(core): State<Arc<Core>>,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let excluded = query_values(query.as_deref(), "exclude");
    let serializable = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .any(|(k, v)| k == "serializable" && v == "true");
    let m = crate::metrics::get();
    match core.health(&excluded, serializable).await {
        Health::Healthy => {
            m.health_success.inc();
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                json!({"health": "true", "reason": ""}).to_string(),
            )
                .into_response()
        }
        Health::Unhealthy(reason) => {
            m.health_failures.inc();
            let body = json!({"health": "false", "reason": reason}).to_string();
            go_http_error(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// `/livez`, `/readyz` (`root` true: `?exclude=` applies) or one check's own path.
async fn probe(
    method: Method,
    RawQuery(query): RawQuery,
    State(core): State<Arc<Core>>,
    checks: Vec<HealthCheck>,
    root: bool,
) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let excluded = if root {
        query_values(query.as_deref(), "exclude")
    } else {
        Vec::new()
    };
    let mut report = String::new();
    let mut failed = false;
    for check in checks
        .iter()
        .filter(|c| !excluded.iter().any(|x| x == c.name()))
    {
        match core.check(*check).await {
            Ok(()) => report.push_str(&format!("[+]{} ok\n", check.name())),
            Err(reason) => {
                failed = true;
                report.push_str(&format!("[-]{} failed: {reason}\n", check.name()));
            }
        }
    }
    if failed {
        // etcd always shows why a probe failed.
        return go_http_error(StatusCode::SERVICE_UNAVAILABLE, &report);
    }
    if !query_has(query.as_deref(), "verbose") {
        report.clear();
    }
    report.push_str("ok\n");
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        report,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_sets_skip_empty_values_and_keep_repeats() {
        let q = Some("exclude=a&exclude=&exclude=b&verbose");
        assert_eq!(query_values(q, "exclude"), vec!["a", "b"]);
        assert!(query_has(q, "verbose"));
        assert!(!query_has(q, "serializable"));
        assert!(query_values(None, "exclude").is_empty());
    }
}
