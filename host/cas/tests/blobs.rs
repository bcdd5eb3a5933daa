//! The blob store on disk: sizes around every boundary round-trip, reads of any range are
//! verified, stores reach only their own blobs, damage is detected and never handed out,
//! pins and references keep blobs through collection.

use std::path::Path;

use lattice_cas::{Cas, CasError};
use lattice_model::{Hash, StoreId};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const A: StoreId = StoreId([1; 32]);
const B: StoreId = StoreId([2; 32]);

/// Deterministic bytes that differ in every position.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn read_all(
    cas: &Cas,
    store: &StoreId,
    hash: &Hash,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, CasError> {
    let mut out = Vec::new();
    cas.read(store, hash, range, &mut out)?;
    Ok(out)
}

/// Data files under the store's `blobs/`.
fn data_files(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir.join("blobs")) else {
        return 0;
    };
    shards
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "data"))
        .count()
}

#[test]
fn blobs_of_every_boundary_size_round_trip_and_any_range_reads_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let kib = 1024;
    let mib = 1024 * 1024;
    for size in [
        0,
        1,
        kib - 1,
        kib,
        kib + 1,
        16 * kib - 1,
        16 * kib,
        16 * kib + 1,
        mib,
        mib + 7,
        3 * mib + 5,
    ] {
        let data = bytes(size, size as u8);
        let blob = cas.put(&A, &data[..])?;
        assert_eq!(
            blob.hash,
            Hash(*blake3::hash(&data).as_bytes()),
            "size {size}"
        );
        assert_eq!(blob.size, size as u64);
        assert_eq!(
            read_all(&cas, &A, &blob.hash, 0..size as u64)?,
            data,
            "size {size}"
        );
        let n = size as u64;
        for (start, end) in [
            (0, n.min(1)),
            (n / 3, n / 2),
            (n.saturating_sub(1), n),
            (n / 2, n),
            (n.min(mib as u64 - 3), n.min(mib as u64 + 5)),
            (n.min(16 * kib as u64), n.min(16 * kib as u64)),
        ] {
            assert_eq!(
                read_all(&cas, &A, &blob.hash, start..end)?,
                &data[start as usize..end as usize],
                "size {size}, range {start}..{end}"
            );
        }
        cas.verify(&A, &blob.hash)?;
        let past = cas.read(&A, &blob.hash, 0..n + 1, &mut Vec::new());
        assert!(matches!(past, Err(CasError::OutOfRange { .. })), "{past:?}");
    }
    Ok(())
}

#[test]
fn a_store_reaches_only_the_blobs_it_holds_and_equal_bytes_are_kept_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let data = bytes(40_000, 9);
    let blob = cas.put(&A, &data[..])?;
    assert!(cas.stat(&B, &blob.hash)?.is_none());
    let refused = cas.read(&B, &blob.hash, 0..10, &mut Vec::new());
    assert!(
        matches!(refused, Err(CasError::NotFound { .. })),
        "{refused:?}"
    );
    assert!(cas.list(&B)?.is_empty());
    // B puts the same bytes: now both reach it, and one copy is on disk.
    let again = cas.put(&B, &data[..])?;
    assert_eq!(again.hash, blob.hash);
    assert_eq!(read_all(&cas, &B, &blob.hash, 0..40_000)?, data);
    assert_eq!(data_files(dir.path()), 1);
    assert_eq!(cas.list(&A)?.len(), 1);
    // It survives a reopen; leftovers of an interrupted put are cleared.
    drop(cas);
    std::fs::write(dir.path().join("tmp").join("7.data"), b"half a put")?;
    let cas = Cas::open(dir.path())?;
    assert_eq!(read_all(&cas, &A, &blob.hash, 100..200)?, &data[100..200]);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
    Ok(())
}

/// A reader that fails after `ok` bytes.
struct Failing {
    ok: usize,
}

