//! Compiles etcd's v3 API (our copy under `proto/`) with tonic/prost.
//!
//! Every message also derives serde: the write requests travel through the
//! Raft log (see `src/raft/types.rs`), which openraft encodes with serde.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Keys and values are shared, not copied, between the store, every
        // watcher an event reaches and the encoder.
        .bytes(".mvccpb.KeyValue")
        .compile_protos(
            &[
                "proto/kv.proto",
                "proto/auth.proto",
                "proto/rpc.proto",
                "proto/peer.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
