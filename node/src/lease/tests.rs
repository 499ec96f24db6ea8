use std::time::{Duration, Instant};

use super::*;

fn config() -> LessorConfig {
    LessorConfig {
        min_ttl: 2,
        promote_extend: Duration::from_secs(1),
        member_id: 0x8e9e_05c5_2164_694d,
        checkpoints: None,
    }
}

fn open() -> (tempfile::TempDir, Store, Lessor) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let lessor = Lessor::open(&store, config()).expect("lessor");
    (dir, store, lessor)
}

/// What apply does for a grant that passed its checks.
fn grant(store: &Store, lessor: &Lessor, id: i64, ttl: i64) {
    lessor.check_grant(id, ttl).expect("grant allowed");
    let mut batch = store.batch();
    lessor.stage_grant(&mut batch, id, ttl);
    batch.commit().expect("commit");
    lessor.granted(id, ttl);
}

fn revoke(store: &Store, lessor: &Lessor, id: i64) {
    lessor.check_revoke(id).expect("revoke allowed");
    let mut batch = store.batch();
    lessor.stage_revoke(&mut batch, id);
    batch.commit().expect("commit");
    lessor.revoked(id);
}

#[test]
fn min_ttl_follows_etcd_formula() {
    let ms = Duration::from_millis;
    // etcd defaults: 10 ticks of 100 ms -> 1.5 s -> 2 s.
    assert_eq!(LessorConfig::new(ms(100), ms(1000), 1).min_ttl, 2);
    // 5 ticks of 100 ms -> (15 / 2 = 7 ticks) 0.7 s -> 1 s.
    assert_eq!(LessorConfig::new(ms(100), ms(500), 1).min_ttl, 1);
    assert_eq!(LessorConfig::new(ms(250), ms(5000), 1).min_ttl, 8);
}

#[test]
fn grant_checks_follow_etcd() {
    let (_dir, store, lessor) = open();
    assert!(matches!(
        lessor.check_grant(0, 10),
        Err(LeaseError::NotFound)
    ));
    assert!(matches!(
        lessor.check_grant(1, MAX_LEASE_TTL + 1),
        Err(LeaseError::TtlTooLarge)
    ));
    lessor
        .check_grant(1, MAX_LEASE_TTL)
        .expect("the maximum itself is fine");
    grant(&store, &lessor, 1, 10);
    assert!(matches!(lessor.check_grant(1, 10), Err(LeaseError::Exists)));
    assert!(lessor.contains(1));
    revoke(&store, &lessor, 1);
    assert!(!lessor.contains(1));
    assert!(matches!(lessor.check_revoke(1), Err(LeaseError::NotFound)));
}

#[test]
fn only_the_primary_renews_and_expires() {
    let (_dir, store, lessor) = open();
    grant(&store, &lessor, 7, 1);
    assert!(matches!(lessor.renew(7), Err(LeaseError::NotPrimary)));
    assert!(matches!(
        lessor.time_to_live(7),
        Err(LeaseError::NotPrimary)
    ));
    assert!(lessor.expired(10).is_empty());
    lessor.promote();
    // Promotion gives every lease extend (1 s) + TTL (1 s).
    let ttl = lessor.time_to_live(7).expect("primary").expect("exists");
    assert_eq!(
        ttl,
        TimeToLive {
            remaining: 1,
            granted: 1
        }
    );
    assert_eq!(lessor.renew(7).expect("renew"), 1);
    assert!(matches!(lessor.renew(8), Err(LeaseError::NotFound)));
    assert_eq!(lessor.time_to_live(8).expect("primary"), None);
    lessor.demote();
    assert!(matches!(lessor.renew(7), Err(LeaseError::NotPrimary)));
}

#[test]
fn expired_leases_are_handed_out_once_until_the_retry_interval() {
    let (_dir, store, lessor) = open();
    lessor.promote();
    grant(&store, &lessor, 1, 0);
    grant(&store, &lessor, 2, 0);
    grant(&store, &lessor, 3, 100);
    let mut due = lessor.expired(10);
    due.sort_unstable();
    assert_eq!(due, [1, 2]);
    assert!(lessor.expired(10).is_empty(), "their revokes are under way");
    assert!(matches!(lessor.renew(1), Err(LeaseError::Expired)));
    // The batch is bounded.
    grant(&store, &lessor, 4, 0);
    grant(&store, &lessor, 5, 0);
    assert_eq!(lessor.expired(1).len(), 1);
}

#[test]
fn leases_survive_reopen_with_their_ttl_refreshed_on_promotion() {
    let (_dir, store, lessor) = open();
    lessor.promote();
    grant(&store, &lessor, 10, 30);
    grant(&store, &lessor, 11, 5);
    grant(&store, &lessor, 12, 60);
    revoke(&store, &lessor, 12);
    drop(lessor);

    let lessor = Lessor::open(&store, config()).expect("reopen");
    assert!(lessor.contains(10) && lessor.contains(11) && !lessor.contains(12));
    lessor.promote();
    let started = Instant::now();
    let ttl = lessor.time_to_live(10).expect("primary").expect("exists");
    assert_eq!(ttl.granted, 30);
    // Full TTL again plus the promotion extension (1 s), minus the time the test took.
    let elapsed = i64::try_from(started.elapsed().as_secs()).unwrap_or(0);
    assert!((30 - elapsed..=31).contains(&ttl.remaining), "{ttl:?}");
    // Soonest expiry first.
    assert_eq!(lessor.leases(), [11, 10]);
}

