//! The torn-WAL crash: what may be cut from a member's WAL, and cutting it.
//!
//! ## What a crash can legally leave in oxcd's WAL
//!
//! oxcd's WAL (`src/wal`) is a directory of segments, each a sequence of
//! framed records `[len u32][crc32c u32][type u8][payload]`, appended by one
//! writer thread that writes a batch, issues one `fdatasync`, and only then
//! completes the batch's waiters: a follower's AppendEntries answer, a
//! vote, the leader counting its own log. So what the member has told
//! anyone is synced; what a power cut can lose is a suffix of what was
//! written after the last completed `fdatasync`, possibly ending in half a
//! record. Cutting synced bytes would be a disk failure, not a crash: it
//! can take back a vote or an acknowledged entry and break Raft.
//!
//! From outside, the test cannot know where the last `fdatasync` ended
//! (SIGSTOP cannot catch the writer inside it: the call completes first).
//! So the nemesis makes a point after which the member has told nobody
//! anything:
//!
//! 1. it severs every link out of the member (to peers and to clients) and
//!    every link into it from peers ([`super::proxy::Link::Sever`]: bytes are
//!    discarded and the connection closed, never delivered later), so from
//!    then on the member cannot learn of new commits or answer anyone;
//! 2. it reads the newest segment, whose records end at `S` (the file
//!    itself is preallocated: zeros follow). Everything the member had
//!    synced or said is within those bytes;
//! 3. it lets the member run a moment (an isolated leader appends the
//!    proposals its clients still send; a follower times out and writes
//!    votes for itself), then kill -9s it;
//! 4. it cuts the newest segment at an offset `x >= S` strictly inside a
//!    record (the first `S` bytes must be unchanged): either truncating the
//!    file at `x` or zero-filling it from `x` to its end (as a file system
//!    that extended the file but lost the data can leave it).
//!
//! That is the state a power cut leaves if it strikes while the writer is
//! writing byte `x`: everything before the batch being written may be
//! synced, nothing from `x` on is, and every message the member sent after
//! step 1 — the only ones that could depend on bytes past `S` — was lost
//! in the network, which a crash may always look like. The member must
//! repair the torn record (zero the file from its start, logging
//! `wal: truncating torn record at tail`) and rejoin; a member that refuses
//! to start is reported as a failure.
//!
//! For etcd (`OXCD_TEST_TARGET=etcd`) the nemesis only kill -9s: etcd's
//! WAL has its own format (preallocated, padded frames).

use std::path::{Path, PathBuf};

use super::Rng;

pub const HEADER_LEN: usize = 8;

/// One framed record found in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
    pub ty: u8,
}

impl Frame {
    pub fn type_name(&self) -> &'static str {
        match self.ty {
            1 => "Entry",
            2 => "Vote",
            3 => "Committed",
            4 => "Purged",
            _ => "?",
        }
    }
}

