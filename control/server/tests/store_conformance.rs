//! One conformance suite for both stores (`earshot_control::store`): the embedded redb
//! store and the etcd cluster store must behave the same to the sidecar.
//!
//! The etcd half runs against a real etcd (Debian's `etcd-server`, a 1-member cluster
//! for the suite and a 3-member cluster for the race across members) and prints
//! `SKIPPED` where etcd is not installed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use earshot_control::media::MediaSpec;
use earshot_control::store::{
    EndedRecord, JournalEntry, LegKey, LegRecord, MediaEntry, Snapshot, Store, StoreError,
};
use earshot_engine_api::LegId;
use earshot_etcd::testing::EtcdCluster;
use earshot_rules::{Actor, Command, Event, EventKind, State};

/// Opens a store; opening again with the same key reopens the same store.
trait Factory {
    fn open(&self, key: &str, retention: u64) -> Pin<Box<dyn Future<Output = Store> + '_>>;
    fn name(&self) -> &'static str;
}

struct Redb(tempfile::TempDir);

impl Factory for Redb {
    fn open(&self, key: &str, retention: u64) -> Pin<Box<dyn Future<Output = Store> + '_>> {
        let dir: PathBuf = self.0.path().join(key);
        Box::pin(async move { Store::open(&dir, retention).expect("redb store opens") })
    }
    fn name(&self) -> &'static str {
        "redb"
    }
}

struct Etcd(Vec<String>, String);

impl Factory for Etcd {
    fn open(&self, key: &str, retention: u64) -> Pin<Box<dyn Future<Output = Store> + '_>> {
        let prefix = format!("/{}/{key}/", self.1);
        Box::pin(async move {
            Store::open_etcd(&self.0, &prefix, retention)
                .await
                .expect("etcd store opens")
        })
    }
    fn name(&self) -> &'static str {
        "etcd"
    }
}

fn event(interaction: &str, kind: EventKind) -> Event {
    Event {
        kind,
        interaction_id: interaction.into(),
        at_ms: 5,
        actor: Actor::Orchestrator,
        details: BTreeMap::new(),
    }
}

fn entry(interaction: &str) -> JournalEntry {
    JournalEntry {
        now_ms: 5,
        command: Command::EndInteraction {
            interaction_id: interaction.into(),
        },
        media: Vec::new(),
        actor: Some("cc".into()),
    }
}

fn leg(n: u64, port: u16) -> LegRecord {
    LegRecord {
        leg: LegId(n),
        local: ([127, 0, 0, 1], port).into(),
        local_rtcp: ([127, 0, 0, 1], port).into(),
        configured: None,
        node: None,
    }
}

fn key(i: &str, p: &str) -> LegKey {
    (i.to_owned(), p.to_owned())
}

fn media(participant: usize) -> MediaEntry {
    MediaEntry {
        interaction_id: format!("call-{participant}"),
        participant_id: format!("participant-with-a-longish-name-{participant}"),
        media: MediaSpec {
            remote: Some(([10, 0, 0, 1], 4000).into()),
            codec: earshot_engine_api::Codec::Pcmu,
            payload_type: 0,
            ptime_ms: 20,
            telephone_event_pt: Some(101),
            rtcp_mux: true,
            auto_answer: true,
            srtp: None,
            // A strict source, so the stores round-trip the newer optional fields too.
            strict_source: Some([10, 0, 0, 1].into()),
            quiet_when_unheard: true,
            max_ptime_ms: Some(40),
            opus: Default::default(),
        },
    }
}

async fn commit_events(store: &Store, base: u64, events: &[Event]) -> (u64, Vec<u64>) {
    let c = store
        .commit(base, Some(&entry("a")), events, Some("cc"), &[], &[])
        .await
        .expect("commit");
    (c.head, c.records.iter().map(|r| r.sequence).collect())
}

