//! Sync sessions between real logs over an in-memory frame pair: reconcile both ways, chain
//! fetch for gaps (including unseen authors), bootstrap from witness records, the done
//! exchange, and refusal of bad records.

use std::collections::BTreeSet;

use lattice_log::{Incoming, Log, LogConfig, SplitMix64, SyntheticDag};
use lattice_model::{Hash, NodeKey, SignedIntention};
use lattice_sync::{
    Frames, LinkError, Msg, Opening, SNAPSHOT_PART, SessionError, SessionOptions, accept,
    bootstrap, fetch_chain, fetch_snapshot, no_snapshot, reconcile, refuse, request_join,
    send_snapshot, serve, serve_unlisted, welcome,
};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One end of an in-memory frame pair; `cut_after` drops the link after that many sends.
struct End {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    rx: mpsc::Receiver<Vec<u8>>,
    cut_after: Option<usize>,
    tamper: Option<fn(&mut Vec<u8>)>,
}

fn pair() -> (End, End) {
    let (a_tx, a_rx) = mpsc::channel(16);
    let (b_tx, b_rx) = mpsc::channel(16);
    let end = |tx, rx| End {
        tx: Some(tx),
        rx,
        cut_after: None,
        tamper: None,
    };
    (end(a_tx, b_rx), end(b_tx, a_rx))
}

impl Frames for End {
    async fn send(&mut self, mut frame: Vec<u8>) -> Result<(), LinkError> {
        if let Some(n) = &mut self.cut_after {
            if *n == 0 {
                self.tx = None;
                return Err(LinkError("cut".into()));
            }
            *n -= 1;
        }
        if let Some(t) = self.tamper {
            t(&mut frame);
        }
        let tx = self.tx.as_ref().ok_or(LinkError("closed".into()))?;
        tx.send(frame)
            .await
            .map_err(|_| LinkError("peer gone".into()))
    }
    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        Ok(self.rx.recv().await)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dag: SyntheticDag,
    all: Vec<SignedIntention>,
}

fn fixture(seed: u64, n: usize) -> Fixture {
    let mut dag = SyntheticDag::new(seed, 5, 2, 40);
    let mut all = vec![dag.genesis().clone()];
    all.extend((0..n).map(|_| dag.next_intention()));
    Fixture {
        _dir: tempfile::tempdir().unwrap(),
        dag,
        all,
    }
}

impl Fixture {
    fn open(&self, name: &str, node: u8) -> Log {
        Log::open(
            &self._dir.path().join(name),
            self.dag.store_id(),
            NodeKey::from_seed([node; 32]),
            LogConfig::default(),
        )
        .unwrap()
    }
}

/// Ingests in batches of 200, so the log has many group commits (attestations).
fn feed(log: &Log, items: &[SignedIntention]) {
    for chunk in items.chunks(200) {
        let incoming = chunk
            .iter()
            .map(|s| Incoming::new(s.as_bytes().to_vec()))
            .collect();
        log.ingest(incoming).unwrap();
    }
    log.settle().unwrap();
}

/// Two causally closed sets: a common prefix of `common`, then each later intention goes to
/// one side (at random) among those holding all its parents, or to neither.
fn split_closed(
    all: &[SignedIntention],
    common: usize,
    seed: u64,
) -> (Vec<SignedIntention>, Vec<SignedIntention>) {
    let mut rng = SplitMix64::new(seed);
    let (mut a, mut b) = (all[..common].to_vec(), all[..common].to_vec());
    let mut ha: BTreeSet<Hash> = a.iter().map(|s| s.hash()).collect();
    let mut hb = ha.clone();
    for s in &all[common..] {
        let in_a = s.intention().parents().all(|p| ha.contains(&p));
        let in_b = s.intention().parents().all(|p| hb.contains(&p));
        let to_a = match (in_a, in_b) {
            // Prefer a side by author, so both sides keep growing.
            (true, true) => s.intention().author().0[0] % 2 == 0 || rng.below(8) == 0,
            (true, false) => true,
            (false, true) => false,
            (false, false) => continue,
        };
        if to_a {
            ha.insert(s.hash());
            a.push(s.clone());
        } else {
            hb.insert(s.hash());
            b.push(s.clone());
        }
    }
    (a, b)
}

fn witnessed(log: &Log) -> BTreeSet<Hash> {
    log.reader()
        .witnessed(1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, s)| s.hash())
        .collect()
}

