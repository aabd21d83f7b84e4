//! Record framing: how one WAL record is laid out in a segment file.
//!
//! ```text
//! offset 0      4      8    9
//!        +------+------+----+---------------------+
//!        | len  | crc  | ty |  payload (len-1 B)  |
//!        +------+------+----+---------------------+
//! len: u32 LE, the number of bytes after the crc (type byte + payload)
//! crc: u32 LE, CRC32C over the type byte and the payload
//! ```
//!
//! Payload by type:
//!
//! | ty | name      | payload                                  |
//! |----|-----------|------------------------------------------|
//! | 1  | Entry     | index u64 LE, then the encoded log entry |
//! | 2  | Vote      | the encoded vote                         |
//! | 3  | Committed | the encoded committed log id             |
//! | 4  | Purged    | index u64 LE, then the encoded log id    |
//!
//! The payload bytes are opaque to the WAL: the Raft log store encodes them.

use std::fmt;

/// Bytes before the type byte: `len` and `crc`.
pub const HEADER_LEN: usize = 8;

/// Upper bound on `len`, so that a flipped bit in a length field is detected
/// as a bad record instead of making the reader allocate gigabytes.
pub const MAX_RECORD_LEN: u32 = 256 * 1024 * 1024;

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A Raft log entry at `index`.
    Entry { index: u64, data: Vec<u8> },
    /// The latest vote; the last one in the log wins.
    Vote(Vec<u8>),
    /// The latest committed log id; the last one in the log wins.
    Committed(Vec<u8>),
    /// Entries with index <= `index` are logically deleted; `log_id` is the
    /// encoded id of the last purged entry, reported as `last_purged_log_id`.
    Purged { index: u64, log_id: Vec<u8> },
}

const TY_ENTRY: u8 = 1;
const TY_VOTE: u8 = 2;
const TY_COMMITTED: u8 = 3;
const TY_PURGED: u8 = 4;

impl Record {
    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        match self {
            Record::Entry { index, data } => {
                out.push(TY_ENTRY);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(data);
            }
            Record::Vote(v) => {
                out.push(TY_VOTE);
                out.extend_from_slice(v);
            }
            Record::Committed(c) => {
                out.push(TY_COMMITTED);
                out.extend_from_slice(c);
            }
            Record::Purged { index, log_id } => {
                out.push(TY_PURGED);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(log_id);
            }
        }
        let body = &out[start + HEADER_LEN..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The framed record as a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode_into(&mut v);
        v
    }
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than [`HEADER_LEN`] bytes remain.
    ShortHeader,
    /// The length field is zero or above [`MAX_RECORD_LEN`].
    BadLength(u32),
    /// The length field points past the end of the data.
    ShortPayload { want: usize, have: usize },
    /// The checksum does not match type + payload.
    Checksum { stored: u32, computed: u32 },
    /// Checksum fine but the type or payload shape is unknown.
    BadType(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::ShortHeader => write!(f, "short record header"),
            FrameError::BadLength(l) => write!(f, "invalid record length {l}"),
            FrameError::ShortPayload { want, have } => {
                write!(f, "short record: want {want} bytes, have {have}")
            }
            FrameError::Checksum { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            FrameError::BadType(t) => write!(f, "unknown record type {t}"),
        }
    }
}

/// Decodes the record at the start of `buf`; returns it with its framed
/// length (header included).
pub fn decode(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::ShortHeader);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(FrameError::BadLength(len));
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Err(FrameError::ShortPayload {
            want: total,
            have: buf.len(),
        });
    }
    let body = &buf[HEADER_LEN..total];
    let computed = crc32c::crc32c(body);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    let ty = body[0];
    let payload = &body[1..];
    let index_and_rest = |p: &[u8]| -> Option<(u64, Vec<u8>)> {
        let idx = u64::from_le_bytes(p.get(0..8)?.try_into().ok()?);
        Some((idx, p[8..].to_vec()))
    };
    let rec = match ty {
        TY_ENTRY => {
            let (index, data) = index_and_rest(payload).ok_or(FrameError::BadType(ty))?;
            Record::Entry { index, data }
        }
        TY_VOTE => Record::Vote(payload.to_vec()),
        TY_COMMITTED => Record::Committed(payload.to_vec()),
        TY_PURGED => {
            let (index, log_id) = index_and_rest(payload).ok_or(FrameError::BadType(ty))?;
            Record::Purged { index, log_id }
        }
        other => return Err(FrameError::BadType(other)),
    };
    Ok((rec, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_every_type() {
        let recs = [
            Record::Entry {
                index: 7,
                data: b"hello".to_vec(),
            },
            Record::Vote(vec![1, 2, 3]),
            Record::Committed(vec![]),
            Record::Purged {
                index: 3,
                log_id: vec![9],
            },
        ];
        let mut buf = Vec::new();
        for r in &recs {
            r.encode_into(&mut buf);
        }
        let mut off = 0;
        for r in &recs {
            let (got, n) = decode(&buf[off..]).unwrap();
            assert_eq!(&got, r);
            off += n;
        }
        assert_eq!(off, buf.len());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let buf = Record::Entry {
            index: 42,
            data: b"payload".to_vec(),
        }
        .encode();
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn short_buffers_are_reported() {
        let buf = Record::Vote(vec![5; 10]).encode();
        assert_eq!(decode(&buf[..3]), Err(FrameError::ShortHeader));
        assert!(matches!(
            decode(&buf[..12]),
            Err(FrameError::ShortPayload { .. })
        ));
    }
}