/// The whole, valid records of a segment, in order, stopping at the first
/// incomplete or invalid one (a tail the member would repair itself).
pub fn frames(buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + HEADER_LEN < buf.len() {
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(buf[off + 4..off + 8].try_into().unwrap());
        let end = off + HEADER_LEN + len;
        if len == 0 || end > buf.len() || crc32c::crc32c(&buf[off + HEADER_LEN..end]) != crc {
            break;
        }
        out.push(Frame {
            start: off,
            end,
            ty: buf[off + HEADER_LEN],
        });
        off = end;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The file ends at the cut.
    Truncate,
    /// The file keeps its length; bytes from the cut on are zero.
    ZeroFill,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub offset: usize,
    pub frame: Frame,
    pub mode: Mode,
    /// Where the records ended before the cut (zero-filling stops there:
    /// the preallocated rest of the file is zeros already).
    pub len: usize,
}

/// Picks a cut strictly inside a record and at or after `safe_from`: half
/// the time inside the last record, else at a uniformly random such byte.
/// `None` when no record reaches past `safe_from`.
pub fn choose_cut(buf: &[u8], safe_from: usize, rng: &mut Rng) -> Option<Cut> {
    // Candidate ranges [lo, hi): inside a record, not before safe_from.
    let ranges: Vec<(usize, usize, Frame)> = frames(buf)
        .into_iter()
        .filter_map(|f| {
            let lo = (f.start + 1).max(safe_from);
            (lo < f.end).then_some((lo, f.end, f))
        })
        .collect();
    let total: usize = ranges.iter().map(|r| r.1 - r.0).sum();
    if total == 0 {
        return None;
    }
    let (offset, frame) = if rng.below(2) == 0 {
        let &(lo, hi, f) = ranges.last().unwrap();
        (lo + rng.below((hi - lo) as u64) as usize, f)
    } else {
        let mut k = rng.below(total as u64) as usize;
        let mut pick = None;
        for &(lo, hi, f) in &ranges {
            if k < hi - lo {
                pick = Some((lo + k, f));
                break;
            }
            k -= hi - lo;
        }
        pick.unwrap()
    };
    let mode = if rng.below(3) == 0 {
        Mode::ZeroFill
    } else {
        Mode::Truncate
    };
    Some(Cut {
        offset,
        frame,
        mode,
        len: records_end(buf),
    })
}

/// Where the whole, valid records of a segment end.
pub fn records_end(buf: &[u8]) -> usize {
    frames(buf).last().map_or(0, |f| f.end)
}

/// The newest segment of a WAL directory and its bytes.
pub fn newest_segment(dir: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    let p = names.pop()?;
    let bytes = std::fs::read(&p).ok()?;
    Some((p, bytes))
}

/// Applies a cut to the file.
pub fn apply(path: &Path, cut: &Cut) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    match cut.mode {
        Mode::Truncate => f.set_len(cut.offset as u64)?,
        Mode::ZeroFill => {
            f.seek(SeekFrom::Start(cut.offset as u64))?;
            f.write_all(&vec![0u8; cut.len - cut.offset])?;
        }
    }
    f.sync_all()
}

