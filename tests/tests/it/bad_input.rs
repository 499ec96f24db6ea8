//! Requests the server must refuse, with etcd's exact message and gRPC code, leaving the store
//! unchanged; and (cairn only) start-up errors that must name what is wrong.

use std::time::Duration;

use cairn_tests::{free_port, run_until_exit, server_args, Server, ServerKind};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::{assert_grpc_error, current_revision, Code};

const TOO_LARGE: &str = "etcdserver: request is too large";
const NO_KEY: &str = "etcdserver: key is not provided";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE: &str = "etcdserver: duplicate key given in txn request";

async fn start_with(args: &[&str]) -> (Server, Client) {
    let server = Server::start_with(args).await.expect("server starts");
    let client = server.client().await.expect("client connects");
    (server, client)
}

#[tokio::test]
async fn request_over_max_request_bytes_is_refused() {
    let (_server, mut client) = start_with(&["--max-request-bytes=1024"]).await;
    client.put("small", "x".repeat(100), None).await.unwrap(); // revision 2

    assert_grpc_error(
        client.put("big", "x".repeat(2000), None).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );
    // A txn is measured as a whole.
    let ops: Vec<TxnOp> = (0..4)
        .map(|i| TxnOp::put(format!("t{i}"), "y".repeat(400), None))
        .collect();
    assert_grpc_error(
        client.txn(Txn::new().and_then(ops)).await,
        Code::InvalidArgument,
        TOO_LARGE,
    );

    assert_eq!(current_revision(&mut client).await, 2);
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys().with_keys_only()))
        .await
        .unwrap();
    assert_eq!(resp.kvs().len(), 1, "only the small key is stored");
    // The server keeps serving normal requests.
    client.put("small", "y", None).await.unwrap();
    assert_eq!(current_revision(&mut client).await, 3);
}

#[tokio::test]
async fn empty_key_is_refused_everywhere() {
    let (_server, mut client) = start_with(&[]).await;
    assert_grpc_error(
        client.put("", "v", None).await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_grpc_error(client.get("", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc_error(client.delete("", None).await, Code::InvalidArgument, NO_KEY);
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_grpc_error(
        client.txn(Txn::new().or_else([TxnOp::get("", None)])).await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_grpc_error(
        client
            .txn(Txn::new().when([Compare::version("", CompareOp::Equal, 0)]))
            .await,
        Code::InvalidArgument,
        NO_KEY,
    );
    assert_eq!(current_revision(&mut client).await, 1);
}

#[tokio::test]
async fn txn_over_max_txn_ops_is_refused() {
    let (_server, mut client) = start_with(&["--max-txn-ops=4"]).await;
    let puts = |n: usize, prefix: &str| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("{prefix}{i}"), "v", None))
            .collect()
    };

    // The limit applies to each list separately: 4 + 4 is fine.
    let resp = client
        .txn(Txn::new().and_then(puts(4, "s")).or_else(puts(4, "f")))
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(current_revision(&mut client).await, 2);

    assert_grpc_error(
        client.txn(Txn::new().and_then(puts(5, "x"))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_grpc_error(
        client.txn(Txn::new().or_else(puts(5, "x"))).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    let compares: Vec<Compare> = (0..5)
        .map(|i| Compare::version(format!("c{i}"), CompareOp::Equal, 0))
        .collect();
    assert_grpc_error(
        client.txn(Txn::new().when(compares)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    // Reads count too.
    let gets: Vec<TxnOp> = (0..5).map(|i| TxnOp::get(format!("g{i}"), None)).collect();
    assert_grpc_error(
        client.txn(Txn::new().and_then(gets)).await,
        Code::InvalidArgument,
        TOO_MANY_OPS,
    );
    assert_eq!(current_revision(&mut client).await, 2);
}

#[tokio::test]
async fn duplicate_keys_in_a_txn_are_refused() {
    let (_server, mut client) = start_with(&[]).await;
    client.put("k", "v", None).await.unwrap(); // revision 2

    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]))
            .await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    // A put inside a deleted range.
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
                TxnOp::put("k", "2", None),
            ]))
            .await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    // A put in the outer txn and the same key in a nested one.
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([
                TxnOp::put("k", "1", None),
                TxnOp::txn(Txn::new().and_then([TxnOp::put("k", "2", None)])),
            ]))
            .await,
        Code::InvalidArgument,
        DUPLICATE,
    );
    assert_eq!(current_revision(&mut client).await, 2);

    // Not duplicates: the same key in the two branches, overlapping deletes, a put and a read.
    let resp = client
        .txn(
            Txn::new()
                .and_then([TxnOp::put("k", "then", None), TxnOp::get("k", None)])
                .or_else([TxnOp::put("k", "else", None)]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = client
        .txn(Txn::new().and_then([
            TxnOp::delete("k", None),
            TxnOp::delete("a", Some(DeleteOptions::new().with_range("z"))),
        ]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = client
        .txn(
            Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .and_then([TxnOp::put("n", "1", None)])
                    .or_else([TxnOp::put("n", "2", None)]),
            )]),
        )
        .await
        .unwrap();
    assert!(resp.succeeded());
    assert_eq!(current_revision(&mut client).await, 5);
}