async fn serve_one(mut io: End, log: &Log) -> Result<lattice_sync::SessionReport, SessionError> {
    let store = accept(&mut io).await?;
    assert_eq!(store, Opening::Session(log.store_id()));
    serve(&mut io, log, &SessionOptions::default()).await
}

#[tokio::test]
async fn reconcile_exchanges_both_ways_and_ends_with_done() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(21, 3000);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    let (to_a, to_b) = split_closed(&f.all, 2000, 21);
    feed(&a, &to_a);
    feed(&b, &to_b);
    assert_ne!(witnessed(&a).len(), 0);
    assert_ne!(witnessed(&a), witnessed(&b));
    let (mut client, server) = pair();
    let (c, s) = tokio::join!(reconcile(&mut client, &a, &o), serve_one(server, &b));
    let (c, s) = (c?, s?);
    a.settle()?;
    b.settle()?;
    let all: BTreeSet<Hash> = to_a.iter().chain(&to_b).map(|s| s.hash()).collect();
    assert_eq!(witnessed(&a), all);
    assert_eq!(witnessed(&b), all);
    assert!(c.need > 0 && c.have > 0, "{c:?}");
    assert_eq!(c.sent, c.have);
    assert_eq!(s.witnessed + s.floating + s.duplicates, c.have);
    assert!(c.bytes_sent > 0 && c.bytes_received > 0);
    Ok(())
}

#[tokio::test]
async fn an_unlisted_peer_gets_nothing_and_gives_only_what_listed_authors_wrote() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(23, 1500);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    // The server holds a prefix and one intention the client lacks; the client all the rest.
    let to_b = f.all[..801].to_vec();
    let mut to_a = f.all[..1000].to_vec();
    to_a.remove(800);
    feed(&a, &to_a);
    feed(&b, &to_b);
    let (before_a, before_b) = (witnessed(&a), witnessed(&b));
    // The server lists one author of the client's extra intentions.
    let extra: Vec<&SignedIntention> = to_a
        .iter()
        .filter(|s| !before_b.contains(&s.hash()))
        .collect();
    let listed = extra
        .first()
        .ok_or("no extra intention")?
        .intention()
        .author();
    let by_listed = |s: &SignedIntention| s.intention().author() == listed;
    assert!(
        extra.iter().any(|s| !by_listed(s)),
        "every extra intention has the listed author"
    );
    let (mut client, mut server) = pair();
    let members = move |author: &lattice_model::PubKey| *author == listed;
    let served = async {
        accept(&mut server).await?;
        serve_unlisted(&mut server, &b, &o, &members).await
    };
    let (c, s) = tokio::join!(reconcile(&mut client, &a, &o), served);
    let (c, s) = (c?, s?);
    a.settle()?;
    b.settle()?;
    // Nothing went out: the client holds what it held.
    assert_eq!(witnessed(&a), before_a);
    assert_eq!(s.sent, 0);
    assert!(
        c.need > 0,
        "the client lacked some of the server's intentions: {c:?}"
    );
    // In came only the listed author's intentions (the others it wrote are not taken).
    let taken: BTreeSet<Hash> = witnessed(&b).difference(&before_b).copied().collect();
    assert!(!taken.is_empty());
    let listed_extra: BTreeSet<Hash> = extra
        .iter()
        .filter(|s| by_listed(s))
        .map(|s| s.hash())
        .collect();
    assert!(
        taken.is_subset(&listed_extra),
        "an unlisted author's intention was taken"
    );
    Ok(())
}

#[tokio::test]
async fn chain_fetch_fills_a_gap_including_unseen_authors() -> TestResult {
    let f = fixture(22, 600);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all);
    // b has only the first 100 and the very last one: the last floats on a long gap.
    feed(&b, &f.all[..100]);
    let last = f.all.last().unwrap();
    b.ingest(vec![Incoming::new(last.as_bytes().to_vec())])?;
    assert!(b.reader().is_floating(&last.hash())?);
    let targets = [last.hash()];
    let (mut client, server) = pair();
    let (c, s) = tokio::join!(
        fetch_chain(&mut client, &b, &targets),
        serve_one(server, &a)
    );
    let (c, _) = (c?, s?);
    assert_eq!(c.need, 0, "target still missing: {c:?}");
    assert!(b.reader().is_witnessed(&last.hash())?);
    // Only what the gap needed came over, not the whole log again.
    assert!(c.duplicates <= 1 && c.witnessed <= 500, "{c:?}");
    Ok(())
}

