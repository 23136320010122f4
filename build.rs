//! Compiles `proto/simple.proto` (examples, tests, benchmarks),
//! `proto/echo.proto` (streaming tests), the vendored ORCA load report
//! and out-of-band service (`proto/xds/data/orca/v3/orca_load_report.proto`,
//! `proto/xds/service/orca/v3/orca.proto`, used by the library's `orca`
//! module) and the vendored channelz service
//! (`proto/grpc/channelz/v1/channelz.proto`, the `channelz` module) without
//! a system `protoc`: `protox` parses the files in pure Rust and
//! `tonic-prost-build` generates the messages, clients and servers from the
//! resulting descriptor sets.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let examples = ["proto/simple.proto", "proto/echo.proto"];
    let orca = [
        "proto/xds/data/orca/v3/orca_load_report.proto",
        "proto/xds/service/orca/v3/orca.proto",
    ];
    let channelz = "proto/grpc/channelz/v1/channelz.proto";
    for file in examples.iter().chain(&orca).chain([&channelz]) {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().compile_fds(protox::compile(examples, ["proto"])?)?;
    // The library's own: without `connect` (tonic's transport is not one
    // of its dependencies' features).
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(protox::compile(orca, ["proto"])?)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(protox::compile([channelz], ["proto"])?)?;
    Ok(())
}
