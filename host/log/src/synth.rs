//! Synthetic multi-author DAGs, deterministic from a seed, for benchmarks and tests.
//!
//! [`SyntheticDag`] plays several authors writing to one store: each new intention continues
//! its author's chain and cites the current tips of up to `max_deps` other authors, with HLCs
//! that respect causality. The first intention is the store's genesis. Memory is O(authors),
//! so it can stream any number of intentions.

use lattice_model::{
    Hash, Hlc, HlcClock, Intention, IntentionFlags, NodeKey, SignedIntention, StoreId,
};

/// A small, fast, seeded PRNG (SplitMix64); not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Shuffles a slice (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[derive(Debug)]
struct Author {
    key: NodeKey,
    clock: HlcClock,
    tip: Option<(Hash, Hlc)>,
}

/// A deterministic generator of one store's intentions by several authors.
#[derive(Debug)]
pub struct SyntheticDag {
    rng: SplitMix64,
    authors: Vec<Author>,
    store_id: StoreId,
    genesis: SignedIntention,
    wall_ms: u64,
    max_deps: usize,
    payload: usize,
    /// Every intention generated so far, when dependencies may reach back into history.
    history: Option<Vec<(Hash, Hlc)>>,
}

/// Wall time of the first synthetic intention (2020-09-13), far from any drift limit.
const BASE_WALL_MS: u64 = 1_600_000_000_000;

impl SyntheticDag {
    /// Creates the store (its genesis by the first author) with `authors` authors, each new
    /// intention citing up to `max_deps` other authors' tips and carrying `payload` bytes.
    pub fn new(seed: u64, authors: usize, max_deps: usize, payload: usize) -> SyntheticDag {
        let mut rng = SplitMix64::new(seed);
        let authors: Vec<Author> = (0..authors.max(1))
            .map(|_| {
                let mut seed = [0u8; 32];
                for chunk in seed.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                Author {
                    key: NodeKey::from_seed(seed),
                    clock: HlcClock::default(),
                    tip: None,
                }
            })
            .collect();
        let mut authors = authors;
        let genesis = sign(
            &mut authors[0],
            StoreId::GENESIS,
            BASE_WALL_MS,
            Hlc::ZERO,
            b"synthetic".to_vec(),
            vec![],
        );
        SyntheticDag {
            rng,
            authors,
            store_id: StoreId::from(genesis.hash()),
            genesis,
            wall_ms: BASE_WALL_MS,
            max_deps,
            payload,
            history: None,
        }
    }

    /// Lets half of the dependencies cite a uniformly chosen earlier intention instead of a
    /// tip, as a key-value store's writes cite the heads of keys written long ago.
    pub fn with_old_deps(mut self) -> SyntheticDag {
        self.history = Some(Vec::new());
        self
    }

    /// The store id (hash of the genesis).
    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    /// The genesis intention.
    pub fn genesis(&self) -> &SignedIntention {
        &self.genesis
    }

    /// The authors' keys.
    pub fn keys(&self) -> Vec<NodeKey> {
        self.authors.iter().map(|a| a.key.clone()).collect()
    }

    /// Generates the next intention.
    pub fn next_intention(&mut self) -> SignedIntention {
        let who = self.rng.below(self.authors.len());
        let want = if self.max_deps == 0 {
            0
        } else {
            self.rng.below(self.max_deps + 1)
        };
        let mut deps = Vec::new();
        if self.authors[who].tip.is_none() {
            deps.push(self.genesis.hash());
        }
        let mut after = Hlc::ZERO;
        for _ in 0..want {
            if let Some(history) = &self.history
                && !history.is_empty()
                && self.rng.below(2) == 0
            {
                let (h, hlc) = history[self.rng.below(history.len())];
                if !deps.contains(&h) {
                    deps.push(h);
                    after = after.max(hlc);
                }
                continue;
            }
            let other = self.rng.below(self.authors.len());
            if other != who
                && let Some((h, _)) = self.authors[other].tip
            {
                deps.push(h);
            }
        }
        let mut payload = vec![0u8; self.payload];
        for b in payload.iter_mut() {
            *b = self.rng.next_u64() as u8;
        }
        let store = self.store_id;
        let signed = self.make(who, store, payload, deps, after);
        if let Some(history) = &mut self.history {
            history.push((signed.hash(), signed.intention().hlc()));
        }
        signed
    }

    fn make(
        &mut self,
        who: usize,
        store: StoreId,
        ops: Vec<u8>,
        deps: Vec<Hash>,
        after: Hlc,
    ) -> SignedIntention {
        self.wall_ms += self.rng.below(3) as u64;
        let mut after = after.max(self.authors[who].tip.map_or(Hlc::ZERO, |(_, h)| h));
        for dep in &deps {
            if *dep == self.genesis.hash() {
                after = after.max(self.genesis.intention().hlc());
            }
            for a in &self.authors {
                if let Some((h, hlc)) = a.tip
                    && h == *dep
                {
                    after = after.max(hlc);
                }
            }
        }
        sign(
            &mut self.authors[who],
            store,
            self.wall_ms,
            after,
            ops,
            deps,
        )
    }
}

fn sign(
    author: &mut Author,
    store: StoreId,
    wall_ms: u64,
    after: Hlc,
    ops: Vec<u8>,
    deps: Vec<Hash>,
) -> SignedIntention {
    let hlc = author.clock.tick(wall_ms, after);
    let prev = author.tip.map_or(Hash::ZERO, |(h, _)| h);
    let intention = Intention::new(
        store,
        author.key.public(),
        hlc,
        prev,
        deps,
        ops,
        IntentionFlags::default(),
    );
    #[allow(
        clippy::expect_used,
        reason = "the generator stays within every limit and signs with the author's own key"
    )]
    let signed = intention
        .map_err(|e| e.to_string())
        .and_then(|i| SignedIntention::sign(i, &author.key).map_err(|e| e.to_string()))
        .expect("synthetic intention");
    author.tip = Some((signed.hash(), hlc));
    signed
}
