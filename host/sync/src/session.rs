//! Sync sessions: the client and server ends of one bidirectional stream, over any
//! [`Frames`] carrier.
//!
//! A client opens with [`Msg::Open`], asks (reconcile, want, chain, records), may push
//! intentions the server lacks, and ends with [`Msg::Done`]; the server answers `Done` only
//! after everything pushed to it is durable. A stream that ends before both `Done`s is a
//! failed session ([`SessionError::Link`]), never a successful one.

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use lattice_log::{
    Error as LogError, Incoming, IngestError, IngestResults, Ingested, Log, Pending,
};
use lattice_model::{ChainVerifier, Hash, PubKey, SignedIntention, StoreId};

use crate::reconcile::{FRAME_LIMIT, Initiator, Responder, SyncError};
use crate::wire::{BATCH_BYTES, FrameError, MAX_HASHES, Msg, SESSION_VERSION};

/// A carrier of whole frames in both directions (one stream of a transport, or an in-memory
/// pair in tests). Implementations check each frame against [`crate::MAX_FRAME`] before
/// reading it.
pub trait Frames: Send {
    /// Sends one frame.
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = Result<(), LinkError>> + Send;
    /// Receives one frame; `None` when the peer finished its side of the stream.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>, LinkError>> + Send;
}

/// The carrier failed (connection lost, reset, oversized frame, timeout).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LinkError(pub String);

/// A sync session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The connection failed or ended before the done exchange.
    #[error("connection failed: {0}")]
    Link(String),
    /// The peer sent something invalid: a bad frame, an out-of-turn message, an invalid
    /// intention, a witness record that does not check out.
    #[error("peer misbehaved: {0}")]
    Misbehaved(String),
    /// The server declined the session.
    #[error("peer refused the session: {0}")]
    Refused(String),
    /// The local log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl SessionError {
    /// True when the peer is to blame (count it against the peer).
    pub fn is_misbehaviour(&self) -> bool {
        matches!(self, SessionError::Misbehaved(_))
    }
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> SessionError {
        SessionError::Misbehaved(e.to_string())
    }
}

impl From<LinkError> for SessionError {
    fn from(e: LinkError) -> SessionError {
        SessionError::Link(e.0)
    }
}

impl From<SyncError> for SessionError {
    fn from(e: SyncError) -> SessionError {
        match e {
            SyncError::Log(e) => SessionError::Log(e),
            other => SessionError::Misbehaved(other.to_string()),
        }
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Cap on each reconciliation message (see [`FRAME_LIMIT`]).
    pub frame_limit: u64,
    /// Witness records per bootstrap page.
    pub page: u32,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            frame_limit: FRAME_LIMIT,
            page: 4096,
        }
    }
}

/// Largest bootstrap page a server sends.
const MAX_PAGE: u32 = 16_384;
/// Most intentions a server returns for one chain request.
const CHAIN_MAX_ITEMS: usize = 20_000;
/// About how many bytes a server returns for one chain request.
const CHAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Ingest batches in flight before the client waits for the oldest.
const INGEST_WINDOW: usize = 4;
/// The reason a member gives a peer it does not list for not serving witness pages.
pub const UNLISTED: &str = "you are not a member of this store here yet";
/// The reason a server with a pruned log gives for not serving witness-record pages.
pub const PRUNED_RECORDS: &str =
    "this member pruned its history; join from a snapshot of it instead";
/// Chain requests per session before giving up on a gap.
const CHAIN_ROUNDS: usize = 64;

