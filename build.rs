//! Compiles the schemas in proto/ with prost. protoc comes from the system
//! (deploy/kafka-local prereqs installs protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Type names let topology files name a topic's message and be checked against them.
    prost_build::Config::new()
        .enable_type_names()
        .compile_protos(&["proto/millrace/envelope.proto", "proto/millrace/customer.proto"], &["proto"])?;
    Ok(())
}
