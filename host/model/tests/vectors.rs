//! Canonical encoding test vectors: fixed key seeds and fields → exact bytes, hash and
//! signature. The vectors live in `docs/protocol-vectors.json` so another implementation can
//! check itself against the same file. Regenerate (only when the encoding version changes)
//! with `LATTICE_BLESS_VECTORS=1 cargo test -p lattice-model --test vectors`.

use lattice_model::{
    Hash, Hlc, Intention, IntentionFlags, NodeKey, SignedIntention, StoreId, WitnessAttestation,
    WitnessRecord,
};
use serde_json::{Value, json};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/protocol-vectors.json"
);

fn seed(byte: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = byte.wrapping_add(i as u8);
    }
    s
}

fn compute() -> Result<Value, Box<dyn std::error::Error>> {
    let alice = NodeKey::from_seed(seed(0x01));
    let bob = NodeKey::from_seed(seed(0x40));
    let node = NodeKey::from_seed(seed(0x80));

    let genesis = Intention::new(
        StoreId::GENESIS,
        alice.public(),
        Hlc::new(1_700_000_000_000, 0),
        Hash::ZERO,
        vec![],
        b"kv".to_vec(),
        IntentionFlags::default(),
    )?;
    let genesis = SignedIntention::sign(genesis, &alice)?;
    let store = StoreId::from(genesis.hash());

    let write = Intention::new(
        store,
        bob.public(),
        Hlc::new(1_700_000_000_123, 7),
        Hash::of(b"bob's previous intention"),
        vec![Hash::of(b"dep two"), genesis.hash()],
        vec![0x00, 0x01, 0xFE, 0xFF],
        IntentionFlags {
            ephemeral: true,
            supersedes_all: false,
            system: false,
            host: false,
        },
    )?;
    let write = SignedIntention::sign(write, &bob)?;

    let record = WitnessRecord {
        store_id: store,
        seq: 1,
        intention: genesis.hash(),
        prev: Hash::ZERO,
        wall_ms: 1_700_000_000_500,
    };
    let second = WitnessRecord {
        store_id: store,
        seq: 2,
        intention: write.hash(),
        prev: record.hash(),
        wall_ms: 1_700_000_000_501,
    };
    let attestation = WitnessAttestation::sign(&second, &node);

    let intention = |name: &str, key_seed: [u8; 32], s: &SignedIntention| {
        json!({
            "name": name,
            "author_seed": hex::encode(key_seed),
            "author": s.intention().author().to_string(),
            "body": hex::encode(s.body()),
            "hash": s.hash().to_string(),
            "signature": hex::encode(s.signature().as_bytes()),
        })
    };
    Ok(json!({
        "version": 1,
        "note": "hash = BLAKE3(body); signature = Ed25519(author, hash); a signed intention on the wire is body || signature; store id = hash of the genesis intention",
        "intentions": [
            intention("genesis", seed(0x01), &genesis),
            intention("write", seed(0x40), &write),
        ],
        "witness_records": [
            { "record": hex::encode(record.encode()), "hash": record.hash().to_string() },
            { "record": hex::encode(second.encode()), "hash": second.hash().to_string() },
        ],
        "attestation": {
            "node_seed": hex::encode(seed(0x80)),
            "node": node.public().to_string(),
            "seq": attestation.seq,
            "signature": hex::encode(attestation.signature.as_bytes()),
        },
    }))
}

#[test]
fn canonical_encoding_matches_committed_vectors() -> Result<(), Box<dyn std::error::Error>> {
    let computed = compute()?;
    if std::env::var_os("LATTICE_BLESS_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&computed)? + "\n")?;
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(PATH)?)?;
    assert_eq!(
        computed, committed,
        "canonical bytes changed: this breaks the protocol"
    );
    // And the committed bytes decode, hash and verify on their own.
    for v in committed["intentions"].as_array().ok_or("intentions")? {
        let body = hex::decode(v["body"].as_str().ok_or("body")?)?;
        let sig = hex::decode(v["signature"].as_str().ok_or("signature")?)?;
        let mut wire = body.clone();
        wire.extend_from_slice(&sig);
        let signed = SignedIntention::decode(&wire)?;
        assert_eq!(signed.hash().to_string(), v["hash"].as_str().ok_or("hash")?);
        assert_eq!(Hash::of(&body), signed.hash());
        signed.verify()?;
        assert_eq!(Intention::decode(&body)?.encode(), body);
    }
    Ok(())
}