impl std::io::Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("the source went away"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(7);
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn a_put_whose_source_fails_keeps_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let failed = cas.put(&A, Failing { ok: 200_000 });
    assert!(matches!(failed, Err(CasError::Input(_))), "{failed:?}");
    assert!(cas.list(&A)?.is_empty());
    assert_eq!(data_files(dir.path()), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp"))?.count(), 0);
    Ok(())
}

/// The data file of `hash`.
#[test]
fn a_file_moved_in_is_the_blob_a_put_of_its_bytes_makes_and_is_gone_after() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(&dir.path().join("cas"))?;
    let outside = dir.path().join("spool");
    std::fs::create_dir_all(&outside)?;
    for (i, size) in [0usize, 100, 16 * 1024, 16 * 1024 + 1, (1 << 20) + 7]
        .into_iter()
        .enumerate()
    {
        let data = bytes(size, i as u8);
        let path = outside.join(format!("f{i}"));
        std::fs::write(&path, &data)?;
        let moved = cas.put_file(&A, &path)?;
        assert!(!path.exists(), "{size} bytes: the file was left behind");
        assert_eq!(
            moved.hash,
            Hash(*blake3::hash(&data).as_bytes()),
            "{size} bytes"
        );
        assert_eq!(moved.size, size as u64);
        assert_eq!(read_all(&cas, &A, &moved.hash, 0..size as u64)?, data);
        cas.verify(&A, &moved.hash)?;
        // The same bytes again, by a put and by another file: one blob, the file gone.
        assert_eq!(cas.put(&B, data.as_slice())?.hash, moved.hash);
        std::fs::write(&path, &data)?;
        assert_eq!(cas.put_file(&B, &path)?.hash, moved.hash);
        assert!(!path.exists());
    }
    // The two blobs past the inline size, one data file each.
    assert_eq!(data_files(&dir.path().join("cas")), 2);
    // From another filesystem (tmpfs, when this machine has one) the bytes are copied.
    let shm = Path::new("/dev/shm");
    let device = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
    if shm.is_dir() && device(shm)? != device(dir.path())? {
        let far = tempfile::tempdir_in(shm)?;
        let data = bytes(100_000, 42);
        let path = far.path().join("far");
        std::fs::write(&path, &data)?;
        let moved = cas.put_file(&A, &path)?;
        assert!(!path.exists());
        assert_eq!(read_all(&cas, &A, &moved.hash, 0..data.len() as u64)?, data);
        assert_eq!(data_files(&dir.path().join("cas")), 3);
    }
    // A missing file is an error naming it, and changes nothing.
    let before = data_files(&dir.path().join("cas"));
    let missing = outside.join("missing");
    match cas.put_file(&A, &missing) {
        Err(CasError::Io { path, .. }) => assert_eq!(path, missing),
        other => return Err(format!("expected an I/O error, got {other:?}").into()),
    }
    assert_eq!(data_files(&dir.path().join("cas")), before);
    Ok(())
}

fn data_path(dir: &Path, hash: &Hash) -> std::path::PathBuf {
    let hex = hash.to_string();
    dir.join("blobs")
        .join(&hex[..2])
        .join(format!("{hex}.data"))
}