async fn sequences_are_global_and_survive_reopening(f: &dyn Factory) {
    let store = f.open("seq", 100).await;
    assert!(store.is_new(), "{}: a new store says so", f.name());
    let id = store.id().to_owned();
    let head = store.load().await.unwrap().head;
    let (head, seqs) = commit_events(
        &store,
        head,
        &[
            event("a", EventKind::HoldStarted),
            event("b", EventKind::HoldEnded),
        ],
    )
    .await;
    assert_eq!(seqs, [1, 2], "{}", f.name());
    let first = store.events_after(0, 10).await.unwrap();
    assert_eq!(
        first[0].actor, "cc",
        "the named actor overrides orchestrator"
    );
    drop(store);
    let store = f.open("seq", 100).await;
    assert!(!store.is_new(), "{}: a reopened store is not new", f.name());
    assert_eq!(store.id(), id, "{}: the identity is stable", f.name());
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.head, head, "{}: the head survives", f.name());
    let (_, seqs) = commit_events(&store, head, &[event("a", EventKind::HoldEnded)]).await;
    assert_eq!(seqs, [3], "{}", f.name());
    let timeline = store.timeline("a").await.unwrap();
    assert_eq!(
        timeline.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 3],
        "{}: the timeline holds one interaction's events in order",
        f.name()
    );
    assert_eq!(store.load().await.unwrap().journal.len(), 2, "{}", f.name());
    assert_eq!(store.next_sequence().await.unwrap(), 4, "{}", f.name());
}

async fn retention_bounds_the_log_but_not_the_timeline(f: &dyn Factory) {
    let store = f.open("retention", 3).await;
    let mut head = store.load().await.unwrap().head;
    for _ in 0..5 {
        head = commit_events(&store, head, &[event("a", EventKind::HoldStarted)])
            .await
            .0;
    }
    assert_eq!(store.first_retained().await.unwrap(), 3, "{}", f.name());
    let after = store.events_after(0, 100).await.unwrap();
    assert_eq!(
        after.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [3, 4, 5],
        "{}",
        f.name()
    );
    let page = store.events_after(3, 1).await.unwrap();
    assert_eq!(page.len(), 1, "{}: the limit holds", f.name());
    assert_eq!(page[0].sequence, 4, "{}", f.name());
    assert_eq!(store.timeline("a").await.unwrap().len(), 5, "{}", f.name());
}

async fn a_snapshot_replaces_the_journal_it_covers(f: &dyn Factory) {
    let store = f.open("snapshot", 10).await;
    let head = store.load().await.unwrap().head;
    let c1 = store
        .commit(head, Some(&entry("a")), &[], None, &[], &[])
        .await
        .unwrap();
    let i1 = c1.index.expect("an entry gets an index");
    // Large enough to need several etcd values (1 MiB each).
    let big: Vec<MediaEntry> = (0..9000).map(media).collect();
    let snapshot = Snapshot {
        journal_upto: c1.head,
        rules: State::default(),
        media: big.clone(),
    };
    store.write_snapshot(&snapshot).await.unwrap();
    let c2 = store
        .commit(c1.head, Some(&entry("b")), &[], None, &[], &[])
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    let snap = loaded.snapshot.expect("the snapshot loads");
    assert_eq!(snap.journal_upto, c1.head, "{}", f.name());
    assert_eq!(
        snap.media,
        big,
        "{}: the snapshot round-trips whole",
        f.name()
    );
    assert_eq!(
        loaded.journal.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [c2.index.unwrap()],
        "{}: only the journal after the snapshot is left",
        f.name()
    );
    assert!(c2.index.unwrap() > i1);
    assert_eq!(loaded.head, c2.head, "{}", f.name());
    // An older snapshot never replaces a newer one.
    store
        .write_snapshot(&Snapshot {
            journal_upto: 0,
            rules: State::default(),
            media: Vec::new(),
        })
        .await
        .unwrap();
    let again = store.load().await.unwrap().snapshot.unwrap();
    assert_eq!(again.journal_upto, c1.head, "{}", f.name());
}