#[tokio::test]
async fn future_and_compacted_revisions_are_refused() {
    let (_server, mut client) = start_with(&[]).await;
    for v in ["1", "2", "3"] {
        client.put("k", v, None).await.unwrap(); // 2..=4
    }
    let future = "etcdserver: mvcc: required revision is a future revision";
    let compacted = "etcdserver: mvcc: required revision has been compacted";
    assert_grpc_error(
        client
            .get("k", Some(GetOptions::new().with_revision(5)))
            .await,
        Code::OutOfRange,
        future,
    );
    assert_grpc_error(client.compact(5, None).await, Code::OutOfRange, future);
    client.compact(3, None).await.unwrap();
    assert_grpc_error(
        client
            .get("k", Some(GetOptions::new().with_revision(2)))
            .await,
        Code::OutOfRange,
        compacted,
    );
    // A read inside a txn at a compacted revision fails the whole txn.
    assert_grpc_error(
        client
            .txn(Txn::new().and_then([TxnOp::get("k", Some(GetOptions::new().with_revision(2)))]))
            .await,
        Code::OutOfRange,
        compacted,
    );
    assert_eq!(current_revision(&mut client).await, 4);
}

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

fn fresh_args(dir: &std::path::Path) -> Vec<String> {
    server_args(
        "node1",
        &dir.join("data"),
        free_port().unwrap(),
        free_port().unwrap(),
    )
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: start-up errors are cairn's own wording"
)]
#[tokio::test]
async fn unknown_config_file_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.yaml");
    std::fs::write(
        &config,
        format!(
            "name: node1\ndata-dir: {}\nlisten-clinet-urls: http://127.0.0.1:{}\n",
            dir.path().join("data").display(),
            free_port().unwrap()
        ),
    )
    .unwrap();
    let exited = run_until_exit(
        ServerKind::Cairn,
        &[format!("--config-file={}", config.display())],
        EXIT_TIMEOUT,
    )
    .await
    .unwrap();
    assert!(!exited.status.success(), "{exited:?}");
    assert!(
        exited.output.contains("listen-clinet-urls"),
        "the message names the unknown key: {}",
        exited.output
    );
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: start-up errors are cairn's own wording"
)]
#[tokio::test]
async fn bad_listen_url_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = fresh_args(dir.path());
    args.retain(|a| !a.starts_with("--listen-client-urls="));
    args.push("--listen-client-urls=htp://x".to_string());
    let exited = run_until_exit(ServerKind::Cairn, &args, EXIT_TIMEOUT)
        .await
        .unwrap();
    assert!(!exited.status.success(), "{exited:?}");
    assert!(
        exited.output.contains("listen-client-urls"),
        "the message names the flag: {}",
        exited.output
    );
}

#[cfg_attr(
    against_etcd,
    ignore = "cairn-only: start-up errors are cairn's own wording"
)]
#[tokio::test]
async fn data_dir_held_by_a_running_server_is_refused() {
    let (mut server, mut client) = start_with(&[]).await;
    client.put("k", "kept", None).await.unwrap();

    let args = server_args(
        "node1",
        server.data_dir(),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    let exited = run_until_exit(ServerKind::Cairn, &args, EXIT_TIMEOUT)
        .await
        .unwrap();
    assert!(!exited.status.success(), "{exited:?}");
    assert!(
        exited.output.contains("in use"),
        "the message says the data dir is in use: {}",
        exited.output
    );

    // The first server is unharmed, and the data dir still holds its data after a restart.
    assert!(server.is_running());
    let resp = client.get("k", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"kept");
    server.restart().await.unwrap();
    let mut client = server.client().await.unwrap();
    let resp = client.get("k", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"kept");
}
