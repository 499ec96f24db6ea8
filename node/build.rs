//! Compiles the vendored etcd v3 protos and cairn's own with protox (pure Rust), so the
//! build needs no system `protoc`, and writes their descriptor set (with the imported
//! `google/api` annotations) to `$OUT_DIR/descriptors.bin` for the HTTP/JSON gateway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "proto/cairn/raftcmd.proto",
        "proto/cairn/peer.proto",
    ];
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(files)?;
    // Encoded by protox itself: prost's own types would drop the options' extensions
    // (`google.api.http`), which the gateway reads its routes from.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::EtcdCodec")
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