async fn leg_records_commit_with_the_command(f: &dyn Factory) {
    let store = f.open("legs", 10).await;
    let head = store.load().await.unwrap().head;
    let c = store
        .commit(
            head,
            Some(&entry("i")),
            &[event("i", EventKind::ParticipantJoined)],
            None,
            &[
                (key("i", "a"), leg(1, 40000)),
                (key("i", "b"), leg(2, 40002)),
            ],
            &[],
        )
        .await
        .unwrap();
    let c = store
        .commit(
            c.head,
            None,
            &[],
            None,
            &[(key("i", "b"), leg(3, 40004))],
            &[key("i", "a")],
        )
        .await
        .unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(
        loaded.legs,
        vec![(key("i", "b"), leg(3, 40004))],
        "{}: puts and deletes apply in order",
        f.name()
    );
    assert_eq!(loaded.head, c.head, "{}", f.name());
    // Nothing to write: no transaction, the head stays.
    let none = store
        .commit(c.head, None, &[], None, &[], &[])
        .await
        .unwrap();
    assert_eq!(none.head, c.head, "{}", f.name());
}

async fn a_commit_on_a_stale_base_is_refused_whole(f: &dyn Factory) {
    let store = f.open("stale", 10).await;
    let base = store.load().await.unwrap().head;
    let won = store
        .commit(
            base,
            Some(&entry("x")),
            &[event("x", EventKind::CoachStarted)],
            None,
            &[],
            &[],
        )
        .await
        .unwrap();
    let lost = store
        .commit(
            base,
            Some(&entry("x")),
            &[event("x", EventKind::CoachStarted)],
            None,
            &[(key("x", "s"), leg(9, 41000))],
            &[],
        )
        .await;
    match lost {
        Err(StoreError::Conflict { head }) => {
            assert_eq!(head, won.head, "{}: the conflict names the head", f.name())
        }
        other => panic!("{}: a stale base must conflict, got {other:?}", f.name()),
    }
    let loaded = store.load().await.unwrap();
    assert_eq!(loaded.head, won.head, "{}: nothing written", f.name());
    assert!(loaded.legs.is_empty(), "{}: no leg written", f.name());
    assert_eq!(store.timeline("x").await.unwrap().len(), 1, "{}", f.name());
    assert_eq!(store.next_sequence().await.unwrap(), 2, "{}", f.name());
}

async fn ended_views_stay_until_pruned(f: &dyn Factory) {
    let store = f.open("ended", 10).await;
    let head = store.load().await.unwrap().head;
    commit_events(&store, head, &[event("gone", EventKind::InteractionEnded)]).await;
    let record = |ms| EndedRecord {
        ended_ms: ms,
        created_with: Vec::new(),
        user_ids: vec!["u1".into()],
        supervision_ids: vec!["sup-1".into(), "alias-1".into()],
        view: vec![1, 2, 3],
    };
    let sups = vec![
        ("sup-1".to_owned(), vec![7u8]),
        ("alias-1".to_owned(), vec![7u8]),
    ];
    store.retire("gone", &record(1000), &sups).await.unwrap();
    // A second retire (another replica, a retry) changes nothing.
    store.retire("gone", &record(5000), &[]).await.unwrap();
    store.retire("later", &record(9000), &[]).await.unwrap();
    assert_eq!(
        store.ended("gone").await.unwrap().map(|r| r.ended_ms),
        Some(1000),
        "{}: the first retire wins",
        f.name()
    );
    assert_eq!(store.ended_all().await.unwrap().len(), 2, "{}", f.name());
    assert_eq!(
        store.ended_supervision("alias-1").await.unwrap(),
        Some(vec![7]),
        "{}",
        f.name()
    );
    assert_eq!(store.ended_supervisions().await.unwrap().len(), 2);
    assert_eq!(
        store.prune_ended(2000, 10).await.unwrap(),
        1,
        "{}",
        f.name()
    );
    assert!(store.ended("gone").await.unwrap().is_none(), "{}", f.name());
    assert!(store.ended_supervision("sup-1").await.unwrap().is_none());
    assert!(
        store.timeline("gone").await.unwrap().is_empty(),
        "{}: pruning deletes the timeline",
        f.name()
    );
    assert!(
        store.ended("later").await.unwrap().is_some(),
        "{}",
        f.name()
    );
}