#[tokio::test]
async fn bootstrap_clones_an_empty_log_and_checks_records() -> TestResult {
    let f = fixture(23, 2500);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all);
    let witness = NodeKey::from_seed([1; 32]).public();
    let options = SessionOptions {
        page: 300,
        ..SessionOptions::default()
    };
    let (mut client, server) = pair();
    let mut pages = 0;
    let (c, s) = tokio::join!(
        bootstrap(&mut client, &b, &witness, &options, |_| pages += 1),
        serve_one(server, &a)
    );
    let (c, _) = (c?, s?);
    assert_eq!(witnessed(&a), witnessed(&b));
    assert_eq!(c.need, f.all.len() as u64);
    assert!(pages >= 2);
    // A second bootstrap fetches nothing: everything is already here.
    let (mut client, server) = pair();
    let (c, s) = tokio::join!(
        bootstrap(&mut client, &b, &witness, &options, |_| {}),
        serve_one(server, &a)
    );
    assert_eq!(c?.witnessed, 0);
    s?;
    Ok(())
}

#[tokio::test]
async fn bootstrap_refuses_records_from_the_wrong_witness_and_tampered_pages() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(24, 300);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all);
    let (client, server) = pair();
    let wrong = NodeKey::from_seed([9; 32]).public();
    let opts = o.clone();
    let (c, _) = tokio::join!(
        async {
            let mut client = client;
            bootstrap(&mut client, &b, &wrong, &opts, |_| {}).await
        },
        async {
            let _ = serve_one(server, &a).await;
        }
    );
    assert!(matches!(c, Err(SessionError::Misbehaved(_))), "{c:?}");
    assert!(witnessed(&b).is_empty());
    // Flip a byte inside the record page (an intention hash): the chain link breaks.
    let (client, mut server) = pair();
    server.tamper = Some(|frame| {
        if frame.first() == Some(&7) && frame.len() > 200 {
            frame[100] ^= 1;
        }
    });
    let right = NodeKey::from_seed([1; 32]).public();
    let (c, _) = tokio::join!(
        async {
            let mut client = client;
            bootstrap(&mut client, &b, &right, &opts, |_| {}).await
        },
        async {
            let _ = serve_one(server, &a).await;
        }
    );
    assert!(matches!(c, Err(SessionError::Misbehaved(_))), "{c:?}");
    assert!(witnessed(&b).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_dropped_link_is_an_error_on_both_sides() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(25, 500);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all[..400]);
    feed(&b, &f.all);
    let (mut client, mut server) = pair();
    server.cut_after = Some(1);
    let (c, s) = tokio::join!(reconcile(&mut client, &a, &o), serve_one(server, &b));
    assert!(matches!(c, Err(SessionError::Link(_))), "{c:?}");
    assert!(s.is_err());
    Ok(())
}

/// A server that refuses stops reading: the client's next frame fails to send, and the client
/// reports the refusal that came back, not a broken link.
#[tokio::test]
async fn a_refusal_that_stops_the_clients_sending_is_reported_as_the_refusal() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(27, 50);
    let a = f.open("a.db", 1);
    feed(&a, &f.all);
    let (mut client, mut server) = pair();
    // The client's second frame (its first reconcile message) finds the stream stopped.
    client.cut_after = Some(1);
    let refusing = async {
        assert_eq!(accept(&mut server).await?, Opening::Session(a.store_id()));
        refuse(&mut server, "not replicated here").await
    };
    let (c, s) = tokio::join!(reconcile(&mut client, &a, &o), refusing);
    s?;
    match c {
        Err(SessionError::Refused(reason)) => assert_eq!(reason, "not replicated here"),
        other => panic!("expected the refusal, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn forged_pushes_are_misbehaviour_and_not_stored() -> TestResult {
    let f = fixture(26, 50);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&b, &f.all);
    let before = witnessed(&b);
    let (mut client, server) = pair();
    let mut forged = f.all[10].as_bytes().to_vec();
    let len = forged.len();
    forged[len - 1] ^= 1; // breaks the signature
    let garbage = vec![0xAB; 300];
    let client_side = async {
        client
            .send(
                Msg::Open {
                    version: 1,
                    store: a.store_id(),
                }
                .encode(),
            )
            .await?;
        client
            .send(
                Msg::Intentions {
                    items: vec![forged, garbage],
                    last: true,
                }
                .encode(),
            )
            .await?;
        client.send(Msg::Done.encode()).await?;
        Ok::<_, LinkError>(())
    };
    let (c, s) = tokio::join!(client_side, serve_one(server, &b));
    c?;
    assert!(matches!(s, Err(SessionError::Misbehaved(_))), "{s:?}");
    assert_eq!(witnessed(&b), before);
    assert_eq!(b.reader().status()?.floating, 0);
    Ok(())
}

