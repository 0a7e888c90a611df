//! Compiles `control/proto/earshot/v1/*.proto` with protox (pure Rust: no system
//! `protoc`), generates the tonic services, and writes the encoded descriptor set that
//! the server registers for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../proto";
const PROTOS: [&str; 5] = [
    "earshot/v1/common.proto",
    "earshot/v1/interactions.proto",
    "earshot/v1/supervision.proto",
    "earshot/v1/directory.proto",
    "earshot/v1/engine.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<PathBuf> = PROTOS
        .iter()
        .map(|p| PathBuf::from(PROTO_ROOT).join(p))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [PROTO_ROOT])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("earshot_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
