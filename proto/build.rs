fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/rollgate.proto");
    // No `connect` constructor on clients: it would clash with the `Connect` rpc; callers build
    // a Channel themselves.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_protos(&["proto/rollgate.proto"], &["proto"])?;
    Ok(())
}