#[test]
fn fresh_ids_are_positive_and_unused() {
    let (_dir, store, lessor) = open();
    let first = lessor.fresh_id();
    assert!(first > 0);
    grant(&store, &lessor, first + 1, 10);
    let second = lessor.fresh_id();
    assert!(second > 0 && second != first && second != first + 1);
    // The member id's low 16 bits lead, as etcd's ids.
    assert_eq!(u64::try_from(first).unwrap_or(0) >> 48, 0x694d & 0x7FFF);
}

#[test]
fn lease_metrics_have_etcds_names() {
    let (_dir, store, lessor) = open();
    lessor.promote();
    // Other tests in this process move the same counters, but never backwards.
    let c = counters();
    let before = (
        c.granted.get(),
        c.renewed.get(),
        c.revoked.get(),
        c.ttl.get_sample_count(),
    );
    grant(&store, &lessor, 1, 10);
    lessor.renew(1).expect("renew");
    revoke(&store, &lessor, 1);
    let after = (
        c.granted.get(),
        c.renewed.get(),
        c.revoked.get(),
        c.ttl.get_sample_count(),
    );
    assert!(after.0 > before.0, "granted moved: {before:?} -> {after:?}");
    assert!(after.1 > before.1, "renewed moved: {before:?} -> {after:?}");
    assert!(after.2 > before.2, "revoked moved: {before:?} -> {after:?}");
    assert!(after.3 > before.3, "ttl observed: {before:?} -> {after:?}");
    let text = crate::metrics::get().render();
    for name in [
        "etcd_debugging_lease_granted_total",
        "etcd_debugging_lease_revoked_total",
        "etcd_debugging_lease_renewed_total",
        "etcd_debugging_lease_ttl_total_bucket",
        "etcd_server_lease_expired_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
}

fn checkpointing(persist: bool) -> LessorConfig {
    LessorConfig {
        checkpoints: Some(CheckpointConfig {
            interval: Duration::from_secs(1),
            persist,
        }),
        ..config()
    }
}

/// What apply does for a checkpoint.
fn checkpoint(store: &Store, lessor: &Lessor, checkpoints: &[(i64, i64)]) {
    let mut batch = store.batch();
    lessor.stage_checkpoints(&mut batch, checkpoints);
    batch.commit().expect("commit");
    lessor.checkpointed(checkpoints);
}

#[test]
fn a_new_leader_uses_the_checkpointed_remaining_ttl_until_a_renew_clears_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let lessor = Lessor::open(&store, checkpointing(false)).expect("lessor");
    grant(&store, &lessor, 1, 60);
    // A lease no longer than the interval is never checkpointed; unknown ids are skipped.
    grant(&store, &lessor, 2, 1);
    checkpoint(&store, &lessor, &[(1, 20), (3, 5)]);
    assert!(!lessor.contains(3));
    lessor.promote();
    let ttl = lessor.time_to_live(1).expect("primary").expect("exists");
    // 20 s plus the election timeout (1 s), not 60 s.
    assert!((20..=21).contains(&ttl.remaining), "{ttl:?}");
    assert_eq!(ttl.granted, 60);
    assert!(lessor.needs_clear(1) && !lessor.needs_clear(2));
    checkpoint(&store, &lessor, &[(1, 0)]);
    assert!(!lessor.needs_clear(1));
    assert_eq!(lessor.renew(1).expect("renewed"), 60);
    lessor.demote();
    lessor.promote();
    let ttl = lessor.time_to_live(1).expect("primary").expect("exists");
    assert!((60..=61).contains(&ttl.remaining), "{ttl:?}");
}

#[test]
fn due_checkpoints_carry_the_remaining_ttl_rounded_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let lessor = Lessor::open(&store, checkpointing(false)).expect("lessor");
    lessor.promote();
    grant(&store, &lessor, 1, 30);
    grant(&store, &lessor, 2, 1);
    assert!(lessor.due_checkpoints(10).is_empty(), "not due yet");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(lessor.due_checkpoints(10), [(1, 29)]);
    assert!(lessor.due_checkpoints(10).is_empty(), "scheduled again");
    // Followers checkpoint nothing.
    lessor.demote();
    std::thread::sleep(Duration::from_millis(1100));
    assert!(lessor.due_checkpoints(10).is_empty());
}

#[test]
fn persisted_checkpoints_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    for (persist, want) in [(true, 20..=21), (false, 60..=61)] {
        let lessor = Lessor::open(&store, checkpointing(persist)).expect("lessor");
        let id = if persist { 1 } else { 2 };
        grant(&store, &lessor, id, 60);
        checkpoint(&store, &lessor, &[(id, 20)]);
        drop(lessor);
        let lessor = Lessor::open(&store, checkpointing(persist)).expect("reopen");
        lessor.promote();
        let ttl = lessor.time_to_live(id).expect("primary").expect("exists");
        assert!(want.contains(&ttl.remaining), "persist {persist}: {ttl:?}");
    }
}
