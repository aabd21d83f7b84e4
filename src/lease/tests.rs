//! The lessor's clock logic under tokio's paused clock.

use super::*;

fn cfg() -> LessorConfig {
    LessorConfig::new(Duration::from_millis(100), Duration::from_millis(1000))
}

fn rec(id: i64, ttl: i64, remaining_ttl: i64) -> LeaseRecord {
    LeaseRecord {
        id,
        ttl,
        remaining_ttl,
    }
}

fn primary(records: Vec<LeaseRecord>) -> Lessor {
    let l = Lessor::new(cfg(), records);
    l.applied_term(3);
    assert!(l.sync_leadership(true, 3));
    l
}

async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

#[test]
fn min_ttl_is_etcds() {
    // ceil((3 * 10 / 2) * 100 ms) = 2 s with etcd's defaults.
    assert_eq!(cfg().min_ttl, 2);
    let c = LessorConfig::new(Duration::from_millis(100), Duration::from_millis(500));
    assert_eq!(c.min_ttl, 1); // 7 ticks * 100 ms = 0.7 s → 1
    let c = LessorConfig::new(Duration::from_millis(500), Duration::from_millis(5000));
    assert_eq!(c.min_ttl, 8); // 15 * 0.5 s = 7.5 s → 8
    let l = Lessor::new(cfg(), vec![]);
    assert_eq!(
        (l.granted_ttl(-5), l.granted_ttl(1), l.granted_ttl(60)),
        (2, 2, 60)
    );
}

#[tokio::test(start_paused = true)]
async fn follower_never_expires_and_cannot_renew() {
    let l = Lessor::new(cfg(), vec![rec(1, 2, 0)]);
    l.granted(2, 2);
    advance(60_000).await;
    assert!(l.take_expired(100).is_empty());
    assert_eq!(l.renew(1), Err(RenewError::NotPrimary));
    assert_eq!(l.time_to_live(1), Some((None, 2)));
    assert_eq!(l.next_wake(), None);
}

#[tokio::test(start_paused = true)]
async fn promotion_waits_for_an_applied_entry_of_the_term() {
    let l = Lessor::new(cfg(), vec![rec(1, 10, 0)]);
    l.applied_term(2);
    assert!(!l.sync_leadership(true, 3));
    assert!(!l.is_primary());
    l.applied_term(3);
    assert!(l.sync_leadership(true, 3));
    // Deadline: now + election timeout + TTL.
    let (left, ttl) = l.time_to_live(1).unwrap();
    assert_eq!((left, ttl), (Some(11.0), 10));
    assert!(l.sync_leadership(false, 4));
    assert_eq!(l.time_to_live(1), Some((None, 10)));
}

#[tokio::test(start_paused = true)]
async fn expiry_renew_and_retry() {
    let l = primary(vec![]);
    l.granted(7, 5);
    assert_eq!(l.next_wake(), Some(Instant::now() + Duration::from_secs(5)));
    advance(4_000).await;
    assert_eq!(l.renew(7), Ok(Renewed { ttl: 5 }));
    advance(4_999).await;
    assert!(l.take_expired(10).is_empty());
    advance(1).await;
    assert_eq!(l.take_expired(10), [7]);
    // A lease past its deadline cannot be renewed.
    assert_eq!(l.renew(7), Err(RenewError::Expired));
    // Proposed once; checked again after the retry interval.
    assert!(l.take_expired(10).is_empty());
    assert_eq!(l.next_wake(), Some(Instant::now() + RETRY_INTERVAL));
    advance(3_000).await;
    assert_eq!(l.take_expired(10), [7]);
    l.revoked(7);
    assert_eq!(l.renew(7), Err(RenewError::NotFound));
    assert_eq!(l.time_to_live(7), None);
    assert_eq!(l.next_wake(), None);
}

#[tokio::test(start_paused = true)]
async fn take_expired_respects_the_limit_and_order() {
    let l = primary(vec![]);
    for id in 1..=10 {
        l.granted(id, 2 + (10 - id)); // id 10 expires first
    }
    advance(20_000).await;
    assert_eq!(l.take_expired(3), [10, 9, 8]);
    assert_eq!(l.take_expired(100), [7, 6, 5, 4, 3, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn promote_uses_the_checkpoint_and_never_shortens() {
    // A checkpointed lease continues from its remaining TTL (+ extend).
    let l = primary(vec![rec(1, 600, 100), rec(2, 600, 0)]);
    assert_eq!(l.time_to_live(1).unwrap().0, Some(101.0));
    assert_eq!(l.time_to_live(2).unwrap().0, Some(601.0));
}

#[tokio::test(start_paused = true)]
async fn checkpoints_are_scheduled_for_long_leases_only() {
    let l = primary(vec![]);
    l.granted(1, 60); // below the 5 min interval: never checkpointed
    l.granted(2, 3600);
    advance(CHECKPOINT_INTERVAL.as_millis() as u64 - 1).await;
    assert!(l.take_due_checkpoints(10).is_empty());
    advance(1).await;
    let cps = l.take_due_checkpoints(10);
    assert_eq!(
        cps,
        [LeaseCheckpoint {
            id: 2,
            remaining_ttl: 3300
        }]
    );
    // Applying it schedules the next one and makes a renewal clear it.
    l.checkpointed(&cps);
    assert!(l.needs_checkpoint_clear(2));
    assert!(!l.needs_checkpoint_clear(1));
    advance(CHECKPOINT_INTERVAL.as_millis() as u64).await;
    assert_eq!(
        l.take_due_checkpoints(10),
        [LeaseCheckpoint {
            id: 2,
            remaining_ttl: 3000
        }]
    );
    l.checkpointed(&[LeaseCheckpoint {
        id: 2,
        remaining_ttl: 0,
    }]);
    assert!(!l.needs_checkpoint_clear(2));
}

#[tokio::test(start_paused = true)]
async fn promote_spreads_a_pile_up() {
    let records: Vec<_> = (1..=2000).map(|id| rec(id, 10, 0)).collect();
    let l = primary(records);
    // All due at 11 s without spreading; at most 3/4 of the rate may share
    // a second, the rest are pushed back.
    let mut per_second = std::collections::BTreeMap::new();
    for id in 1..=2000 {
        let left = l.time_to_live(id).unwrap().0.unwrap();
        assert!(left >= 11.0, "{left}");
        *per_second.entry(left.floor() as i64).or_insert(0) += 1;
    }
    assert!(per_second.values().all(|&n| n <= 750), "{per_second:?}");
}

#[tokio::test(start_paused = true)]
async fn recover_replaces_everything() {
    let l = primary(vec![rec(1, 10, 0)]);
    l.recover(vec![rec(2, 20, 0)]);
    assert_eq!(l.time_to_live(1), None);
    // Still primary: the recovered lease has a deadline.
    assert_eq!(l.time_to_live(2).unwrap().0, Some(21.0));
}

#[test]
fn ids_are_positive_distinct_and_carry_the_member() {
    let g = IdGen::new(0xabcd_1234_5678_9abc, 1_700_000_000_000);
    let a = g.next();
    let b = g.next();
    assert!(a > 0 && b > 0 && a != b);
    assert_eq!((a as u64) >> 48, 0x1abc);
    let other = IdGen::new(0x1111, 1_700_000_000_000);
    assert_ne!(other.next(), a);
}
