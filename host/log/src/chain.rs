//! [`ChainBuilder`]: builds and signs this node's next intentions ahead of the group commit that
//! witnesses them, so a caller can act on their hashes first (project a write, then prepare
//! the next one against the state it leaves) and still pay one fsync for the whole run.

use std::collections::HashMap;

use lattice_model::{Hash, Hlc, HlcClock, Intention, NodeKey, SignedIntention, StoreId};

use crate::config::Clock;
use crate::error::{AuthorError, Error};
use crate::ingest::Draft;
use crate::reader::LogReader;

/// One of this node's intentions, built and signed by a [`ChainBuilder`] but not yet
/// witnessed. Hand it to [`Log::submit_built`](crate::Log::submit_built).
#[derive(Debug, Clone)]
pub struct Built {
    /// The signed intention.
    pub signed: SignedIntention,
    /// Its position in this node's chain (from 1).
    pub author_seq: u64,
}

/// Continues this node's chain in one store from its witnessed tip.
///
/// Build a run, submit it with [`Log::submit_built`](crate::Log::submit_built), and start a
/// new builder for the next run: the log refuses a built intention that no longer continues
/// the tip (another local write was authored meanwhile), so one component should own a
/// store's local writes.
#[derive(Debug)]
pub struct ChainBuilder {
    key: NodeKey,
    store: StoreId,
    prev: Hash,
    prev_hlc: Hlc,
    author_seq: u64,
    clock: HlcClock,
    now: Clock,
    /// HLCs of intentions built in this run (not witnessed yet, so not in the log).
    built: HashMap<Hash, Hlc>,
}

impl ChainBuilder {
    pub(crate) fn start(
        key: NodeKey,
        reader: &LogReader,
        now: Clock,
    ) -> Result<ChainBuilder, Error> {
        let me = key.public();
        let (prev, prev_hlc, author_seq) = match reader.tip_entry(&me)? {
            Some((hash, author_seq, hlc)) => (hash, hlc, author_seq),
            None => (Hash::ZERO, Hlc::ZERO, 0),
        };
        let clock = HlcClock::new(reader.clock()?.max(prev_hlc));
        Ok(ChainBuilder {
            store: reader.store_id(),
            key,
            prev,
            prev_hlc,
            author_seq,
            clock,
            now,
            built: HashMap::new(),
        })
    }

    /// True when this node has no intention in the store yet (its first write should cite the
    /// genesis).
    pub fn is_first(&self) -> bool {
        self.author_seq == 0
    }

    /// Builds and signs the next intention of the chain: after its predecessor and deps, with
    /// a timestamp past every one issued or observed. Deps may be witnessed intentions or ones
    /// built earlier in this run.
    ///
    /// # Errors
    /// [`AuthorError::UnknownDep`], a structural limit, or a storage failure; the chain does not
    /// advance then.
    pub fn build(&mut self, draft: Draft, reader: &LogReader) -> Result<Built, AuthorError> {
        let mut after = self.prev_hlc;
        for dep in &draft.deps {
            let hlc = match self.built.get(dep) {
                Some(hlc) => *hlc,
                None => reader.hlc_of(dep)?.ok_or(AuthorError::UnknownDep(*dep))?,
            };
            after = after.max(hlc);
        }
        let mut clock = self.clock;
        let hlc = clock.tick(self.now.now_ms(), after);
        let intention = Intention::new(
            self.store,
            self.key.public(),
            hlc,
            self.prev,
            draft.deps,
            draft.ops,
            draft.flags,
        )?;
        let signed = SignedIntention::sign(intention, &self.key)?;
        self.clock = clock;
        self.prev = signed.hash();
        self.prev_hlc = hlc;
        self.author_seq += 1;
        self.built.insert(self.prev, hlc);
        Ok(Built {
            signed,
            author_seq: self.author_seq,
        })
    }
}
