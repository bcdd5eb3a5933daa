//! [`LogReader`]: read-only access to `log.db` from any thread, concurrent with the actor.

use std::sync::Arc;

use lattice_model::{
    ChainVerifier, Hash, Hlc, PubKey, Signature, SignedIntention, StoreId, WitnessAttestation,
    WitnessRecord, verify_batch,
};
use redb::{
    Database, ReadOnlyTable, ReadableDatabase as _, ReadableTable, ReadableTableMetadata as _,
};

use crate::dag::{self, DagRead, DagTables, Floor};
use crate::error::{CorruptError, Error, QueryError};
use crate::sync_index::SyncSnapshot;
use crate::tables::{
    ATTESTATIONS, CHECKPOINTS, DAG, DagEntry, FLOATING, FloatingCounters, INDEX, INTENTIONS, META,
    META_CLOCK, META_FLOATING, META_WITNESS_KEY, TIPS, WITNESS, decode_hlc, decode_tip, read_floor,
};

/// A witnessed intention's sequence number and stored bytes.
pub type SeqBytes = (u64, Vec<u8>);

/// Read access to one store's log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LogReader {
    db: Arc<Database>,
    store_id: StoreId,
    visit_cap: usize,
}

/// Summary of a log, from a constant number of reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// Sequence number of the newest witness record (0 when empty).
    pub head_seq: u64,
    /// Hash of the newest witness record.
    pub head_hash: Hash,
    /// Floating intentions held.
    pub floating: u64,
    /// Bytes of floating intentions held.
    pub floating_bytes: u64,
}

/// DAG facts about one witnessed intention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagInfo {
    /// Witness sequence number.
    pub seq: u64,
    /// 1 + the largest generation among its parents.
    pub generation: u64,
    /// Position in its author's chain, from 1.
    pub author_seq: u64,
    /// Its author.
    pub author: PubKey,
    /// `prev` (when not zero) followed by its deps; those pruned since are left out.
    pub parents: Vec<Hash>,
}

/// What [`LogReader::verify`] checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Witness records checked (chain links, store id, sequence).
    pub records: u64,
    /// Attestations whose signature verified.
    pub attestations: u64,
    /// Intentions whose hash and author signature verified.
    pub intentions: u64,
    /// Places where pruned records left a gap (the chain is checked on either side).
    pub pruned_gaps: u64,
}

type ReadDag = DagTables<
    ReadOnlyTable<u64, &'static [u8]>,
    ReadOnlyTable<u64, &'static [u8]>,
    ReadOnlyTable<&'static [u8; 32], u64>,
    ReadOnlyTable<u64, &'static [u8]>,
>;

use crate::dag::decode_record;

impl LogReader {
    pub(crate) fn new(db: Arc<Database>, store_id: StoreId, visit_cap: usize) -> LogReader {
        LogReader {
            db,
            store_id,
            visit_cap,
        }
    }

    fn dag(&self) -> Result<ReadDag, Error> {
        let txn = self.db.begin_read()?;
        Ok(ReadDag {
            witness: txn.open_table(WITNESS)?,
            dag: txn.open_table(DAG)?,
            index: txn.open_table(INDEX)?,
            checkpoints: txn.open_table(CHECKPOINTS)?,
            floor: Floor::Lazy(txn, std::cell::OnceCell::new()),
        })
    }

    /// The store this log belongs to.
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// Returns the head of the witness log and the floating counters.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed record.
    pub fn status(&self) -> Result<LogStatus, Error> {
        let txn = self.db.begin_read()?;
        let witness = txn.open_table(WITNESS)?;
        let (head_seq, head_hash) = match witness.last()? {
            Some((k, v)) => (k.value(), decode_record(v.value())?.hash()),
            None => (0, Hash::ZERO),
        };
        let meta = txn.open_table(META)?;
        let floating = match meta.get(META_FLOATING)? {
            Some(v) => FloatingCounters::decode(v.value())?,
            None => FloatingCounters::default(),
        };
        Ok(LogStatus {
            head_seq,
            head_hash,
            floating: floating.count,
            floating_bytes: floating.bytes,
        })
    }

