//! The gateway's route table, read from the `google.api.http` annotations in etcd's own
//! protos: the table grpc-gateway generates etcd's `rpc.pb.gw.go` (and the lock and
//! election gateways) from. A method without one (etcd 3.7's `RangeStream`, cairn's peer
//! service) has no HTTP route.

use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, Value};

/// The descriptor set `build.rs` writes: the compiled protos and their imports.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// One gRPC method and the HTTP paths that call it.
pub struct Route {
    /// `/v3/kv/put`, and its aliases (`/v3/kv/lease/revoke` beside `/v3/lease/revoke`).
    pub http_paths: Vec<String>,
    /// `/etcdserverpb.KV/Put`.
    pub grpc_path: PathAndQuery,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

impl Route {
    /// Every path the route answers on: each `/v3/` path also under `/v3beta/`, which
    /// etcd 3.5 still serves (`/v3alpha/` it no longer does).
    pub fn paths(&self) -> Vec<String> {
        let beta = self
            .http_paths
            .iter()
            .filter_map(|p| p.strip_prefix("/v3/"))
            .map(|rest| format!("/v3beta/{rest}"));
        self.http_paths.iter().cloned().chain(beta).collect()
    }
}

/// Every annotated method of the compiled protos.
pub fn all() -> Vec<Route> {
    // The set is made by build.rs from the protos this binary was compiled with.
    let pool = DescriptorPool::decode(DESCRIPTORS).expect("build.rs wrote a valid descriptor set");
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("etcd's protos import google/api/annotations.proto");
    pool.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter_map(|method| {
            let options = method.options();
            if !options.has_extension(&http) {
                return None;
            }
            let rule = options.get_extension(&http);
            let http_paths = post_paths(rule.as_message()?);
            route(&method, http_paths)
        })
        .collect()
}

fn route(method: &MethodDescriptor, http_paths: Vec<String>) -> Option<Route> {
    if http_paths.is_empty() {
        return None;
    }
    let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    Some(Route {
        http_paths,
        grpc_path: PathAndQuery::try_from(grpc_path).ok()?,
        input: method.input(),
        output: method.output(),
        client_streaming: method.is_client_streaming(),
        server_streaming: method.is_server_streaming(),
    })
}

/// The `post` paths of an `HttpRule` and of its `additional_bindings` (etcd uses no other
/// verb).
fn post_paths(rule: &DynamicMessage) -> Vec<String> {
    let mut paths = Vec::new();
    if let Some(Value::String(post)) = rule.get_field_by_name("post").as_deref() {
        if !post.is_empty() {
            paths.push(post.clone());
        }
    }
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for binding in more.iter().filter_map(Value::as_message) {
            paths.extend(post_paths(binding));
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(http_path: &str) -> Option<Route> {
        all()
            .into_iter()
            .find(|r| r.http_paths.iter().any(|p| p == http_path))
    }

    #[test]
    fn routes_are_etcds() {
        let put = find("/v3/kv/put").expect("put is routed");
        assert_eq!(put.grpc_path.as_str(), "/etcdserverpb.KV/Put");
        assert_eq!(put.input.full_name(), "etcdserverpb.PutRequest");
        assert!(!put.client_streaming && !put.server_streaming);
        let revoke = find("/v3/kv/lease/revoke").expect("the old revoke path is routed");
        assert_eq!(revoke.grpc_path.as_str(), "/etcdserverpb.Lease/LeaseRevoke");
        assert!(revoke.paths().contains(&"/v3beta/lease/revoke".to_string()));
        let watch = find("/v3/watch").expect("watch is routed");
        assert!(watch.client_streaming && watch.server_streaming);
        let lock = find("/v3/lock/lock").expect("lock is routed");
        assert_eq!(lock.grpc_path.as_str(), "/v3lockpb.Lock/Lock");
        assert!(find("/v3/auth/user/add").is_some());
        assert!(all()
            .iter()
            .all(|r| !r.grpc_path.as_str().ends_with("/RangeStream")));
    }
}