#[test]
fn damaged_bytes_on_disk_are_found_and_never_handed_out() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let mib = 1024 * 1024;
    let data = bytes(3 * mib + 11, 3);
    let blob = cas.put(&A, &data[..])?;
    let path = data_path(dir.path(), &blob.hash);
    let mut damaged = std::fs::read(&path)?;
    let at = 2 * mib + 100;
    damaged[at] ^= 0x40;
    std::fs::write(&path, &damaged)?;

    // Windows before the damage still read; the damaged one is refused, and what was
    // written before it is exactly the good bytes.
    assert_eq!(read_all(&cas, &A, &blob.hash, 0..mib as u64)?, &data[..mib]);
    let mut out = Vec::new();
    let whole = cas.read(&A, &blob.hash, 0..data.len() as u64, &mut out);
    assert!(matches!(whole, Err(CasError::Damaged { .. })), "{whole:?}");
    assert!(
        out.len() <= at && data.starts_with(&out),
        "{} bytes out",
        out.len()
    );
    assert!(matches!(
        cas.verify(&A, &blob.hash),
        Err(CasError::Damaged { .. })
    ));

    // A truncated data file or a damaged hash tree is found too.
    std::fs::write(&path, &data[..mib])?;
    assert!(matches!(
        cas.verify(&A, &blob.hash),
        Err(CasError::Damaged { .. })
    ));
    std::fs::write(&path, &data)?;
    cas.verify(&A, &blob.hash)?;
    let obao = path.with_extension("obao");
    let mut tree = std::fs::read(&obao)?;
    tree[70] ^= 1;
    std::fs::write(&obao, &tree)?;
    assert!(matches!(
        cas.verify(&A, &blob.hash),
        Err(CasError::Damaged { .. })
    ));
    Ok(())
}

#[test]
fn collection_keeps_pinned_and_referenced_blobs_and_drops_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let pinned = cas.put(&A, &bytes(20_000, 1)[..])?;
    let referenced = cas.put(&A, &bytes(20_000, 2)[..])?;
    let loose = cas.put(&A, &bytes(20_000, 3)[..])?;
    let shared = cas.put(&A, &bytes(20_000, 4)[..])?;
    cas.put(&B, &bytes(20_000, 4)[..])?;
    assert_eq!(cas.pin(&A, &pinned.hash, 1)?.pins, 1);
    assert_eq!(cas.reference(&A, &referenced.hash, 2)?.refs, 2);
    cas.pin(&B, &shared.hash, 1)?;
    // Within the grace period nothing goes.
    assert_eq!(cas.collect(60_000)?.released, 0);
    assert_eq!(data_files(dir.path()), 4);

    let report = cas.collect(0)?;
    assert_eq!(
        (report.released, report.deleted, report.bytes),
        (2, 1, 20_000)
    );
    assert!(cas.stat(&A, &pinned.hash)?.is_some());
    assert!(cas.stat(&A, &referenced.hash)?.is_some());
    assert!(cas.stat(&A, &loose.hash)?.is_none());
    assert!(
        cas.stat(&A, &shared.hash)?.is_none(),
        "A's hold on the shared blob went"
    );
    assert_eq!(
        read_all(&cas, &B, &shared.hash, 0..10)?,
        &bytes(20_000, 4)[..10]
    );
    assert_eq!(data_files(dir.path()), 3);

    // Unpinned and unreferenced (never below zero), they go at the next collection.
    cas.pin(&A, &pinned.hash, -5)?;
    assert_eq!(cas.reference(&A, &referenced.hash, -1)?.refs, 1);
    cas.reference(&A, &referenced.hash, -1)?;
    assert_eq!(cas.collect(0)?.deleted, 2);
    assert!(cas.list(&A)?.is_empty());
    // Small blobs live in the index, not in files, and go the same way.
    let small = cas.put(&A, &bytes(100, 8)[..])?;
    assert_eq!(data_files(dir.path()), 1, "only B's blob has files");
    assert_eq!(
        read_all(&cas, &A, &small.hash, 10..20)?,
        &bytes(100, 8)[10..20]
    );
    assert_eq!(cas.collect(0)?.deleted, 1);
    assert!(cas.stat(&A, &small.hash)?.is_none());
    let missing = cas.pin(&A, &loose.hash, 1);
    assert!(
        matches!(missing, Err(CasError::NotFound { .. })),
        "{missing:?}"
    );
    Ok(())
}

