//! Compiles the `mailconnect.v1` contracts with protox (pure Rust, so no `protoc` is needed anywhere)
//! and emits the file descriptor set that gRPC reflection serves.

use std::path::{Path, PathBuf};

/// The generated messages with a secret field; each needs its hand-written Debug.
const SECRET_MESSAGES: [&str; 2] = [
    ".mailconnect.v1.PasswordCredentials",
    ".mailconnect.v1.OAuthGrant",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let mut files = Vec::new();
    collect_protos(root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(&files, [root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("mailconnect_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry passwords or tokens: src/grpc/redact.rs writes their Debug, so
        // that a request logged whole (or a panic message) never shows them.
        .skip_debug(SECRET_MESSAGES)
        // Undecodable requests are INVALID_ARGUMENT, not prost's INTERNAL (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::MessageCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
