//! Compiles `proto/simple.proto` (examples, tests, benchmarks) and
//! `proto/echo.proto` (streaming tests) without a system `protoc`: `protox` parses
//! the file in pure Rust and `tonic-prost-build` generates the client and
//! server code from the resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/simple.proto");
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["proto/simple.proto", "proto/echo.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
