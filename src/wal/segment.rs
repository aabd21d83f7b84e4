//! Segment files: naming, creation and removal, each with the directory
//! fsync that makes the change itself durable.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Identifies a segment: `seq` orders segments, `first_index` is the log
/// index the segment was opened to receive (informational: recovery trusts
/// the records, not the name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentId {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentId {
    /// `{seq:016x}-{first_index:016x}.wal`, as etcd names its WAL files, so
    /// that `ls` order is log order.
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:016x}.wal", self.seq, self.first_index)
    }

    pub fn parse(name: &str) -> Option<SegmentId> {
        let stem = name.strip_suffix(".wal")?;
        let (a, b) = stem.split_once('-')?;
        if a.len() != 16 || b.len() != 16 {
            return None;
        }
        Some(SegmentId {
            seq: u64::from_str_radix(a, 16).ok()?,
            first_index: u64::from_str_radix(b, 16).ok()?,
        })
    }

    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.file_name())
    }
}

/// Lists the segments in `dir`, oldest first. Other files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for ent in fs::read_dir(dir)? {
        let ent = ent?;
        if let Some(id) = ent.file_name().to_str().and_then(SegmentId::parse) {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Makes creations, removals and renames in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens a segment for appending (writes go to the end even after a
/// `set_len`) and positional reads.
pub fn open_rw(path: &Path) -> io::Result<Arc<File>> {
    Ok(Arc::new(
        OpenOptions::new().read(true).append(true).open(path)?,
    ))
}

/// Creates a new, empty segment and fsyncs the directory so the file itself
/// survives a crash.
pub fn create(dir: &Path, id: SegmentId) -> io::Result<Arc<File>> {
    let path = id.path(dir);
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&path)?;
    sync_dir(dir)?;
    Ok(Arc::new(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order_and_parse_back() {
        let a = SegmentId {
            seq: 1,
            first_index: 1,
        };
        let b = SegmentId {
            seq: 0x10,
            first_index: 0xff,
        };
        assert_eq!(a.file_name(), "0000000000000001-0000000000000001.wal");
        assert!(a.file_name() < b.file_name());
        assert_eq!(SegmentId::parse(&b.file_name()), Some(b));
        assert_eq!(SegmentId::parse("junk.wal"), None);
    }
}
