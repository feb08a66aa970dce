//! Compiles the schemas in proto/ with prost. protoc comes from the system
//! (deploy/kafka-local prereqs installs protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    prost_build::compile_protos(
        &["proto/millrace/envelope.proto", "proto/millrace/customer.proto"],
        &["proto"],
    )?;
    Ok(())
}