#[tokio::test]
async fn join_is_answered_with_welcome_or_the_refusal_reason() -> TestResult {
    let store = lattice_model::StoreId([4; 32]);
    for accept_it in [true, false] {
        let (mut client, mut server) = pair();
        let serving = tokio::spawn(async move {
            let opening = accept(&mut server).await?;
            assert_eq!(
                opening,
                Opening::Join {
                    store,
                    secret: [9; 32],
                    tip: 3,
                    children: vec![(lattice_model::StoreId([5; 32]), 2)],
                }
            );
            if accept_it {
                welcome(&mut server).await
            } else {
                refuse(&mut server, "the invite was already used").await
            }
        });
        let answer = request_join(
            &mut client,
            store,
            [9; 32],
            3,
            vec![(lattice_model::StoreId([5; 32]), 2)],
        )
        .await;
        serving.await??;
        match answer {
            Ok(()) => assert!(accept_it),
            Err(SessionError::Refused(reason)) => {
                assert!(!accept_it);
                assert_eq!(reason, "the invite was already used");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_snapshot_arrives_whole_in_parts_or_not_at_all() -> TestResult {
    let store = lattice_model::StoreId([6; 32]);
    let blob: Vec<u8> = (0..SNAPSHOT_PART * 5 / 2)
        .map(|i| (i % 251) as u8)
        .collect();

    // Served whole: the same bytes, in three parts, progress after each.
    let (mut client, mut server) = pair();
    let sent = blob.clone();
    let serving = tokio::spawn(async move {
        assert_eq!(accept(&mut server).await?, Opening::Snapshot(store));
        send_snapshot(&mut server, &sent).await
    });
    let mut seen = Vec::new();
    let got = fetch_snapshot(&mut client, store, 1 << 30, |n, total| {
        seen.push((n, total))
    })
    .await?;
    serving.await??;
    assert_eq!(got.as_deref(), Some(&blob[..]));
    let total = blob.len() as u64;
    assert_eq!(
        seen,
        vec![
            (SNAPSHOT_PART as u64, total),
            (2 * SNAPSHOT_PART as u64, total),
            (total, total)
        ]
    );

    // A whole log has no snapshot; a refusal carries its reason; a snapshot over the limit
    // is not taken.
    let (mut client, mut server) = pair();
    let serving = tokio::spawn(async move {
        accept(&mut server).await?;
        no_snapshot(&mut server).await
    });
    assert_eq!(
        fetch_snapshot(&mut client, store, 1 << 30, |_, _| {}).await?,
        None
    );
    serving.await??;
    let (mut client, mut server) = pair();
    let serving = tokio::spawn(async move {
        accept(&mut server).await?;
        refuse(&mut server, "its current epoch is not final").await
    });
    let refused = fetch_snapshot(&mut client, store, 1 << 30, |_, _| {}).await;
    assert!(
        matches!(&refused, Err(SessionError::Refused(r)) if r == "its current epoch is not final"),
        "{refused:?}"
    );
    serving.await??;
    let (mut client, mut server) = pair();
    let sent = blob.clone();
    let serving = tokio::spawn(async move {
        accept(&mut server).await?;
        send_snapshot(&mut server, &sent).await
    });
    let too_big = fetch_snapshot(&mut client, store, 1000, |_, _| {}).await;
    assert!(
        matches!(too_big, Err(SessionError::Refused(_))),
        "{too_big:?}"
    );
    drop(client);
    let _ = serving.await?;
    Ok(())
}

#[tokio::test]
async fn snapshot_parts_that_do_not_add_up_are_misbehaviour() -> TestResult {
    let store = lattice_model::StoreId([6; 32]);
    let part = |total: u64, bytes: Vec<u8>| Msg::SnapshotPart { total, bytes }.encode();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "more than the total",
            vec![part(4, vec![1, 2, 3]), part(4, vec![4, 5])],
        ),
        (
            "totals differ",
            vec![part(6, vec![1, 2, 3]), part(7, vec![4, 5, 6])],
        ),
        (
            "an empty part",
            vec![part(6, vec![1, 2, 3]), part(6, vec![])],
        ),
        (
            "another message",
            vec![part(6, vec![1, 2, 3]), Msg::Done.encode()],
        ),
        (
            "no snapshot after a part",
            vec![part(6, vec![1]), Msg::NoSnapshot.encode()],
        ),
    ];
    for (what, frames) in cases {
        let (mut client, mut server) = pair();
        let serving = tokio::spawn(async move {
            accept(&mut server).await?;
            for f in frames {
                server.send(f).await?;
            }
            Ok::<_, SessionError>(server)
        });
        let got = fetch_snapshot(&mut client, store, 1 << 30, |_, _| {}).await;
        assert!(
            matches!(got, Err(SessionError::Misbehaved(_))),
            "{what}: {got:?}"
        );
        drop(serving.await??);
    }
    // The stream ending early is a link failure, not a snapshot.
    let (mut client, mut server) = pair();
    let serving = tokio::spawn(async move {
        accept(&mut server).await?;
        server.send(part(6, vec![1, 2, 3])).await?;
        Ok::<_, SessionError>(())
    });
    let got = fetch_snapshot(&mut client, store, 1 << 30, |_, _| {}).await;
    serving.await??;
    assert!(matches!(got, Err(SessionError::Link(_))), "{got:?}");
    Ok(())
}

#[tokio::test]
async fn a_pruned_log_refuses_record_pages_instead_of_serving_gaps() -> TestResult {
    let f = fixture(25, 400);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all);
    let epoch = f.all[300].hash();
    let step = a.prune(lattice_log::PruneTarget {
        epoch,
        keep: std::sync::Arc::new(|_| false),
        step: 128,
    })?;
    assert!(step.deleted > 0, "{step:?}");
    let witness = NodeKey::from_seed([1; 32]).public();
    let (client, server) = pair();
    let (c, s) = tokio::join!(
        async {
            // The client's end goes when it gives up, which ends the server's session.
            let mut client = client;
            bootstrap(
                &mut client,
                &b,
                &witness,
                &SessionOptions::default(),
                |_| {},
            )
            .await
        },
        serve_one(server, &a)
    );
    assert!(
        matches!(&c, Err(SessionError::Refused(r)) if r == lattice_sync::PRUNED_RECORDS),
        "{c:?}"
    );
    // The server is not at fault, and the client took nothing.
    drop(s);
    assert_eq!(b.reader().witnessed_count()?, 0);
    Ok(())
}

#[tokio::test]
async fn a_pruned_peer_is_not_sent_what_it_pruned_and_a_peer_behind_it_learns_so() -> TestResult {
    let o = SessionOptions::default();
    let f = fixture(26, 600);
    let (a, b) = (f.open("a.db", 1), f.open("b.db", 2));
    feed(&a, &f.all);
    feed(&b, &f.all[..200]);
    let pruned = a.prune(lattice_log::PruneTarget {
        epoch: f.all[500].hash(),
        keep: std::sync::Arc::new(|_| false),
        step: 128,
    })?;
    assert!(pruned.deleted > 100, "{pruned:?}");

    // B, with only old history, reconciles with A: what A pruned is not pushed to it, and
    // B learns it is behind A's floor (what A sends cannot stand on B's log).
    let (mut client, server) = pair();
    let (c, s) = tokio::join!(reconcile(&mut client, &b, &o), serve_one(server, &a));
    let (c, s) = (c?, s?);
    assert!(c.behind, "{c:?}");
    assert_eq!((c.have, c.sent), (0, 0), "{c:?}");
    assert_eq!(s.witnessed + s.pruned, 0, "{s:?}");
    assert!(c.floating > 0, "{c:?}");

    // A reconciles with B: B's old history comes back and is refused as pruned, which is
    // no fault of B's; A is not behind B (B pruned nothing).
    let (mut client, server) = pair();
    let (c, s) = tokio::join!(reconcile(&mut client, &a, &o), serve_one(server, &b));
    let (c, _) = (c?, s?);
    assert!(c.pruned > 0, "{c:?}");
    assert!(!c.behind, "{c:?}");
    Ok(())
}
