//! Compiles the vendored subset of etcd's v3 API (`proto/etcd.proto`) with protox (pure
//! Rust: no system `protoc`) and generates tonic clients.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = PathBuf::from("proto/etcd.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
