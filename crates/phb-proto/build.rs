//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed,
//! and writes the descriptor set that gRPC server reflection serves.
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = root.join("phb/ledger/v1/ledger.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("phb_ledger_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A request that does not decode is the caller's fault:
        // INVALID_ARGUMENT, not tonic-prost's INTERNAL (see src/codec.rs).
        .codec_path("crate::codec::LedgerCodec")
        .compile_fds(fds)?;
    Ok(())
}
