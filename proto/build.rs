//! Generates the gRPC code of `proto/*.proto` (tonic 0.9 / prost 0.11, the versions
//! containerd-snapshots uses) with the system's `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/keyprovider.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile(&["proto/keyprovider.proto"], &["proto"])?;
    Ok(())
}