/// Counts of what a session moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// Reconciliation round trips.
    pub rounds: u64,
    /// Bytes of frames sent.
    pub bytes_sent: u64,
    /// Bytes of frames received.
    pub bytes_received: u64,
    /// Intentions received and newly witnessed.
    pub witnessed: u64,
    /// Intentions received that wait (floating) for a missing parent.
    pub floating: u64,
    /// Intentions received that were already here.
    pub duplicates: u64,
    /// Intentions sent to the peer.
    pub sent: u64,
    /// Intentions the peer lacked (reconcile: witnessed here only).
    pub have: u64,
    /// Intentions this side lacked (reconcile: witnessed there only; bootstrap: records).
    pub need: u64,
    /// Intentions refused for now but maybe later (clock drift).
    pub deferred: u64,
    /// Intentions received that this log pruned already (an unpruned peer's history).
    pub pruned: u64,
    /// Reconcile: the server pruned history this side never had (this side's chain
    /// position of some author is below the server's floor), so the server cannot fill
    /// the gaps: catch up through a snapshot of it.
    pub behind: bool,
}

/// Frames with byte counts and decoding.
struct Link<'a, F> {
    io: &'a mut F,
    sent: u64,
    received: u64,
}

impl<F: Frames> Link<'_, F> {
    async fn send(&mut self, msg: &Msg) -> Result<(), SessionError> {
        let frame = msg.encode();
        self.sent += frame.len() as u64;
        if let Err(e) = self.io.send(frame).await {
            // A peer that refused the session stops reading what follows (a client sends its
            // first frames before any answer): its reason, when it came, is the error to
            // report. Once the peer has answered, a failed send is the link's.
            if self.received == 0
                && let Ok(Some(frame)) = self.io.recv().await
                && let Ok(Msg::Refused(reason)) = Msg::decode(&frame)
            {
                return Err(SessionError::Refused(reason));
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Msg, SessionError> {
        match self.io.recv().await? {
            Some(frame) => {
                self.received += frame.len() as u64;
                Ok(Msg::decode(&frame)?)
            }
            None => Err(SessionError::Link(
                "stream ended before the session was done".into(),
            )),
        }
    }

    /// Sends intentions in byte-bounded batches. With `end`, the final frame has `last` set
    /// (sent even when empty); without, every frame is a middle part of a longer answer.
    async fn send_intentions(
        &mut self,
        items: Vec<(u64, Vec<u8>)>,
        end: bool,
    ) -> Result<u64, SessionError> {
        let n = items.len() as u64;
        let mut batch = Vec::new();
        let mut size = 0;
        for (_, bytes) in items {
            if size + bytes.len() > BATCH_BYTES && !batch.is_empty() {
                let items = std::mem::take(&mut batch);
                self.send(&Msg::Intentions { items, last: false }).await?;
                size = 0;
            }
            size += bytes.len() + 4;
            batch.push(bytes);
        }
        if end || !batch.is_empty() {
            self.send(&Msg::Intentions {
                items: batch,
                last: end,
            })
            .await?;
        }
        Ok(n)
    }

    /// Receives one answer of intentions (until `last`) into `ingest`.
    async fn recv_intentions(&mut self, ingest: &mut Ingestor<'_>) -> Result<(), SessionError> {
        loop {
            match self.recv().await? {
                Msg::Intentions { items, last } => {
                    ingest.push(items).await?;
                    if last {
                        return Ok(());
                    }
                }
                Msg::Refused(reason) => return Err(SessionError::Refused(reason)),
                _ => return Err(unexpected("intentions")),
            }
        }
    }

    /// Client side of the done exchange.
    async fn finish(&mut self) -> Result<(), SessionError> {
        self.send(&Msg::Done).await?;
        match self.recv().await? {
            Msg::Done => Ok(()),
            Msg::Refused(reason) => Err(SessionError::Refused(reason)),
            _ => Err(unexpected("done")),
        }
    }

    fn report(&self, report: &mut SessionReport) {
        report.bytes_sent = self.sent;
        report.bytes_received = self.received;
    }
}

fn unexpected(wanted: &str) -> SessionError {
    SessionError::Misbehaved(format!("unexpected message (wanted {wanted})"))
}

/// Feeds received intentions to the log with a few batches in flight.
struct Ingestor<'a> {
    log: &'a Log,
    pending: VecDeque<Pending<Result<IngestResults, LogError>>>,
    report: SessionReport,
}

impl<'a> Ingestor<'a> {
    fn new(log: &'a Log) -> Ingestor<'a> {
        Ingestor {
            log,
            pending: VecDeque::new(),
            report: SessionReport::default(),
        }
    }

    async fn push(&mut self, items: Vec<Vec<u8>>) -> Result<(), SessionError> {
        if items.is_empty() {
            return Ok(());
        }
        let incoming = items.into_iter().map(Incoming::new).collect();
        self.pending.push_back(self.log.submit_ingest(incoming));
        while self.pending.len() > INGEST_WINDOW {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), SessionError> {
        if let Some(p) = self.pending.pop_front() {
            let results = p.await??;
            tally(&mut self.report, results)?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), SessionError> {
        while !self.pending.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }
}

/// Counts results; an intention that no honest peer would send is misbehaviour.
fn tally(report: &mut SessionReport, results: IngestResults) -> Result<(), SessionError> {
    for r in results {
        match r {
            Ok(Ingested::Witnessed { .. }) => report.witnessed += 1,
            Ok(Ingested::Floating { .. }) => report.floating += 1,
            Ok(Ingested::Duplicate) => report.duplicates += 1,
            Err(e) if e.is_retryable() => report.deferred += 1,
            // Another branch of a fork may be witnessed by an honest peer: not its fault.
            Err(IngestError::ForkedChain { .. }) => report.deferred += 1,
            // An honest peer that pruned less still holds (and offers) history pruned here.
            Err(IngestError::Pruned { .. }) => report.pruned += 1,
            Err(e) => return Err(SessionError::Misbehaved(e.to_string())),
        }
    }
    Ok(())
}

async fn open<F: Frames>(link: &mut Link<'_, F>, store: StoreId) -> Result<(), SessionError> {
    link.send(&Msg::Open {
        version: SESSION_VERSION,
        store,
    })
    .await
}

/// Asks for `hashes` (in chunks) and ingests the answers.
async fn want<F: Frames>(
    link: &mut Link<'_, F>,
    ingest: &mut Ingestor<'_>,
    hashes: &[Hash],
) -> Result<(), SessionError> {
    for chunk in hashes.chunks(MAX_HASHES / 4) {
        link.send(&Msg::Want(chunk.to_vec())).await?;
        link.recv_intentions(ingest).await?;
    }
    Ok(())
}

/// Reconciles with the server and exchanges the differences both ways: fetches what only the
/// server has and pushes what only this side has.
///
/// # Errors
/// [`SessionError`]; what was ingested before a failure stays (it was valid).
pub async fn reconcile<F: Frames>(
    io: &mut F,
    log: &Log,
    options: &SessionOptions,
) -> Result<SessionReport, SessionError> {
    let mut link = Link {
        io,
        sent: 0,
        received: 0,
    };
    open(&mut link, log.store_id()).await?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut rounds = 0;
    {
        let (mut client, first) =
            Initiator::start(log.reader().sync_snapshot()?, options.frame_limit)?;
        let mut msg = first;
        loop {
            rounds += 1;
            link.send(&Msg::Reconcile(msg)).await?;
            let reply = match link.recv().await? {
                Msg::Reconcile(reply) => reply,
                Msg::Refused(reason) => return Err(SessionError::Refused(reason)),
                _ => return Err(unexpected("reconcile")),
            };
            let step = client.step(&reply)?;
            have.extend(step.have);
            need.extend(step.need);
            match step.next {
                Some(next) => msg = next,
                None => break,
            }
        }
    }
    let mut ingest = Ingestor::new(log);
    want(&mut link, &mut ingest, &need).await?;
    ingest.drain().await?;
    // A server that pruned history this side still has, or that left what it sent floating
    // here, tells its floor: nothing it pruned is pushed to it again, and this side learns
    // whether it fell behind what the server can give.
    let mut behind = false;
    if !have.is_empty() || ingest.report.floating > 0 {
        link.send(&Msg::FloorQuery).await?;
        let floor = match link.recv().await? {
            Msg::Floor(floor) => floor,
            _ => return Err(unexpected("floor")),
        };
        if !floor.is_empty() {
            have = below_floor_dropped(log, have, &floor)?;
            let here: HashMap<PubKey, u64> = log.reader().frontier()?.into_iter().collect();
            behind = floor
                .iter()
                .any(|(author, at)| here.get(author).copied().unwrap_or(0) < *at);
        }
    }
    let mut sent = 0;
    if !have.is_empty() {
        let mut batch = Vec::new();
        for chunk in have.chunks(4096) {
            batch.extend(log.reader().witnessed_bytes(chunk)?);
            if batch.len() >= 4096 {
                sent += push(&mut link, std::mem::take(&mut batch), false).await?;
            }
        }
        sent += push(&mut link, batch, true).await?;
    }
    link.finish().await?;
    ingest.drain().await?;
    let mut report = ingest.report;
    link.report(&mut report);
    report.rounds = rounds;
    report.have = have.len() as u64;
    report.need = need.len() as u64;
    report.sent = sent;
    report.behind = behind;
    Ok(report)
}

/// `have` without the intentions the server pruned: those below its floor for their author.
fn below_floor_dropped(
    log: &Log,
    have: Vec<Hash>,
    floor: &[(PubKey, u64)],
) -> Result<Vec<Hash>, SessionError> {
    let floor: HashMap<PubKey, u64> = floor.iter().copied().collect();
    let reader = log.reader();
    let mut kept = Vec::with_capacity(have.len());
    for hash in have {
        let pruned = reader.dag_info(&hash)?.is_some_and(|info| {
            floor
                .get(&info.author)
                .is_some_and(|at| info.author_seq < *at)
        });
        if !pruned {
            kept.push(hash);
        }
    }
    Ok(kept)
}

/// Pushes intentions in causal (witness) order; `last` marks the end of the push.
async fn push<F: Frames>(
    link: &mut Link<'_, F>,
    mut items: Vec<(u64, Vec<u8>)>,
    last: bool,
) -> Result<u64, SessionError> {
    items.sort_unstable_by_key(|(seq, _)| *seq);
    link.send_intentions(items, last).await
}

/// Fetches the missing causal history of `targets` (hashes this side lacks or holds
/// floating) from the server: their predecessors and deps back to what this side already
/// has, including the first intentions of authors never seen here.
///
/// Returns once every target is witnessed here, or the server has nothing more to give.
///
/// # Errors
/// [`SessionError`].
pub async fn fetch_chain<F: Frames>(
    io: &mut F,
    log: &Log,
    targets: &[Hash],
) -> Result<SessionReport, SessionError> {
    let mut link = Link {
        io,
        sent: 0,
        received: 0,
    };
    open(&mut link, log.store_id()).await?;
    let mut ingest = Ingestor::new(log);
    let mut targets: Vec<Hash> = targets.iter().take(MAX_HASHES).copied().collect();
    for _ in 0..CHAIN_ROUNDS {
        let before = ingest.report.witnessed + ingest.report.floating;
        let mut frontier = log.reader().frontier()?;
        frontier.truncate(MAX_HASHES);
        link.send(&Msg::Chain {
            targets: targets.clone(),
            frontier,
        })
        .await?;
        link.recv_intentions(&mut ingest).await?;
        ingest.drain().await?;
        log.submit_settle().await?;
        let mut still = Vec::new();
        for t in &targets {
            if !log.reader().is_witnessed(t)? {
                still.push(*t);
            }
        }
        let progressed = ingest.report.witnessed + ingest.report.floating > before;
        targets = still;
        if targets.is_empty() || !progressed {
            break;
        }
    }
    link.finish().await?;
    let mut report = ingest.report;
    link.report(&mut report);
    report.need = targets.len() as u64;
    Ok(report)
}

/// Clones the server's witnessed history: reads its witness records page by page, checks
/// each page (store id, sequence, chain links, and the attestation of its last record
/// against `witness`, the server's node key), and fetches only the intentions this side
/// lacks, ingesting them through the normal validated path.
///
/// A failure leaves what was already ingested (it was valid); start again from the first
/// record, with this peer or another.
///
/// # Errors
/// [`SessionError::Misbehaved`] for records that do not check out; other session errors.
pub async fn bootstrap<F: Frames>(
    io: &mut F,
    log: &Log,
    witness: &PubKey,
    options: &SessionOptions,
    mut progress: impl FnMut(u64) + Send,
) -> Result<SessionReport, SessionError> {
    let mut link = Link {
        io,
        sent: 0,
        received: 0,
    };
    let store = log.store_id();
    open(&mut link, store).await?;
    let mut ingest = Ingestor::new(log);
    let mut chain = ChainVerifier::new(store);
    let page = options.page.clamp(1, MAX_PAGE);
    link.send(&Msg::Records {
        from_seq: 1,
        limit: page,
    })
    .await?;
    let mut records_seen = 0u64;
    loop {
        let (records, attestation) = match link.recv().await? {
            Msg::RecordPage {
                records,
                attestation,
            } => (records, attestation),
            Msg::Refused(reason) => return Err(SessionError::Refused(reason)),
            _ => return Err(unexpected("record page")),
        };
        let Some(last) = records.last() else {
            break;
        };
        for r in &records {
            chain
                .push(r)
                .map_err(|e| SessionError::Misbehaved(format!("witness record: {e}")))?;
        }
        let attestation = attestation
            .ok_or_else(|| SessionError::Misbehaved("record page without attestation".into()))?;
        if attestation.seq != last.seq {
            return Err(SessionError::Misbehaved(
                "attestation is not for the page's last record".into(),
            ));
        }
        attestation
            .verify(last, witness)
            .map_err(|_| SessionError::Misbehaved("witness attestation does not verify".into()))?;
        records_seen += records.len() as u64;
        let hashes: Vec<Hash> = records.iter().map(|r| r.intention).collect();
        let lacking = log.reader().lacking(&hashes)?;
        // Ask for the next page before taking this one's intentions, so the server keeps
        // streaming while this side ingests.
        let next = last.seq + 1;
        for chunk in lacking.chunks(MAX_HASHES / 4) {
            link.send(&Msg::Want(chunk.to_vec())).await?;
        }
        link.send(&Msg::Records {
            from_seq: next,
            limit: page,
        })
        .await?;
        for _ in lacking.chunks(MAX_HASHES / 4) {
            link.recv_intentions(&mut ingest).await?;
        }
        progress(records_seen);
    }
    link.finish().await?;
    ingest.drain().await?;
    log.submit_settle().await?;
    let mut report = ingest.report;
    link.report(&mut report);
    report.need = records_seen;
    Ok(report)
}

/// What a client opened a stream for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A sync session for a store: continue with [`serve`] or [`refuse`].
    Session(StoreId),
    /// A join with an invite secret: answer with [`welcome`] or [`refuse`].
    Join {
        /// The store.
        store: StoreId,
        /// The invite's secret.
        secret: [u8; 32],
        /// The client's newest position in its own chain of the store.
        tip: u64,
        /// Its positions in the child stores of the store it holds.
        children: Vec<(StoreId, u64)>,
    },
    /// A snapshot fetch for a store: answer with [`crate::send_snapshot`],
    /// [`crate::no_snapshot`] or [`refuse`].
    Snapshot(StoreId),
    /// A blob fetch: chunk ranges of blob `hash` of `store` ([`crate::Msg::BlobGet`]);
    /// answer with `BlobSize`, `BlobData`… and `BlobDone`, or [`refuse`].
    Blob {
        /// The store.
        store: StoreId,
        /// The blob.
        hash: Hash,
        /// The chunk ranges wanted.
        ranges: Vec<(u64, u64)>,
    },
}

/// Reads the client's first frame on a served stream.
///
/// # Errors
/// [`SessionError::Misbehaved`] for anything but a supported open or join;
/// [`SessionError::Link`] when the stream ends first.
pub async fn accept<F: Frames>(io: &mut F) -> Result<Opening, SessionError> {
    let frame = io
        .recv()
        .await?
        .ok_or_else(|| SessionError::Link("stream ended before open".into()))?;
    match Msg::decode(&frame)? {
        Msg::Open { version, store } if version == SESSION_VERSION => Ok(Opening::Session(store)),
        Msg::Join {
            version,
            store,
            secret,
            tip,
            children,
        } if version == SESSION_VERSION => Ok(Opening::Join {
            store,
            secret,
            tip,
            children,
        }),
        Msg::SnapshotOpen { version, store } if version == SESSION_VERSION => {
            Ok(Opening::Snapshot(store))
        }
        Msg::BlobGet {
            version,
            store,
            hash,
            ranges,
        } if version == SESSION_VERSION => Ok(Opening::Blob {
            store,
            hash,
            ranges,
        }),
        Msg::Open { version, .. }
        | Msg::Join { version, .. }
        | Msg::SnapshotOpen { version, .. }
        | Msg::BlobGet { version, .. } => Err(SessionError::Misbehaved(format!(
            "session version {version} is not supported"
        ))),
        _ => Err(unexpected("open")),
    }
}

/// Accepts a join ([`Opening::Join`]).
///
/// # Errors
/// [`SessionError::Link`] when the answer cannot be sent.
pub async fn welcome<F: Frames>(io: &mut F) -> Result<(), SessionError> {
    io.send(Msg::Welcome.encode()).await?;
    Ok(())
}

/// Client side of a join: presents the invite `secret` for `store` and waits for the answer.
///
/// # Errors
/// [`SessionError::Refused`] with the server's reason (bad, used or expired invite, …);
/// [`SessionError::Link`]; [`SessionError::Misbehaved`] for an unexpected answer.
pub async fn request_join<F: Frames>(
    io: &mut F,
    store: StoreId,
    secret: [u8; 32],
    tip: u64,
    children: Vec<(StoreId, u64)>,
) -> Result<(), SessionError> {
    io.send(
        Msg::Join {
            version: SESSION_VERSION,
            store,
            secret,
            tip,
            children,
        }
        .encode(),
    )
    .await?;
    let frame = io
        .recv()
        .await?
        .ok_or_else(|| SessionError::Link("stream ended before the join answer".into()))?;
    match Msg::decode(&frame)? {
        Msg::Welcome => Ok(()),
        Msg::Refused(reason) => Err(SessionError::Refused(reason)),
        _ => Err(unexpected("welcome")),
    }
}

/// Declines a session with a reason the client shows.
///
/// # Errors
/// [`SessionError::Link`] when the reason cannot be sent.
pub async fn refuse<F: Frames>(io: &mut F, reason: &str) -> Result<(), SessionError> {
    io.send(Msg::Refused(reason.to_string()).encode()).await?;
    Ok(())
}

/// Serves one session for `log` after [`accept`]: answers until the client's `Done`, and
/// replies `Done` once everything the client pushed is durable.
///
/// # Errors
/// [`SessionError`]; [`SessionError::Misbehaved`] when the client broke the protocol or sent
/// invalid intentions (nothing invalid is stored).
pub async fn serve<F: Frames>(
    io: &mut F,
    log: &Log,
    options: &SessionOptions,
) -> Result<SessionReport, SessionError> {
    serve_as(io, log, options, None).await
}

/// Serves a session to a peer this node does not list as a member of the store (yet): a
/// member that missed the peer's admission, while every member it knows is away, learns of
/// it this way. Nothing of the store goes out — reconciliation fingerprints are answered,
/// requests for intentions get none, witness pages are refused, the prune floor is told as
/// empty — and of what the peer pushes
/// only intentions by authors `listed` accepts (this node's members) are taken. Among them
/// are the records that admitted the peer, after which it is a member here.
///
/// # Errors
/// As [`serve`].
pub async fn serve_unlisted<F: Frames>(
    io: &mut F,
    log: &Log,
    options: &SessionOptions,
    listed: &(dyn Fn(&PubKey) -> bool + Sync),
) -> Result<SessionReport, SessionError> {
    serve_as(io, log, options, Some(listed)).await
}

async fn serve_as<F: Frames>(
    io: &mut F,
    log: &Log,
    options: &SessionOptions,
    listed: Option<&(dyn Fn(&PubKey) -> bool + Sync)>,
) -> Result<SessionReport, SessionError> {
    let mut link = Link {
        io,
        sent: 0,
        received: 0,
    };
    let mut ingest = Ingestor::new(log);
    let mut responder: Option<Responder> = None;
    let mut sent = 0;
    let mut rounds = 0;
    loop {
        match link.recv().await? {
            Msg::Reconcile(msg) => {
                rounds += 1;
                let r = match &mut responder {
                    Some(r) => r,
                    None => responder.insert(Responder::new(
                        log.reader().sync_snapshot()?,
                        options.frame_limit,
                    )?),
                };
                let reply = r.respond(&msg)?;
                link.send(&Msg::Reconcile(reply)).await?;
            }
            Msg::Want(_) | Msg::Chain { .. } if listed.is_some() => {
                responder = None;
                link.send_intentions(Vec::new(), true).await?;
            }
            Msg::Records { .. } if listed.is_some() => {
                link.send(&Msg::Refused(UNLISTED.into())).await?;
            }
            Msg::FloorQuery if listed.is_some() => link.send(&Msg::Floor(Vec::new())).await?,
            Msg::Intentions { items, .. } if let Some(listed) = listed => {
                // Undecodable items go on to the log, which refuses them as the peer's fault.
                let items = items
                    .into_iter()
                    .filter(|bytes| {
                        SignedIntention::decode(bytes)
                            .map_or(true, |s| listed(&s.intention().author()))
                    })
                    .collect();
                ingest.push(items).await?;
            }
            Msg::Want(hashes) => {
                responder = None;
                let items = log.reader().witnessed_bytes(&hashes)?;
                sent += link.send_intentions(items, true).await?;
            }
            Msg::Chain { targets, frontier } => {
                let (items, _cut) = log.reader().chain_since(
                    &targets,
                    &frontier,
                    CHAIN_MAX_ITEMS,
                    CHAIN_MAX_BYTES,
                )?;
                sent += link.send_intentions(items, true).await?;
            }
            Msg::Records { .. } if !log.reader().prune_floor()?.is_empty() => {
                // Pages of a pruned witness log have gaps no client can check.
                link.send(&Msg::Refused(PRUNED_RECORDS.into())).await?;
            }
            Msg::Records { from_seq, limit } => {
                let (records, attestation) = log
                    .reader()
                    .attested_page(from_seq, limit.clamp(1, MAX_PAGE) as usize)?;
                link.send(&Msg::RecordPage {
                    records,
                    attestation,
                })
                .await?;
            }
            Msg::Intentions { items, .. } => ingest.push(items).await?,
            Msg::FloorQuery => {
                let floor = log
                    .reader()
                    .prune_floor()?
                    .into_iter()
                    .map(|(author, at, _)| (author, at))
                    .collect();
                link.send(&Msg::Floor(floor)).await?;
            }
            Msg::Done => {
                ingest.drain().await?;
                link.send(&Msg::Done).await?;
                break;
            }
            Msg::Open { .. }
            | Msg::RecordPage { .. }
            | Msg::Refused(_)
            | Msg::Join { .. }
            | Msg::Welcome
            | Msg::SnapshotOpen { .. }
            | Msg::SnapshotPart { .. }
            | Msg::NoSnapshot
            | Msg::Floor(_)
            | Msg::BlobGet { .. }
            | Msg::BlobSize(_)
            | Msg::BlobData(_)
            | Msg::BlobDone => {
                return Err(unexpected("a request"));
            }
        }
    }
    let mut report = ingest.report;
    link.report(&mut report);
    report.sent = sent;
    report.rounds = rounds;
    Ok(report)
}
