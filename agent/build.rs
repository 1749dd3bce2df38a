//! Generates the kubelet pod-resources v1 gRPC client and server from the
//! vendored `proto/podresources/v1/api.proto`. protox parses the proto in
//! pure Rust, so no `protoc` is needed on the build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/podresources/v1/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    // The server half is generated too: the integration tests serve the real
    // protocol on a unix socket with it.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
