//! Malformed TLS handshakes and malformed gRPC frames against the client port, while a
//! well-behaved client keeps writing (issue 13): the node stays up, the good client sees
//! no error and every write it made is there. The bad inputs go to a member listening on
//! an https and an http client URL (as etcd allows); each bad connection is bounded in
//! time, and the whole test takes a few seconds. Checked against etcd 3.5.1 too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::free_port;
use cairn_tests::tls::client_hello;
use etcd_client::{Client, GetOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::{certs, client_tls, https_member, path};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Deterministic noise (xorshift), so a failure can be replayed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK literal header field without indexing, new name, no Huffman coding.
fn header(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, u8::try_from(name.len()).unwrap()];
    out.extend(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend(value.as_bytes());
    out
}

/// A whole HTTP/2 connection's opening with one gRPC call to KV/Put whose DATA frame is
/// `body` (a gRPC length-prefixed message, or not).
fn grpc_call(body: &[u8]) -> Vec<u8> {
    // :method POST and :scheme http are static-table entries 3 and 6.
    let mut headers = vec![0x83, 0x86];
    for (name, value) in [
        (":path", "/etcdserverpb.KV/Put"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        headers.extend(header(name, value));
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &headers)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, body)); // DATA, END_STREAM
    out
}

/// A gRPC message: uncompressed flag, declared length, then `bytes`.
fn grpc_message(declared: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(declared.to_be_bytes());
    out.extend(bytes);
    out
}

/// The bad inputs for the https port.
fn tls_attacks(round: u64) -> Vec<(&'static str, Vec<u8>)> {
    let hello = client_hello().unwrap();
    let mut lying = hello.clone();
    lying[3..5].copy_from_slice(&[0xff, 0xff]); // record length beyond what is sent
    let mut corrupt = hello.clone();
    for b in corrupt.iter_mut().skip(9).step_by(7) {
        *b ^= 0x5a;
    }
    vec![
        ("random bytes", noise(round + 1, 1024)),
        ("a TLS record header of random bytes", {
            let mut r = vec![0x16, 0x03, 0x01, 0x02, 0x00];
            r.extend(noise(round + 2, 512));
            r
        }),
        ("a truncated ClientHello", hello[..hello.len() / 2].to_vec()),
        ("a ClientHello with a lying record length", lying),
        ("a corrupted ClientHello", corrupt),
        (
            "plaintext HTTP/2 to the TLS port",
            grpc_call(&grpc_message(0, &[])),
        ),
        (
            "an HTTP/1.1 request to the TLS port",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("nothing at all", Vec::new()),
    ]
}

/// The bad inputs for the plain port, at the HTTP/2 and gRPC layers.
fn grpc_attacks(round: u64) -> Vec<(&'static str, Vec<u8>)> {
    let mut bogus_length = PREFACE.to_vec();
    bogus_length.extend(frame(0x4, 0, 0, &[]));
    let mut huge = frame(0x0, 0, 1, &noise(round + 3, 64));
    huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    bogus_length.extend(huge);
    vec![
        (
            "a bad HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
        ),
        ("a frame with a bogus length", bogus_length),
        (
            "a gRPC message whose length prefix exceeds the body",
            grpc_call(&grpc_message(4096, b"0123456789")),
        ),
        (
            "garbage protobuf",
            grpc_call(&grpc_message(16, &[0xff; 16])),
        ),
        ("a truncated gRPC length prefix", grpc_call(&[0, 0, 0])),
        ("random bytes after the preface", {
            let mut r = PREFACE.to_vec();
            r.extend(noise(round + 4, 2048));
            r
        }),
    ]
}

/// Sends `bytes` on a new connection, reads whatever comes back for a short while, and
/// hangs up; every step is bounded.
async fn send(addr: &str, bytes: &[u8]) {
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        panic!("{addr} stopped accepting connections");
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.write_all(bytes)).await;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_handshakes_and_grpc_frames_leave_the_node_and_other_clients_unharmed() {
    let certs = certs();
    let plain_port = free_port().unwrap();
    let args = vec![
        format!("--cert-file={}", path(&certs.server.0)),
        format!("--key-file={}", path(&certs.server.1)),
    ];
    let mut server = https_member(client_tls(&certs, None), args, Some(plain_port)).await;
    let tls_addr = server
        .client_url()
        .trim_start_matches("https://")
        .to_string();
    let plain_addr = format!("127.0.0.1:{plain_port}");

    let stop = Arc::new(AtomicBool::new(false));
    let mut good = Client::connect([format!("http://{plain_addr}")], None)
        .await
        .unwrap();
    let writer = {
        let stop = stop.clone();
        let mut good = good.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                good.put(format!("good-{n:06}"), n.to_string(), None)
                    .await?;
                n += 1;
            }
            Ok::<u64, etcd_client::Error>(n)
        })
    };
    for round in 0..3 {
        for (what, bytes) in tls_attacks(round) {
            send(&tls_addr, &bytes).await;
            assert!(server.is_running(), "the node died after {what}");
        }
        for (what, bytes) in grpc_attacks(round) {
            send(&plain_addr, &bytes).await;
            assert!(server.is_running(), "the node died after {what}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let written = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the good client's put hung")
        .unwrap()
        .expect("the good client saw an error");
    assert!(written > 0);
    let got = good
        .get(
            "good-",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(got.count(), i64::try_from(written).unwrap());
    // The TLS listener still serves well-behaved clients.
    assert_eq!(
        server
            .ctl(&["put", "after", "fuzz"])
            .await
            .unwrap()
            .success()
            .unwrap(),
        "OK\n"
    );
}