/// After the kill: where it is legal to cut, given the segment read after
/// isolating the member (`before`). `Err` says why nothing may be cut.
pub fn safe_from(
    before: &Option<(PathBuf, Vec<u8>)>,
    after: &(PathBuf, Vec<u8>),
) -> Result<usize, String> {
    let Some((p0, b0)) = before else {
        return Err("no WAL segment before the isolation".into());
    };
    let (p1, b1) = after;
    if p1 != p0 {
        // Rolled to a segment created after the isolation: all of it is new.
        return if p1 > p0 {
            Ok(0)
        } else {
            Err(format!(
                "newest segment went back from {} to {}",
                p0.display(),
                p1.display()
            ))
        };
    }
    let s = records_end(b0);
    if b1.len() < s || b1[..s] != b0[..s] {
        return Err("the log was rewritten below what it held when isolated".into());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![ty];
        body.extend_from_slice(payload);
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn segment() -> Vec<u8> {
        let mut b = rec(2, b"vote");
        b.extend(rec(3, b"committed"));
        b.extend(rec(1, b"\x01\0\0\0\0\0\0\0entry one"));
        b.extend(rec(1, b"\x02\0\0\0\0\0\0\0entry two"));
        b
    }

    #[test]
    fn frames_match_the_wal_format() {
        let b = segment();
        let f = frames(&b);
        assert_eq!(f.iter().map(|f| f.ty).collect::<Vec<_>>(), vec![2, 3, 1, 1]);
        assert_eq!(f.last().unwrap().end, b.len());
        // A torn tail is not a frame.
        assert_eq!(frames(&b[..b.len() - 1]).len(), 3);
    }

    #[test]
    fn cuts_are_inside_a_record_and_never_before_the_safe_point() {
        let b = segment();
        let fr = frames(&b);
        let safe = fr[2].start + 5;
        let mut rng = Rng::new(7);
        for _ in 0..2000 {
            let c = choose_cut(&b, safe, &mut rng).expect("a cut");
            assert!(c.offset >= safe, "{c:?}");
            assert!(c.offset > c.frame.start && c.offset < c.frame.end, "{c:?}");
            assert!(fr.contains(&c.frame));
        }
        // Nothing written after the safe point: nothing to cut.
        assert_eq!(choose_cut(&b, b.len(), &mut rng), None);
    }

    #[test]
    fn safe_point_requires_an_unchanged_prefix() {
        let b = segment();
        let fr = frames(&b);
        let p = PathBuf::from("/x/0000000000000001-0000000000000001.wal");
        // Preallocated files: zeros after the records, before and after.
        let mut isolated = b[..fr[1].end].to_vec();
        isolated.resize(b.len() + 64, 0);
        let before = Some((p.clone(), isolated));
        let mut after = b.clone();
        after.resize(b.len() + 64, 0);
        assert_eq!(
            safe_from(&before, &(p.clone(), after.clone())),
            Ok(fr[1].end)
        );
        let mut changed = after.clone();
        changed[3] ^= 1;
        assert!(safe_from(&before, &(p.clone(), changed)).is_err());
        let newer = PathBuf::from("/x/0000000000000002-0000000000000009.wal");
        assert_eq!(safe_from(&before, &(newer, after)), Ok(0));
    }

    #[test]
    fn cut_files_are_torn_for_the_wal() {
        let b = segment();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0000000000000001-0000000000000001.wal");
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            std::fs::write(&p, &b).unwrap();
            let c = choose_cut(&b, 0, &mut rng).unwrap();
            apply(&p, &c).unwrap();
            let got = std::fs::read(&p).unwrap();
            match c.mode {
                Mode::Truncate => assert_eq!(got.len(), c.offset),
                Mode::ZeroFill => {
                    assert_eq!(got.len(), b.len());
                    assert!(got[c.offset..].iter().all(|&x| x == 0));
                }
            }
            // The cut record and everything after it no longer parse.
            let f = frames(&got);
            assert_eq!(f.last().map(|f| f.end).unwrap_or(0), c.frame.start);
        }
    }

    /// Every cut the nemesis may make is one oxcd's own WAL recovery
    /// repairs: it opens, keeping exactly the records before the cut one.
    #[test]
    fn oxcd_wal_repairs_every_cut() {
        use oxcd::wal::{Wal, WalOptions};
        let mut rng = Rng::new(11);
        let opts = WalOptions {
            segment_size: 1 << 20,
        };
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            {
                let w = Wal::open(dir.path(), opts.clone()).unwrap();
                for i in 1..=8u64 {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let data = format!("entry {i} of round {round}").into_bytes();
                    w.append(vec![(i, data)], Box::new(move |r| tx.send(r).unwrap()))
                        .unwrap();
                    rx.recv().unwrap().unwrap();
                    if i % 3 == 0 {
                        futures::executor::block_on(w.save_vote(vec![i as u8; 12])).unwrap();
                    }
                }
            }
            let (p, b) = newest_segment(dir.path()).unwrap();
            let fr = frames(&b);
            let safe = fr[fr.len() / 2].start;
            let c = choose_cut(&b, safe, &mut rng).unwrap();
            apply(&p, &c).unwrap();
            let w = Wal::open(dir.path(), opts.clone())
                .unwrap_or_else(|e| panic!("cut {c:?} not repaired: {e}"));
            let kept_entries = fr
                .iter()
                .filter(|f| f.ty == 1 && f.end <= c.frame.start)
                .count() as u64;
            assert_eq!(w.last_index().unwrap_or(0), kept_entries, "{c:?}");
            // The torn record is gone for good: zeros from its start on.
            let after = std::fs::read(&p).unwrap();
            assert_eq!(records_end(&after), c.frame.start, "{c:?}");
            assert!(after[c.frame.start..].iter().all(|&b| b == 0), "{c:?}");
        }
    }
}
