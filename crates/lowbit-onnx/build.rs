// Generates the ONNX protobuf types from the vendored onnx.proto with pure-Rust tooling (protox
// parses the .proto, prost-build emits the code), so building needs no `protoc`.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("parse onnx.proto");
    prost_build::Config::new().compile_fds(fds).expect("generate ONNX types");
}
