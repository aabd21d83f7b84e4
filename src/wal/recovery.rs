//! Recovery: scan every segment on open, rebuild the index and the latest
//! vote / committed / purged, repair a torn tail, refuse corruption.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::record::{self, Record, HEADER_LEN};
use super::segment::{self, SegmentId};
use super::WalError;

/// Where an entry's framed record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPos {
    pub seq: u64,
    pub offset: u64,
    pub len: u32,
}

/// A segment as found on disk (after any tail repair).
#[derive(Debug, Clone)]
pub struct FoundSegment {
    pub id: SegmentId,
    pub size: u64,
}

/// Everything the WAL needs to resume.
#[derive(Debug, Default)]
pub struct Recovered {
    pub segments: Vec<FoundSegment>,
    /// Live entries only: those at or below the purged index are dropped.
    pub entries: BTreeMap<u64, EntryPos>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub purged: Option<(u64, Vec<u8>)>,
}

/// True if a valid record starts anywhere in `buf[from..]`. Used to tell a
/// torn tail (garbage up to EOF) from a damaged record followed by good ones.
fn valid_record_follows(buf: &[u8], from: usize) -> bool {
    (from..buf.len()).any(|p| {
        // Cheap filter before the checksum: a known type byte.
        matches!(buf.get(p + HEADER_LEN), Some(1..=4)) && record::decode(&buf[p..]).is_ok()
    })
}

/// Scans the segments in `dir`, oldest first.
///
/// Rules (see the module essay in `wal/mod.rs`):
/// - the newest segment ends where only zeros follow (its preallocated
///   space); older segments are cut to their records when the next one is
///   created, so zeros there are a bad record like any other;
/// - a bad record in the newest segment with nothing valid after it is a
///   torn write: the file is zeroed from its offset on and fsynced;
/// - any other bad record, or entries that are not consecutive (other than
///   after a purge), is corruption, reported with file path and offset.
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let io = |e| WalError::io(dir, e);
    let ids = segment::list(dir).map_err(io)?;
    let mut out = Recovered::default();
    let mut last_index: Option<u64> = None;
    let mut all: BTreeMap<u64, EntryPos> = BTreeMap::new();

    for (i, id) in ids.iter().enumerate() {
        let newest = i + 1 == ids.len();
        let path = id.path(dir);
        let buf = fs::read(&path).map_err(|e| WalError::io(&path, e))?;
        let mut off = 0usize;
        while off < buf.len() {
            let (rec, n) = match record::decode(&buf[off..]) {
                Ok(x) => x,
                // The newest segment's preallocated space: its end.
                Err(_) if newest && buf[off..].iter().all(|&b| b == 0) => break,
                Err(why) => {
                    if !newest || valid_record_follows(&buf, off + 1) {
                        return Err(WalError::Corrupt {
                            path,
                            offset: off as u64,
                            reason: why.to_string(),
                        });
                    }
                    tracing::warn!(
                        path = %path.display(),
                        offset = off,
                        dropped_bytes = buf.len() - off,
                        reason = %why,
                        "wal: truncating torn record at tail"
                    );
                    // Zeroed, not cut short: the segment keeps its
                    // preallocated length, and its tail reads as the end.
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| WalError::io(&path, e))?;
                    segment::cut_at(&f, off as u64, buf.len() as u64)
                        .map_err(|e| WalError::io(&path, e))?;
                    f.sync_all().map_err(|e| WalError::io(&path, e))?;
                    break;
                }
            };
            match rec {
                Record::Entry { index, .. } => {
                    // Truncation is physical, so indexes only ever increase in
                    // scan order. Forward gaps are representable (see mod.rs).
                    if let Some(l) = last_index.filter(|l| index <= *l) {
                        return Err(WalError::Corrupt {
                            path,
                            offset: off as u64,
                            reason: format!("entry index {index} does not follow {l}"),
                        });
                    }
                    last_index = Some(index);
                    all.insert(
                        index,
                        EntryPos {
                            seq: id.seq,
                            offset: off as u64,
                            len: n as u32,
                        },
                    );
                }
                Record::Vote(v) => out.vote = Some(v),
                Record::Committed(c) => out.committed = Some(c),
                Record::Purged { index, log_id } => {
                    let keep = out.purged.as_ref().is_none_or(|(p, _)| index >= *p);
                    if keep {
                        out.purged = Some((index, log_id));
                    }
                }
            }
            off += n;
        }
        out.segments.push(FoundSegment {
            id: *id,
            size: off as u64,
        });
    }
    if let Some((p, _)) = &out.purged {
        all = all.split_off(&(p + 1));
    }
    out.entries = all;
    Ok(out)
}
