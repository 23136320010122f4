//! Compiles `proto/simple.proto` (examples, tests, benchmarks),
//! `proto/echo.proto` (streaming tests), the vendored ORCA load report
//! (`proto/xds/data/orca/v3/orca_load_report.proto`, used by the library's
//! `orca` module) and the vendored channelz service
//! (`proto/grpc/channelz/v1/channelz.proto`, the `channelz` module) without
//! a system `protoc`: `protox` parses the files in pure Rust and
//! `tonic-prost-build` generates the messages, clients and servers from the
//! resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/simple.proto",
        "proto/echo.proto",
        "proto/xds/data/orca/v3/orca_load_report.proto",
    ];
    let channelz = "proto/grpc/channelz/v1/channelz.proto";
    for file in files.iter().chain([&channelz]) {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // The library compiles this one: no `connect` on the client, which
    // needs tonic's `transport` (the library builds without it).
    let fds = protox::compile([channelz], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
