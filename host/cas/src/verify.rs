//! BLAKE3 verified streaming with bao-tree: the outboard (the blob's hash tree, kept in a
//! file beside the data, pre-order, no size prefix) is computed when a blob is put, and
//! every read checks the bytes it hands out against it, window by window.

use std::fs::File;
use std::io::{BufReader, Cursor, Write};
use std::ops::Range;

use bao_tree::io::BaoContentItem;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{DecodeResponseIter, encode_ranges_validated, outboard};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

/// Hash-tree granularity: 16 chunks of 1 KiB. Outboards hold one hash pair per 16 KiB (about
/// 0.4% of the data), and a verified read or transfer unit is at least 16 KiB.
pub(crate) const BLOCK: BlockSize = BlockSize::from_chunk_log(4);

/// Bytes verified per step of a read (a multiple of the block size).
const WINDOW: u64 = 1 << 20;

/// The hash tree of `size` bytes.
pub(crate) fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK)
}

/// Computes the outboard of `data` (`size` bytes) into `obao`; returns the BLAKE3 hash.
pub(crate) fn make_outboard(data: &File, size: u64, obao: File) -> std::io::Result<blake3::Hash> {
    let tree = tree(size);
    let mut ob = PreOrderOutboard {
        root: blake3::hash(&[]),
        tree,
        data: obao,
    };
    outboard(BufReader::new(data), tree, &mut ob)
}

/// Why a verified read failed.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The bytes or the outboard do not match the hash.
    Damaged(String),
    /// The caller's writer failed.
    Output(std::io::Error),
}

/// Writes bytes `range` of the blob (`root`, `size` bytes, data and outboard files) to
/// `out`, each window checked against the hash tree before any of it is written.
pub(crate) fn read_verified(
    data: &File,
    obao: &File,
    root: blake3::Hash,
    size: u64,
    range: Range<u64>,
    out: &mut impl Write,
) -> Result<u64, ReadFailure> {
    let tree = tree(size);
    let outboard = PreOrderOutboard {
        root,
        tree,
        data: obao,
    };
    let mut written = 0;
    let mut at = range.start - range.start % WINDOW;
    let mut encoded = Vec::new();
    let mut window = Vec::new();
    while at < range.end {
        let end = (at + WINDOW).min(size);
        let ranges = ChunkRanges::from(ChunkNum::full_chunks(at)..ChunkNum::chunks(end));
        encoded.clear();
        encode_ranges_validated(data, &outboard, &ranges, &mut encoded)
            .map_err(|e| ReadFailure::Damaged(e.to_string()))?;
        // `encode_ranges_validated` checked every parent pair from the root hash down and
        // every leaf against its parent, so the leaves can be taken out of the stream as they
        // are. A leaf encoded only in part (not expected: windows are whole blocks) is
        // decoded the slow way, which checks it once more against the root alone.
        window.clear();
        let mut window_start = None;
        if !leaves_of(tree, &ranges, &encoded, &mut window, &mut window_start) {
            window.clear();
            window_start = None;
            for item in DecodeResponseIter::new(root, tree, Cursor::new(&encoded), &ranges) {
                match item.map_err(|e| ReadFailure::Damaged(e.to_string()))? {
                    BaoContentItem::Parent(_) => {}
                    BaoContentItem::Leaf(leaf) => {
                        window_start.get_or_insert(leaf.offset);
                        window.extend_from_slice(&leaf.data);
                    }
                }
            }
        }
        let start = window_start.unwrap_or(at);
        let from = range.start.max(start);
        let to = range.end.min(start + window.len() as u64);
        if from < to {
            let slice = &window[(from - start) as usize..(to - start) as usize];
            out.write_all(slice).map_err(ReadFailure::Output)?;
            written += slice.len() as u64;
        }
        at = end;
    }
    Ok(written)
}

/// Appends the leaf bytes of a validated encoding of `ranges` to `window` (setting `start` to
/// the first leaf's offset); false when a leaf is encoded only in part.
fn leaves_of(
    tree: BaoTree,
    ranges: &ChunkRanges,
    encoded: &[u8],
    window: &mut Vec<u8>,
    start: &mut Option<u64>,
) -> bool {
    let mut at = 0usize;
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent { .. } => at += 64,
            BaoChunk::Leaf {
                start_chunk,
                size,
                ranges,
                ..
            } => {
                if !ranges.is_all() {
                    return false;
                }
                let Some(bytes) = encoded.get(at..at + size) else {
                    return false;
                };
                start.get_or_insert(start_chunk.to_bytes());
                window.extend_from_slice(bytes);
                at += size;
            }
        }
    }
    at == encoded.len()
}
