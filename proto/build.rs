//! Compiles the protobuf files with protox (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "fleetward/policysync/v1/policysync.proto",
        "fleetward/message/v1/message.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Maps as BTreeMaps: they encode in key order, so equal snapshots encode to equal bytes.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
