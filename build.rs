//! Compiles etcd's v3 API (our copy under `proto/`) with tonic/prost.
//!
//! Every message also derives serde: the write requests travel through the
//! Raft log (see `src/raft/types.rs`), which openraft encodes with serde.

const SERDE_BYTES: &str = "#[serde(with = \"serde_bytes\")]";

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
        // A watch event is encoded once and its bytes shared by every
        // watcher's response (src/proto/event.rs).
        .extern_path(".mvccpb.Event", "crate::proto::mvccpb::Event")
        // The write requests' bytes fields are encoded as byte strings
        // (one length and a copy) instead of serde's default sequence of
        // u8 (a call per byte). bincode writes both the same way, so WAL
        // entries written before this still decode.
        .field_attribute(".etcdserverpb.RangeRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.RangeRequest.range_end", SERDE_BYTES)
        .field_attribute(".etcdserverpb.PutRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.PutRequest.value", SERDE_BYTES)
        .field_attribute(".etcdserverpb.DeleteRangeRequest.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.DeleteRangeRequest.range_end", SERDE_BYTES)
        .field_attribute(".etcdserverpb.Compare.key", SERDE_BYTES)
        .field_attribute(".etcdserverpb.Compare.range_end", SERDE_BYTES)
        .field_attribute(".etcdserverpb.Compare.target_union.value", SERDE_BYTES)
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