    /// Returns a witnessed intention.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a stored intention that does not decode.
    pub fn get(&self, hash: &Hash) -> Result<Option<SignedIntention>, Error> {
        let txn = self.db.begin_read()?;
        let Some(seq) = txn
            .open_table(INDEX)?
            .get(hash.as_bytes())?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let table = txn.open_table(INTENTIONS)?;
        match table.get(seq)? {
            Some(v) => Ok(Some(SignedIntention::decode(v.value()).map_err(
                |source| CorruptError::Decode {
                    what: "intention",
                    source,
                },
            )?)),
            None => Ok(None),
        }
    }

    /// Returns true when `hash` is witnessed here.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn is_witnessed(&self, hash: &Hash) -> Result<bool, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(INDEX)?.get(hash.as_bytes())?.is_some())
    }

    /// Returns true when `hash` is held as floating.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn is_floating(&self, hash: &Hash) -> Result<bool, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(FLOATING)?.get(hash.as_bytes())?.is_some())
    }

    /// Returns the DAG facts of a witnessed intention.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed entry.
    pub fn dag_info(&self, hash: &Hash) -> Result<Option<DagInfo>, Error> {
        let dag = self.dag()?;
        let Some(seq) = dag.seq_of(hash)? else {
            return Ok(None);
        };
        let Some(e) = dag.entry(seq)? else {
            return Ok(None);
        };
        let mut parents = Vec::with_capacity(e.parents.len());
        for p in &e.parents {
            match dag.hash_at(*p)? {
                Some(hash) => parents.push(hash),
                None if dag.pruned_floor().is_some() => {}
                None => {
                    return Err(Error::Internal {
                        what: "a dag parent has no witness record",
                    });
                }
            }
        }
        Ok(Some(DagInfo {
            seq,
            generation: e.generation,
            author_seq: e.author_seq,
            author: e.author,
            parents,
        }))
    }

    /// Returns the HLC of a witnessed intention.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed entry.
    pub fn hlc_of(&self, hash: &Hash) -> Result<Option<Hlc>, Error> {
        let dag = self.dag()?;
        let Some(seq) = dag.seq_of(hash)? else {
            return Ok(None);
        };
        Ok(dag.entry(seq)?.map(|e| e.hlc))
    }

    /// Returns one author's newest witnessed intention with its chain position and HLC.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed entry.
    pub fn tip_entry(&self, author: &PubKey) -> Result<Option<(Hash, u64, Hlc)>, Error> {
        let txn = self.db.begin_read()?;
        // The tips table holds the witness seq with the hash: no index lookup needed.
        let Some((seq, hash)) = txn
            .open_table(TIPS)?
            .get(author.as_bytes())?
            .map(|v| decode_tip(v.value()))
        else {
            return Ok(None);
        };
        Ok(match txn.open_table(DAG)?.get(seq)? {
            Some(v) => {
                let e = DagEntry::decode(v.value())?;
                Some((hash, e.author_seq, e.hlc))
            }
            None => None,
        })
    }

    /// The highest timestamp this node issued or observed, as of the last commit.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed record.
    pub fn clock(&self) -> Result<Hlc, Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(match meta.get(META_CLOCK)? {
            Some(v) => decode_hlc(v.value())?,
            None => Hlc::ZERO,
        })
    }

    /// Returns every author's newest witnessed intention, ordered by author.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn tips(&self) -> Result<Vec<(PubKey, Hash)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIPS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.push((PubKey(*k.value()), decode_tip(v.value()).1));
        }
        Ok(out)
    }

    /// Returns one author's newest witnessed intention.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn tip(&self, author: &PubKey) -> Result<Option<Hash>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIPS)?;
        Ok(table
            .get(author.as_bytes())?
            .map(|v| decode_tip(v.value()).1))
    }

    /// Returns up to `limit` witness records starting at `from_seq`.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed record.
    pub fn records(&self, from_seq: u64, limit: usize) -> Result<Vec<WitnessRecord>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(WITNESS)?;
        let mut out = Vec::new();
        for row in table.range(from_seq..)?.take(limit) {
            let (_, v) = row?;
            out.push(decode_record(v.value())?);
        }
        Ok(out)
    }

    /// Returns up to `limit` witnessed intentions in witness order, starting at `from_seq`.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a stored intention that does not decode.
    pub fn witnessed(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SignedIntention)>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTIONS)?;
        let mut out = Vec::new();
        for row in table.range(from_seq..)?.take(limit) {
            let (k, v) = row?;
            let signed =
                SignedIntention::decode(v.value()).map_err(|source| CorruptError::Decode {
                    what: "intention",
                    source,
                })?;
            out.push((k.value(), signed));
        }
        Ok(out)
    }

    /// Returns the intention witnessed at `seq`, if it is still here (pruning deletes some).
    ///
    /// # Errors
    /// [`Error`] on storage failure or a stored intention that does not decode.
    pub fn witnessed_at(&self, seq: u64) -> Result<Option<SignedIntention>, Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTIONS)?;
        let Some(v) = table.get(seq)? else {
            return Ok(None);
        };
        Ok(Some(SignedIntention::decode(v.value()).map_err(
            |source| CorruptError::Decode {
                what: "intention",
                source,
            },
        )?))
    }

    /// Returns the stored bytes of those `hashes` that are witnessed here, with their witness
    /// sequence numbers, in witness order (a causal order: every intention after its parents).
    /// Unknown hashes are skipped. One read transaction.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn witnessed_bytes(&self, hashes: &[Hash]) -> Result<Vec<SeqBytes>, Error> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let table = txn.open_table(INTENTIONS)?;
        let mut seqs = Vec::with_capacity(hashes.len());
        for hash in hashes {
            if let Some(seq) = index.get(hash.as_bytes())? {
                seqs.push(seq.value());
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(v) = table.get(seq)? {
                out.push((seq, v.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// Returns those `hashes` that are neither witnessed nor floating here. One read
    /// transaction.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn lacking(&self, hashes: &[Hash]) -> Result<Vec<Hash>, Error> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let floating = txn.open_table(FLOATING)?;
        let mut out = Vec::new();
        for hash in hashes {
            if index.get(hash.as_bytes())?.is_none() && floating.get(hash.as_bytes())?.is_none() {
                out.push(*hash);
            }
        }
        Ok(out)
    }

    /// Returns every author's newest witnessed position: `(author, position in its chain)`.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed entry.
    pub fn frontier(&self) -> Result<Vec<(PubKey, u64)>, Error> {
        let dag = self.dag()?;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TIPS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (seq, _) = decode_tip(v.value());
            let entry = dag.entry(seq)?.ok_or(Error::Internal {
                what: "a tip has no dag entry",
            })?;
            out.push((PubKey(*k.value()), entry.author_seq));
        }
        Ok(out)
    }

    /// Walks back from `targets` through predecessors and deps and returns the witnessed
    /// intentions a peer with `frontier` (each author's newest chain position it holds) lacks,
    /// in witness order: at most `max_items` of them and about `max_bytes`.
    ///
    /// The walk stops at what the peer holds, so its cost grows with the gap, not the log.
    /// The second value is true when a limit cut the walk short (ask again after ingesting).
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed entry.
    pub fn chain_since(
        &self,
        targets: &[Hash],
        frontier: &[(PubKey, u64)],
        max_items: usize,
        max_bytes: usize,
    ) -> Result<(Vec<SeqBytes>, bool), Error> {
        let held: std::collections::HashMap<PubKey, u64> = frontier.iter().copied().collect();
        let dag = self.dag()?;
        let txn = self.db.begin_read()?;
        let intentions = txn.open_table(INTENTIONS)?;
        let mut seen = std::collections::HashSet::new();
        let mut stack = Vec::new();
        for t in targets {
            if let Some(seq) = dag.seq_of(t)? {
                stack.push(seq);
            }
        }
        let mut found = Vec::new();
        let mut bytes = 0usize;
        let mut cut = false;
        while let Some(seq) = stack.pop() {
            if !seen.insert(seq) {
                continue;
            }
            // A pruned parent: the peer needs a snapshot for what lies below, not this walk.
            let Some(entry) = dag.entry(seq)? else {
                if dag.pruned_floor().is_some() {
                    continue;
                }
                return Err(Error::Internal {
                    what: "a witnessed intention has no dag entry",
                });
            };
            if held
                .get(&entry.author)
                .is_some_and(|&h| h >= entry.author_seq)
            {
                continue;
            }
            if found.len() >= max_items || bytes >= max_bytes {
                cut = true;
                break;
            }
            let Some(v) = intentions.get(seq)? else {
                continue;
            };
            bytes += v.value().len();
            found.push((seq, v.value().to_vec()));
            stack.extend(entry.parents.iter().copied());
        }
        found.sort_unstable_by_key(|(seq, _)| *seq);
        Ok((found, cut))
    }

    /// Returns a page of witness records from `from_seq` that ends on an attested record, and
    /// that attestation, so the page can be checked against the witness's key. The page holds
    /// about `limit` records (more when one group commit is larger); it is empty past the head.
    ///
    /// # Errors
    /// [`Error`] on storage failure or a malformed record.
    pub fn attested_page(
        &self,
        from_seq: u64,
        limit: usize,
    ) -> Result<(Vec<WitnessRecord>, Option<WitnessAttestation>), Error> {
        let from_seq = from_seq.max(1);
        let txn = self.db.begin_read()?;
        let attestations = txn.open_table(ATTESTATIONS)?;
        let wanted_end = from_seq.saturating_add(limit.max(1) as u64 - 1);
        let end = match attestations.range(from_seq..=wanted_end)?.next_back() {
            Some(row) => Some(row?),
            None => attestations.range(from_seq..)?.next().transpose()?,
        };
        let Some((seq, sig)) = end else {
            return Ok((Vec::new(), None));
        };
        let (end_seq, signature) = (seq.value(), Signature(*sig.value()));
        let witness = txn.open_table(WITNESS)?;
        let mut records = Vec::new();
        for row in witness.range(from_seq..=end_seq)? {
            let (_, v) = row?;
            records.push(decode_record(v.value())?);
        }
        Ok((
            records,
            Some(WitnessAttestation {
                seq: end_seq,
                signature,
            }),
        ))
    }

    /// What pruning deleted below: per author, the chain position of its boundary (empty
    /// while nothing was pruned). Intentions at or below it that are not witnessed here any
    /// more are gone for good; the state they made lives in the state at an epoch.
    ///
    /// # Errors
    /// Storage failure or a malformed record.
    pub fn pruned_floor(&self) -> Result<Vec<(PubKey, u64)>, Error> {
        let txn = self.db.begin_read()?;
        Ok(read_floor(&txn.open_table(META)?)?.frontier())
    }

    /// The prune floor with each boundary's HLC (empty while nothing was pruned): what a
    /// joiner installs with [`crate::Log::root`] to stand on this log's floor.
    ///
    /// # Errors
    /// Storage failure or a malformed record.
    pub fn prune_floor(&self) -> Result<crate::FloorMarks, Error> {
        let txn = self.db.begin_read()?;
        Ok(read_floor(&txn.open_table(META)?)?.0)
    }

    /// Opens a consistent view of the sync index (witnessed intentions sorted by
    /// `(HLC wall ms, hash)`, with range sums) for set reconciliation.
    ///
    /// # Errors
    /// Storage failures.
    pub fn sync_snapshot(&self) -> Result<SyncSnapshot, Error> {
        let txn = self.db.begin_read()?;
        let items = txn.open_table(crate::sync_index::SYNC_ITEMS)?;
        let buckets = txn.open_table(crate::sync_index::SYNC_BUCKETS)?;
        SyncSnapshot::open(items, &buckets)
    }

    /// Returns the number of witnessed intentions.
    ///
    /// # Errors
    /// [`Error`] on storage failure.
    pub fn witnessed_count(&self) -> Result<u64, Error> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(INDEX)?.len()?)
    }

    /// Returns true when `ancestor` is `descendant` or one of its ancestors.
    ///
    /// Cost grows with the part of the DAG between the two, not with the log below them.
    ///
    /// # Errors
    /// [`QueryError::Unknown`] when either is not witnessed; [`QueryError::TooLarge`] past the
    /// visit cap.
    pub fn is_ancestor(&self, ancestor: &Hash, descendant: &Hash) -> Result<bool, QueryError> {
        dag::is_ancestor(&self.dag()?, ancestor, descendant, self.visit_cap)
    }

    /// Returns, for every author, the highest position in its chain among `hash` and its
    /// ancestors (sorted by author): what an intention's causal past holds of each chain.
    ///
    /// Walks down to the nearest reachability checkpoints, so the cost is the part of the DAG
    /// above them, not the log below.
    ///
    /// # Errors
    /// As [`LogReader::is_ancestor`].
    pub fn reach(&self, hash: &Hash) -> Result<Vec<(PubKey, u64)>, QueryError> {
        let dag = self.dag()?;
        let seq = dag.seq_of(hash)?.ok_or(QueryError::Unknown(*hash))?;
        if let Some(checkpoint) = dag.checkpoint(seq)? {
            return Ok(checkpoint);
        }
        let entry = dag.entry(seq)?.ok_or(Error::Internal {
            what: "a witnessed intention has no dag entry",
        })?;
        Ok(dag::frontier(&dag, seq, &entry, self.visit_cap)?)
    }

    /// Returns a lowest common ancestor of `a` and `b` (largest generation among their common
    /// ancestors), or `None` when they have none.
    ///
    /// # Errors
    /// As [`LogReader::is_ancestor`].
    pub fn lca(&self, a: &Hash, b: &Hash) -> Result<Option<Hash>, QueryError> {
        dag::lca(&self.dag()?, a, b, self.visit_cap)
    }

    /// Returns the intentions that are ancestors-or-self of `to` but not of `from`, in a
    /// topological order (oldest first): what to apply to go from `from`'s view to `to`'s.
    ///
    /// # Errors
    /// As [`LogReader::is_ancestor`].
    pub fn path(&self, from: &Hash, to: &Hash) -> Result<Vec<Hash>, QueryError> {
        dag::path(&self.dag()?, from, to, self.visit_cap)
    }

    /// Verifies the whole log: every record's store id, sequence and hash link; every
    /// attestation against the node key stored in the log; every witnessed intention's hash
    /// and author signature; and that the newest record is attested. Reads everything once;
    /// `progress(done, total)` is called every 10,000 records.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the first problem found.
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, Error> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let witness_key = meta
            .get(META_WITNESS_KEY)?
            .and_then(|v| <[u8; 32]>::try_from(v.value()).ok())
            .map(PubKey)
            .ok_or(CorruptError::Malformed { table: "meta" })?;
        let witness = txn.open_table(WITNESS)?;
        let attestations = txn.open_table(ATTESTATIONS)?;
        let intentions = txn.open_table(INTENTIONS)?;
        let dag = txn.open_table(DAG)?;
        let index = txn.open_table(INDEX)?;
        let total = witness.len()?;
        let pruned = !read_floor(&meta)?.0.is_empty();
        let mut chain = ChainVerifier::new(self.store_id);
        let mut report = VerifyReport::default();
        let mut pending: Vec<(PubKey, Hash, Signature)> = Vec::with_capacity(256);
        let flush = |pending: &mut Vec<(PubKey, Hash, Signature)>| -> Result<(), CorruptError> {
            if verify_batch(pending).is_err() {
                for (key, hash, sig) in pending.iter() {
                    if key.verify(hash, sig).is_err() {
                        return Err(CorruptError::BadSignature { hash: hash.short() });
                    }
                }
            }
            pending.clear();
            Ok(())
        };
        let mut last_attested = 0;
        for row in witness.iter()? {
            let (_, v) = row?;
            let record = decode_record(v.value())?;
            if pruned && record.seq > chain.last_seq() + 1 {
                // Records between were pruned: the chain resumes at this one's link.
                chain = ChainVerifier::resume(self.store_id, record.seq - 1, record.prev);
                report.pruned_gaps += 1;
            }
            chain.push(&record).map_err(CorruptError::from)?;
            report.records += 1;
            let missing = || CorruptError::MissingIntention {
                seq: record.seq,
                hash: record.intention.short(),
            };
            let raw = intentions.get(record.seq)?.ok_or_else(missing)?;
            let signed =
                SignedIntention::decode(raw.value()).map_err(|source| CorruptError::Decode {
                    what: "intention",
                    source,
                })?;
            if signed.hash() != record.intention {
                return Err(missing().into());
            }
            dag.get(record.seq)?
                .ok_or_else(missing)
                .and_then(|v| DagEntry::decode(v.value()))?;
            if index.get(record.intention.as_bytes())?.map(|v| v.value()) != Some(record.seq) {
                return Err(missing().into());
            }
            pending.push((
                signed.intention().author(),
                signed.hash(),
                signed.signature(),
            ));
            report.intentions += 1;
            if pending.len() == 256 {
                flush(&mut pending)?;
            }
            if let Some(sig) = attestations.get(record.seq)? {
                WitnessAttestation {
                    seq: record.seq,
                    signature: Signature(*sig.value()),
                }
                .verify(&record, &witness_key)
                .map_err(|_| CorruptError::Unattested { seq: record.seq })?;
                report.attestations += 1;
                last_attested = record.seq;
            }
            if report.records % 10_000 == 0 {
                progress(report.records, total);
            }
        }
        flush(&mut pending)?;
        if last_attested != chain.last_seq() {
            return Err(CorruptError::Unattested {
                seq: chain.last_seq(),
            }
            .into());
        }
        progress(report.records, total);
        Ok(report)
    }
}