#[test]
fn releasing_a_store_drops_its_holds_and_only_blobs_no_one_else_holds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cas = Cas::open(dir.path())?;
    let shared = cas.put(&A, &bytes(100_000, 1)[..])?;
    cas.put(&B, &bytes(100_000, 1)[..])?;
    let own = cas.put(&A, &bytes(50_000, 2)[..])?;
    cas.pin(&A, &own.hash, 1)?;
    let small = cas.put(&A, &b"small"[..])?;
    cas.reference(&A, &small.hash, 1)?;
    assert!(
        cas.set_refs(&A, &Hash([7; 32]), 2)?,
        "a reference to a blob not here is wanted"
    );
    let report = cas.release_store(&A)?;
    assert_eq!((report.released, report.deleted), (3, 2));
    assert!(cas.list(&A)?.is_empty());
    assert!(cas.wanted(&A, 10)?.is_empty());
    // B's copy of the shared bytes stays, whole.
    assert_eq!(
        read_all(&cas, &B, &shared.hash, 0..shared.size)?,
        bytes(100_000, 1)
    );
    assert_eq!(data_files(dir.path()), 1);
    Ok(())
}

/// Chunk ranges of `[from, to)` KiB.
fn kib(from: u64, to: u64) -> lattice_cas::ChunkRanges {
    lattice_cas::ChunkRanges::from(lattice_cas::ChunkNum(from)..lattice_cas::ChunkNum(to))
}

#[test]
fn a_blob_moves_as_verified_parts_and_an_interrupted_transfer_resumes() -> TestResult {
    let (from_dir, to_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let sender = Cas::open(from_dir.path())?;
    let data = bytes(1024 * 1024 + 300, 5);
    let blob = sender.put(&A, &data[..])?;
    let chunks = (data.len() as u64).div_ceil(1024);

    // The first half arrives, then the receiver goes away.
    let receiver = Cas::open(to_dir.path())?;
    let mut incoming = receiver.receive(&blob.hash, blob.size)?;
    assert_eq!(incoming.missing(), kib(0, chunks));
    let mut part = Vec::new();
    sender.encode(&A, &blob.hash, &kib(0, 512), &mut part)?;
    incoming.take(&kib(0, 512), &part)??;
    assert_eq!(incoming.received_bytes(), 512 * 1024);
    drop((incoming, receiver));

    // Back again, it asks only for what it lacks, and the blob is whole.
    let receiver = Cas::open(to_dir.path())?;
    let mut incoming = receiver.receive(&blob.hash, blob.size)?;
    assert_eq!(incoming.missing(), kib(512, chunks));
    let mut part = Vec::new();
    sender.encode(&A, &blob.hash, &incoming.missing(), &mut part)?;
    incoming.take(&kib(512, chunks), &part)??;
    assert!(incoming.is_complete());
    let got = incoming.finish(&receiver, &B)?;
    assert_eq!((got.hash, got.size), (blob.hash, blob.size));
    assert_eq!(read_all(&receiver, &B, &blob.hash, 0..blob.size)?, data);
    assert!(
        receiver.stat(&A, &blob.hash)?.is_none(),
        "received for B only"
    );
    Ok(())
}

#[test]
fn a_bad_part_is_refused_and_what_verified_before_it_is_kept() -> TestResult {
    let (from_dir, to_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let sender = Cas::open(from_dir.path())?;
    let data = bytes(256 * 1024, 6);
    let blob = sender.put(&A, &data[..])?;
    let receiver = Cas::open(to_dir.path())?;
    let mut incoming = receiver.receive(&blob.hash, blob.size)?;
    let mut part = Vec::new();
    sender.encode(&A, &blob.hash, &kib(0, 256), &mut part)?;
    // A hostile sender changes one byte near the end of the stream.
    let at = part.len() - 100;
    part[at] ^= 0xff;
    let refused = incoming.take(&kib(0, 256), &part)?;
    assert!(refused.is_err(), "{refused:?}");
    let kept = incoming.received_bytes();
    assert!((128 * 1024..256 * 1024).contains(&kept), "{kept}");
    // The rest, asked again from an honest sender, completes it.
    let missing = incoming.missing();
    let mut part = Vec::new();
    sender.encode(&A, &blob.hash, &missing, &mut part)?;
    incoming.take(&missing, &part)??;
    let got = incoming.finish(&receiver, &A)?;
    receiver.verify(&A, &got.hash)?;
    // A stream cut short is refused too; an incomplete blob is not finished.
    let other = sender.put(&A, &bytes(100_000, 7)[..])?;
    let mut incoming = receiver.receive(&other.hash, other.size)?;
    let mut part = Vec::new();
    sender.encode(&A, &other.hash, &kib(0, 98), &mut part)?;
    assert!(
        incoming
            .take(&kib(0, 98), &part[..part.len() / 2])?
            .is_err()
    );
    assert!(matches!(
        incoming.finish(&receiver, &A),
        Err(CasError::Damaged { .. })
    ));
    // An empty blob is complete at once, and only under its own hash.
    let empty = sender.put(&A, &b""[..])?;
    let got = receiver.receive(&empty.hash, 0)?.finish(&receiver, &A)?;
    assert_eq!(got.size, 0);
    let forged = receiver.receive(&blob.hash, 0)?.finish(&receiver, &A);
    assert!(
        matches!(forged, Err(CasError::Damaged { .. })),
        "{forged:?}"
    );
    Ok(())
}

/// A sparse file of `size` bytes: zeros but for a marker every GiB and at the end.
fn sparse_file(path: &Path, size: u64) -> std::io::Result<Vec<(u64, u8)>> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let gib = 1 << 30;
    let mut marks: Vec<(u64, u8)> = (0..size / gib)
        .map(|i| (i * gib + 7, i as u8 + 1))
        .collect();
    marks.push((size - 1, 0xEE));
    for &(at, byte) in &marks {
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[byte])?;
    }
    f.sync_all()?;
    Ok(marks)
}

