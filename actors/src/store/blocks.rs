//! How the embedded store keeps message logs in redb: in blocks of consecutive messages.
//!
//! A B-tree entry per message made the journal's indexer insert every message on its own: a
//! descent from the root, a shift of the leaf's later entries, page-cache bookkeeping — a
//! quarter of the node's core at 50,000 chat messages/s. A block holds a run of consecutive
//! messages of one log under the key (log, seq of its first message), so a segment of the
//! journal is folded with one insert per run of each log, and a read of a page of history is a
//! handful of entries.
//!
//! The value of a block is its messages in seq order, each as `len: u32 LE | bytes`. Blocks of
//! one log never overlap: each seq is in exactly one block. [`runs`] cuts records into blocks
//! the same way every time, so folding a journal segment again after a crash rewrites the very
//! same blocks.

use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition};

use super::{backend, StoreResult};

/// The table of blocks: (log, first seq) → the block's messages.
pub type BlocksDef = TableDefinition<'static, (&'static str, u64), &'static [u8]>;

/// The message logs.
pub const BLOCKS: BlocksDef = TableDefinition::new("message_blocks");

/// Most messages in one block: a read of a few messages decodes at most this many.
pub const MAX_BLOCK_MESSAGES: usize = 64;
/// Most bytes in one block (a block holds at least one message, whatever its size).
pub const MAX_BLOCK_BYTES: usize = 16 * 1024;

/// One message of a log, encoded as the store keeps it.
pub struct Entry<'a> {
    /// The log.
    pub log: &'a str,
    /// Its seq.
    pub seq: u64,
    /// The encoded message.
    pub bytes: &'a [u8],
}

/// Cuts `entries` (sorted by log, then seq) into blocks: runs of consecutive seqs of one log,
/// at most [`MAX_BLOCK_MESSAGES`] messages and about [`MAX_BLOCK_BYTES`] each. Returns the
/// index ranges of `entries` that make each block.
pub fn runs(entries: &[Entry<'_>]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for i in 0..entries.len() {
        if i > start {
            let (prev, cur) = (&entries[i - 1], &entries[i]);
            let continues = prev.log == cur.log && prev.seq + 1 == cur.seq;
            let full =
                i - start >= MAX_BLOCK_MESSAGES || bytes + 4 + cur.bytes.len() > MAX_BLOCK_BYTES;
            if !continues || full {
                out.push(start..i);
                start = i;
                bytes = 0;
            }
        }
        bytes += 4 + entries[i].bytes.len();
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

/// Writes `entries` (sorted by log, then seq; seqs not yet in the table) as blocks.
pub fn write(table: &mut Table<(&str, u64), &[u8]>, entries: &[Entry<'_>]) -> StoreResult<()> {
    let mut value = Vec::new();
    for run in runs(entries) {
        let block = &entries[run];
        value.clear();
        for e in block {
            value.extend_from_slice(&(e.bytes.len() as u32).to_le_bytes());
            value.extend_from_slice(e.bytes);
        }
        table
            .insert((block[0].log, block[0].seq), value.as_slice())
            .map_err(backend)?;
    }
    Ok(())
}

/// The messages of a block whose first seq is `first`, in seq order.
pub fn decode(first: u64, value: &[u8]) -> StoreResult<Vec<(u64, Arc<[u8]>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < value.len() {
        let len = value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| backend("a message block is cut short"))? as usize;
        let bytes = value
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| backend("a message block is cut short"))?;
        out.push((first + out.len() as u64, bytes.into()));
        at += 4 + len;
    }
    Ok(out)
}

/// Up to `limit` messages of `log` with seqs above `after`, in seq order.
pub fn after<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
    log: &str,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<(u64, Arc<[u8]>)>> {
    let want = after.saturating_add(1);
    // The block holding `want` starts at or before it.
    let start = match table
        .range((log, 0u64)..=(log, want))
        .map_err(backend)?
        .next_back()
    {
        Some(row) => row.map_err(backend)?.0.value().1,
        None => want,
    };
    let mut out = Vec::new();
    for row in table
        .range((log, start)..=(log, u64::MAX))
        .map_err(backend)?
    {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row.map_err(backend)?;
        for (seq, bytes) in decode(k.value().1, v.value())? {
            if seq >= want && out.len() < limit {
                out.push((seq, bytes));
            }
        }
    }
    Ok(out)
}

/// The last `limit` messages of `log`, in seq order.
pub fn tail<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
    log: &str,
    limit: usize,
) -> StoreResult<Vec<(u64, Arc<[u8]>)>> {
    let mut out: Vec<(u64, Arc<[u8]>)> = Vec::new();
    for row in table
        .range((log, 0u64)..=(log, u64::MAX))
        .map_err(backend)?
        .rev()
    {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row.map_err(backend)?;
        let block = decode(k.value().1, v.value())?;
        out.extend(block.into_iter().rev().take(limit - out.len()));
    }
    out.reverse();
    Ok(out)
}

