//! Compiles `tally.v1` with protox (a protobuf compiler in Rust), so no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tally/v1/heartbeat.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's encoding; decoding errors are INVALID_ARGUMENT, and a
        // heartbeat's entries are counted before they are decoded.
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