#[test]
fn a_blob_past_four_gib_round_trips_and_its_far_end_moves_verified() -> TestResult {
    let dir = tempfile::tempdir()?;
    let size = (4 << 30) + 1000;
    let source = dir.path().join("sparse");
    let marks = sparse_file(&source, size)?;
    let sender = Cas::open(&dir.path().join("a"))?;
    let blob = sender.put(&A, std::fs::File::open(&source)?)?;
    assert_eq!(blob.size, size);
    let expected = {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(&source)?)?;
        Hash(*hasher.finalize().as_bytes())
    };
    assert_eq!(blob.hash, expected);
    std::fs::remove_file(&source)?;
    // Ranges around every marker (past 4 GiB too) read back verified.
    for &(at, byte) in &marks {
        let start = at.saturating_sub(3);
        let got = read_all(&sender, &A, &blob.hash, start..(at + 1).min(size))?;
        assert_eq!(got.last(), Some(&byte), "at {at}");
        assert!(got[..got.len() - 1].iter().all(|b| *b == 0), "at {at}");
    }
    // The far end moves as a verified part into a receiver, which holds exactly that.
    let receiver = Cas::open(&dir.path().join("b"))?;
    let mut incoming = receiver.receive(&blob.hash, blob.size)?;
    let chunks = size.div_ceil(1024);
    let tail = kib(chunks - 8, chunks);
    let mut part = Vec::new();
    sender.encode(&A, &blob.hash, &tail, &mut part)?;
    incoming.take(&tail, &part)??;
    assert_eq!(incoming.received_bytes(), size - (chunks - 8) * 1024);
    assert_eq!(incoming.missing(), kib(0, chunks - 8));
    // The same part with one byte changed is refused by a fresh receiver.
    let third = Cas::open(&dir.path().join("c"))?;
    let mut fresh = third.receive(&blob.hash, blob.size)?;
    let at = part.len() - 10;
    part[at] ^= 1;
    assert!(
        fresh.take(&tail, &part)?.is_err(),
        "a damaged far part was taken"
    );
    Ok(())
}
