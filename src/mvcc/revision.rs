//! A revision names one change: `main` is the store-wide counter bumped once
//! per write request, `sub` orders the changes inside that request (a Txn
//! that writes three keys uses subs 0, 1, 2 of one main revision).
//!
//! On disk a revision is 16 bytes: `main` then `sub`, each a big-endian
//! `u64`. Revisions are never negative, so byte order equals numeric order
//! and a sled range scan over revision keys walks history in order.

/// One change's position in history, ordered by `(main, sub)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The store-wide revision (etcd's `mod_revision` of the change).
    pub main: i64,
    /// Position of the change inside its write request.
    pub sub: i64,
}

impl Revision {
    /// Length of [`Revision::to_bytes`].
    pub const ENCODED_LEN: usize = 16;

    pub fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// 16-byte big-endian encoding; sorts like the revision itself.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    /// Inverse of [`Revision::to_bytes`]; `None` unless exactly 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let main = u64::from_be_bytes(b[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(b[8..].try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_sorts() {
        let revs = [
            Revision::new(0, 0),
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(256, 0),
            Revision::new(i64::MAX, 3),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        for r in revs {
            assert_eq!(Revision::from_bytes(&r.to_bytes()), Some(r));
        }
        assert_eq!(Revision::from_bytes(&[0; 15]), None);
    }
}