async fn suite(f: &dyn Factory) {
    sequences_are_global_and_survive_reopening(f).await;
    retention_bounds_the_log_but_not_the_timeline(f).await;
    a_snapshot_replaces_the_journal_it_covers(f).await;
    leg_records_commit_with_the_command(f).await;
    a_commit_on_a_stale_base_is_refused_whole(f).await;
    ended_views_stay_until_pruned(f).await;
    println!("{}: conformance suite passed", f.name());
}

#[tokio::test]
async fn the_embedded_store_passes_the_conformance_suite() {
    suite(&Redb(tempfile::tempdir().unwrap())).await;
}

#[tokio::test]
async fn the_etcd_store_passes_the_conformance_suite() {
    let Some(cluster) = EtcdCluster::start(1).await else {
        return;
    };
    suite(&Etcd(cluster.endpoints(), "conformance".into())).await;
}

/// Two replicas (two store handles on a 3-member cluster, each talking to a different
/// member first) race to commit on the same head: exactly one wins; the loser reads
/// the winner's record and its own retry then lands after it, with the next sequence.
#[tokio::test]
async fn racing_replicas_on_etcd_commit_exactly_once_each_in_order() {
    let Some(cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let mut endpoints = cluster.endpoints();
    let a = Store::open_etcd(&endpoints, "/race/", 100).await.unwrap();
    endpoints.rotate_left(1);
    let b = Store::open_etcd(&endpoints, "/race/", 100).await.unwrap();
    assert_eq!(a.id(), b.id(), "both replicas see one store");
    assert!(a.is_new() != b.is_new(), "exactly one created it");
    let base = a.load().await.unwrap().head;
    let ea = [event("call", EventKind::CoachStarted)];
    let eb = [event("call", EventKind::CoachStarted)];
    let (ja, jb) = (entry("a"), entry("b"));
    let (ra, rb) = tokio::join!(
        a.commit(base, Some(&ja), &ea, Some("a"), &[], &[]),
        b.commit(base, Some(&jb), &eb, Some("b"), &[], &[]),
    );
    let (winner, loser, loser_store) = match (ra, rb) {
        (Ok(w), Err(StoreError::Conflict { .. })) => (w, "b", &b),
        (Err(StoreError::Conflict { .. }), Ok(w)) => (w, "a", &a),
        (ra, rb) => panic!("exactly one must win: {ra:?} / {rb:?}"),
    };
    let seen = loser_store.records_after(base).await.unwrap();
    assert_eq!(seen.len(), 1, "the loser sees the winner's record");
    assert_eq!(seen[0].0, winner.head);
    assert_eq!(seen[0].1.events[0].sequence, winner.records[0].sequence);
    // The loser's retry, on the new head, lands after it.
    let retry = loser_store
        .commit(winner.head, Some(&entry(loser)), &[], Some(loser), &[], &[])
        .await
        .unwrap();
    assert_eq!(retry.head, winner.head + 1);
    finish_race(&a, &b, retry.head).await;
}

/// The rest of the race: keep both replicas committing concurrently for many rounds
/// and check that every event got a distinct, gap-free sequence number.
async fn finish_race(a: &Store, b: &Store, mut head: u64) {
    let rounds = 30;
    for _ in 0..rounds {
        let ea = [event("call", EventKind::HoldStarted)];
        let eb = [event("call", EventKind::HoldEnded)];
        let (ja, jb) = (entry("a"), entry("b"));
        let (ra, rb) = tokio::join!(
            a.commit(head, Some(&ja), &ea, None, &[], &[]),
            b.commit(head, Some(&jb), &eb, None, &[], &[]),
        );
        let ok = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            ok, 1,
            "exactly one of two racing commits wins: {ra:?} {rb:?}"
        );
        head = ra.or(rb).unwrap().head;
    }
    let events = a.events_after(0, 1000).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequences are global and gap-free");
    println!(
        "race: {rounds} rounds, one winner each, {} events",
        seqs.len()
    );
}