/// The last seq of `log` in the table (0 when it has none).
pub fn last_seq<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
    log: &str,
) -> StoreResult<u64> {
    match table
        .range((log, 0u64)..=(log, u64::MAX))
        .map_err(backend)?
        .next_back()
    {
        Some(row) => {
            let (k, v) = row.map_err(backend)?;
            let n = decode(k.value().1, v.value())?.len() as u64;
            Ok(k.value().1 + n.saturating_sub(1))
        }
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn entries<'a>(spec: &[(&'a str, u64)], body: &'a [u8]) -> Vec<Entry<'a>> {
        spec.iter()
            .map(|(log, seq)| Entry {
                log,
                seq: *seq,
                bytes: body,
            })
            .collect()
    }

    #[test]
    fn runs_break_at_a_new_log_a_gap_and_the_size_caps() {
        let e = entries(&[("a", 1), ("a", 2), ("a", 4), ("b", 5), ("b", 6)], b"x");
        assert_eq!(runs(&e), vec![0..2, 2..3, 3..5]);
        let many: Vec<(&str, u64)> = (1..=150).map(|s| ("a", s)).collect();
        let e = entries(&many, b"x");
        assert_eq!(runs(&e), vec![0..64, 64..128, 128..150]);
        let big = vec![0u8; 6000];
        let e = entries(&[("a", 1), ("a", 2), ("a", 3), ("a", 4)], &big);
        assert_eq!(runs(&e), vec![0..2, 2..4]);
    }

    #[test]
    fn reads_find_messages_inside_and_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BLOCKS).unwrap();
            // a: 1..=100 in blocks of 64 and 36, then 101 alone; b: 1..=3.
            let spec: Vec<(&str, u64)> = (1..=100).map(|s| ("a", s)).collect();
            write(&mut t, &entries(&spec, b"m")).unwrap();
            write(&mut t, &entries(&[("a", 101)], b"last")).unwrap();
            write(&mut t, &entries(&[("b", 1), ("b", 2), ("b", 3)], b"b")).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let t = read.open_table(BLOCKS).unwrap();
        let seqs = |v: Vec<(u64, Arc<[u8]>)>| v.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(after(&t, "a", 62, 4).unwrap()), vec![63, 64, 65, 66]);
        assert_eq!(seqs(after(&t, "a", 0, 2).unwrap()), vec![1, 2]);
        assert_eq!(seqs(after(&t, "a", 99, 10).unwrap()), vec![100, 101]);
        assert!(after(&t, "a", 101, 10).unwrap().is_empty());
        assert_eq!(seqs(tail(&t, "a", 3).unwrap()), vec![99, 100, 101]);
        assert_eq!(&tail(&t, "a", 1).unwrap()[0].1[..], b"last");
        assert_eq!(seqs(tail(&t, "b", 10).unwrap()), vec![1, 2, 3]);
        assert_eq!(last_seq(&t, "a").unwrap(), 101);
        assert_eq!(last_seq(&t, "b").unwrap(), 3);
        assert_eq!(last_seq(&t, "c").unwrap(), 0);
        assert!(tail(&t, "c", 5).unwrap().is_empty());
    }
}
