//! The embedded store's journal: where appended messages become durable.
//!
//! A message is acked once it is durable, and a redb commit that carries messages for many
//! chats is expensive: logs are keyed by (log, seq) (see [`super::blocks`]), so every chat's
//! message dirties its own 4 KiB leaf, which is copied, checksummed and written out, and the
//! commit's latency and CPU grow with the number of chats in it. Messages therefore go first to
//! a journal: plain segment files in `<data-dir>/journal/`, appended to by the store's writer
//! thread, one `write` and one `fdatasync` for everything a commit carries. An acked message is
//! in a synced segment. A copy of each stays in memory in the [`Overlay`], which readers merge
//! with the blocks.
//!
//! When a segment holds `fold_at` messages it is sealed and a new one takes appends. The
//! indexer thread folds sealed segments into the message blocks (see [`super::blocks`]: one
//! entry per run of a log's messages) in large sorted transactions, off the ack path and at a
//! lower CPU priority, then forgets their copies in the overlay and deletes the file. A message
//! is thus always in a segment file, a block, or both (same seq, same bytes). On open, every segment
//! left by the last run is folded before anything else runs; a record torn by a crash at the end
//! of the newest segment was never acked and is dropped.
//!
//! A segment is a sequence of records: `len: u32 LE | crc32(body): u32 LE | body`, where body
//! is `log_len: u16 LE | log | seq: u64 LE | message` (the message as the store encodes it).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::RwLock;
use redb::{Database, WriteTransaction};

use super::blocks::{self, Entry, BLOCKS};
use super::{backend, StoreResult};

/// About the most messages one indexer transaction folds, so that a write of other records
/// (which waits for the indexer's transaction) never waits long.
const FOLD_CHUNK: usize = 8192;
/// The indexer's nice value: folding yields the core to the threads that ack and deliver.
const INDEXER_NICE: i32 = 10;
/// Header bytes of a record: length and checksum.
const HEADER: usize = 8;

/// One journaled message.
#[derive(Clone)]
pub struct Record {
    /// The log it belongs to.
    pub log: String,
    /// Its seq in that log.
    pub seq: u64,
    /// The message as the store encodes it.
    pub bytes: Arc<[u8]>,
}

/// Appends `r` to `buf` in the segment format.
fn encode(buf: &mut Vec<u8>, r: &Record) {
    let body_len = 2 + r.log.len() + 8 + r.bytes.len();
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(r.log.len() as u16).to_le_bytes());
    buf.extend_from_slice(r.log.as_bytes());
    buf.extend_from_slice(&r.seq.to_le_bytes());
    buf.extend_from_slice(&r.bytes);
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The records of a segment, and whether it ended cleanly (false: a torn or corrupt record,
/// where reading stopped).
fn decode(data: &[u8]) -> (Vec<Record>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some(rec) = decode_one(&data[at..]) else {
            return (out, false);
        };
        at += rec.0;
        out.push(rec.1);
    }
    (out, true)
}

fn decode_one(data: &[u8]) -> Option<(usize, Record)> {
    let len = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(4..HEADER)?.try_into().ok()?);
    let body = data.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let log_len = u16::from_le_bytes(body.get(0..2)?.try_into().ok()?) as usize;
    let log = std::str::from_utf8(body.get(2..2 + log_len)?).ok()?;
    let seq = u64::from_le_bytes(body.get(2 + log_len..10 + log_len)?.try_into().ok()?);
    let bytes = body.get(10 + log_len..)?;
    Some((
        HEADER + len,
        Record {
            log: log.to_string(),
            seq,
            bytes: bytes.into(),
        },
    ))
}

/// Encoded messages of one log, by seq, tagged with the segment that holds them.
type LogEntries = BTreeMap<u64, (u64, Arc<[u8]>)>;

/// The journaled messages not yet folded into blocks, for readers.
#[derive(Default)]
pub struct Overlay {
    logs: HashMap<String, LogEntries>,
    len: usize,
}

impl Overlay {
    /// Up to `limit` messages of `log` after `after`, in seq order.
    pub fn after(&self, log: &str, after: u64, limit: usize) -> Vec<(u64, Arc<[u8]>)> {
        let Some(l) = self.logs.get(log) else {
            return Vec::new();
        };
        l.range(after.saturating_add(1)..)
            .take(limit)
            .map(|(s, (_, b))| (*s, b.clone()))
            .collect()
    }

    /// The last `limit` messages of `log`, in seq order.
    pub fn tail(&self, log: &str, limit: usize) -> Vec<(u64, Arc<[u8]>)> {
        let Some(l) = self.logs.get(log) else {
            return Vec::new();
        };
        let mut v: Vec<_> = l
            .iter()
            .rev()
            .take(limit)
            .map(|(s, (_, b))| (*s, b.clone()))
            .collect();
        v.reverse();
        v
    }

    /// The highest seq of `log` held here.
    pub fn last(&self, log: &str) -> Option<u64> {
        self.logs.get(log)?.keys().next_back().copied()
    }

    fn insert(&mut self, segment: u64, records: &[Record]) {
        for r in records {
            let l = self.logs.entry(r.log.clone()).or_default();
            if l.insert(r.seq, (segment, r.bytes.clone())).is_none() {
                self.len += 1;
            }
        }
    }

    /// Forgets the copies of `records` that came from `segment` (they are in the table now).
    fn forget(&mut self, segment: u64, records: &[Record]) {
        for r in records {
            let Some(l) = self.logs.get_mut(&r.log) else {
                continue;
            };
            if l.get(&r.seq).is_some_and(|(s, _)| *s == segment) {
                l.remove(&r.seq);
                self.len -= 1;
                if l.is_empty() {
                    self.logs.remove(&r.log);
                }
            }
        }
    }
}

/// A sealed segment on its way to the indexer.
struct Sealed {
    segment: u64,
    path: PathBuf,
    records: Vec<Record>,
}

/// The writer's side of the journal: the segment taking appends.
pub struct Journal {
    dir: PathBuf,
    overlay: Arc<RwLock<Overlay>>,
    segment: u64,
    file: File,
    /// Bytes of the segment known to be durable; a failed write is cut back to this.
    synced_len: u64,
    records: Vec<Record>,
    fold_at: usize,
    /// Set when a failed write could not be cut back: every later write fails.
    broken: bool,
    buf: Vec<u8>,
    indexer: Option<(SyncSender<Sealed>, JoinHandle<()>)>,
}

impl Drop for Journal {
    /// Stops the indexer after it has folded what was sealed (the open segment is folded at the
    /// next open).
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.indexer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// Segment numbers found in `dir`, oldest first.
fn segments(dir: &Path) -> StoreResult<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(backend)? {
        let name = entry.map_err(backend)?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(backend)
}

impl Journal {
    /// Folds every segment left in `dir` into `db`'s message blocks, then starts an empty
    /// journal there that seals a segment every `fold_at` messages, and its indexer thread.
    /// Returns the journal and how many messages were folded at open.
    pub fn open(dir: &Path, db: Arc<Database>, fold_at: usize) -> StoreResult<(Journal, u64)> {
        fs::create_dir_all(dir).map_err(backend)?;
        let found = segments(dir)?;
        let mut folded = 0u64;
        if !found.is_empty() {
            let txn = db.begin_write().map_err(backend)?;
            for (i, seg) in found.iter().enumerate() {
                let path = segment_path(dir, *seg);
                let data = fs::read(&path).map_err(backend)?;
                let (mut records, clean) = decode(&data);
                // Only the newest segment can end in a record torn by a crash; a sealed one
                // was synced whole before the next one took appends.
                if !clean && i + 1 < found.len() {
                    return Err(backend(format!(
                        "journal segment {} is corrupt after {} records",
                        path.display(),
                        records.len()
                    )));
                }
                // Cut into the same blocks as the indexer cuts a sealed segment, so that a
                // segment folded again after a crash rewrites the very same blocks.
                sort(&mut records);
                folded += fold_into(&txn, &entries(&records))?;
            }
            txn.commit().map_err(backend)?;
            for seg in &found {
                fs::remove_file(segment_path(dir, *seg)).map_err(backend)?;
            }
        }
        let segment = found.last().map_or(0, |s| s + 1);
        let overlay: Arc<RwLock<Overlay>> = Arc::default();
        let (tx, rx) = mpsc::sync_channel::<Sealed>(1);
        let idx_overlay = overlay.clone();
        let handle = std::thread::Builder::new()
            .name("kaiwa-store-indexer".into())
            .spawn(move || indexer_loop(&db, rx, &idx_overlay))
            .map_err(backend)?;
        let file = create_segment(dir, segment)?;
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                overlay,
                segment,
                file,
                synced_len: 0,
                records: Vec::new(),
                fold_at: fold_at.max(1),
                broken: false,
                buf: Vec::with_capacity(64 * 1024),
                indexer: Some((tx, handle)),
            },
            folded,
        ))
    }

    /// The overlay, shared with readers.
    pub fn overlay(&self) -> Arc<RwLock<Overlay>> {
        self.overlay.clone()
    }

    /// The highest journaled seq of `log` not yet folded into blocks.
    pub fn last(&self, log: &str) -> Option<u64> {
        self.overlay.read().last(log)
    }

    /// Makes `records` durable: one write and one `fdatasync`. On return they are readable from
    /// the overlay. On an error none of them is in the journal.
    pub fn write(&mut self, records: Vec<Record>) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(backend("the journal could not recover from a failed write"));
        }
        self.buf.clear();
        for r in &records {
            encode(&mut self.buf, r);
        }
        let res = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            // Cut the segment back to what was durable, so that the records of this failed write
            // never come back at the next open.
            let cut = self
                .file
                .set_len(self.synced_len)
                .and_then(|()| self.file.sync_data());
            if cut.is_err() {
                self.broken = true;
            }
            return Err(backend(e));
        }
        self.synced_len += self.buf.len() as u64;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        let held = {
            let mut overlay = self.overlay.write();
            overlay.insert(self.segment, &records);
            overlay.len
        };
        metrics::gauge!("kaiwa_journal_messages").set(held as f64);
        self.records.extend(records);
        if self.records.len() >= self.fold_at {
            self.seal()?;
        }
        Ok(())
    }

    /// Hands the segment to the indexer (waiting while it is a segment behind) and starts a new
    /// one.
    fn seal(&mut self) -> StoreResult<()> {
        let file = create_segment(&self.dir, self.segment + 1)?;
        let sealed = Sealed {
            segment: self.segment,
            path: segment_path(&self.dir, self.segment),
            records: std::mem::take(&mut self.records),
        };
        self.segment += 1;
        self.file = file;
        self.synced_len = 0;
        if let Some((tx, _)) = &self.indexer {
            tx.send(sealed)
                .map_err(|_| backend("store indexer stopped"))?;
        }
        Ok(())
    }
}

fn create_segment(dir: &Path, segment: u64) -> StoreResult<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))
        .map_err(backend)?;
    // The new name must be durable before anything acked lives only in it.
    sync_dir(dir)?;
    Ok(file)
}

/// Puts `records` in key order: a B-tree takes them fastest so.
fn sort(records: &mut [Record]) {
    records.sort_unstable_by(|a, b| (a.log.as_str(), a.seq).cmp(&(b.log.as_str(), b.seq)));
}

/// `records` as block entries.
fn entries(records: &[Record]) -> Vec<Entry<'_>> {
    records
        .iter()
        .map(|r| Entry {
            log: &r.log,
            seq: r.seq,
            bytes: &r.bytes,
        })
        .collect()
}

/// Writes `entries` (sorted) as message blocks; returns how many messages.
fn fold_into(txn: &WriteTransaction, entries: &[Entry<'_>]) -> StoreResult<u64> {
    let mut table = txn.open_table(BLOCKS).map_err(backend)?;
    blocks::write(&mut table, entries)?;
    Ok(entries.len() as u64)
}

/// Groups the blocks `runs` cuts into transactions of about [`FOLD_CHUNK`] messages; each
/// group starts and ends on a block boundary, so cutting a group again gives the same blocks.
fn chunks(runs: &[std::ops::Range<usize>]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(last) if r.end - last.start <= FOLD_CHUNK => last.end = r.end,
            _ => out.push(r.clone()),
        }
    }
    out
}

/// Lowers the calling thread's CPU priority (Linux applies a nice value per thread).
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments; gettid cannot fail.
    let rc = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            INDEXER_NICE,
        )
    };
    if rc != 0 {
        tracing::debug!("the store indexer keeps its priority");
    }
}

/// Folds sealed segments into the message blocks until the journal is dropped.
fn indexer_loop(db: &Database, rx: Receiver<Sealed>, overlay: &RwLock<Overlay>) {
    lower_priority();
    while let Ok(mut sealed) = rx.recv() {
        // In key order, so that a log's messages of the whole segment make few blocks.
        sort(&mut sealed.records);
        let all = entries(&sealed.records);
        let mut done = true;
        for chunk in chunks(&blocks::runs(&all)) {
            let res = db.begin_write().map_err(backend).and_then(|txn| {
                fold_into(&txn, &all[chunk.clone()])?;
                txn.commit().map_err(backend)
            });
            if let Err(e) = res {
                // The segment stays on disk and in the overlay: it is folded at the next open.
                tracing::error!("folding journal segment {}: {e}", sealed.segment);
                done = false;
                break;
            }
            overlay
                .write()
                .forget(sealed.segment, &sealed.records[chunk.clone()]);
            metrics::counter!("kaiwa_journal_folded_total").increment(chunk.len() as u64);
        }
        drop(all);
        if done {
            if let Err(e) = fs::remove_file(&sealed.path) {
                tracing::warn!("removing folded journal segment: {e}");
            }
        }
        metrics::gauge!("kaiwa_journal_messages").set(overlay.read().len as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(log: &str, seq: u64, body: &[u8]) -> Record {
        Record {
            log: log.into(),
            seq,
            bytes: body.into(),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let mut buf = Vec::new();
        encode(&mut buf, &rec("conv-a", 1, b"hello"));
        encode(&mut buf, &rec("conv-b", 7, b""));
        let whole = buf.len();
        encode(&mut buf, &rec("conv-a", 2, b"torn"));
        let (all, clean) = decode(&buf);
        assert!(clean);
        assert_eq!(all.len(), 3);
        assert_eq!((all[1].log.as_str(), all[1].seq), ("conv-b", 7));
        assert_eq!(&all[0].bytes[..], b"hello");
        for cut in whole + 1..buf.len() {
            let (some, clean) = decode(&buf[..cut]);
            assert!(!clean);
            assert_eq!(some.len(), 2, "cut at {cut}");
        }
        // A flipped bit in a body fails its checksum.
        let mut bad = buf.clone();
        bad[HEADER + 3] ^= 1;
        assert_eq!(decode(&bad).0.len(), 0);
    }

    #[test]
    fn the_overlay_forgets_only_the_copies_of_a_folded_segment() {
        let mut o = Overlay::default();
        o.insert(1, &[rec("a", 1, b"1"), rec("a", 2, b"2")]);
        o.insert(2, &[rec("a", 3, b"3")]);
        assert_eq!(o.last("a"), Some(3));
        o.forget(1, &[rec("a", 1, b""), rec("a", 2, b""), rec("a", 3, b"")]);
        assert_eq!(o.after("a", 0, 10).len(), 1);
        assert_eq!(o.len, 1);
        o.forget(2, &[rec("a", 3, b"")]);
        assert_eq!(o.last("a"), None);
        assert_eq!(o.len, 0);
    }
    #[test]
    fn a_segment_folded_in_chunks_makes_the_same_blocks_as_folded_whole() {
        use redb::{ReadableDatabase, ReadableTable};
        // Three logs, long enough that runs are cut by size and chunks cut between runs.
        let mut records: Vec<Record> = (1..=7000u64)
            .flat_map(|seq| ["a", "b", "c"].map(|log| rec(log, seq, b"body")))
            .collect();
        sort(&mut records);
        let all = entries(&records);
        let keys = |chunked: bool| {
            let dir = tempfile::tempdir().unwrap();
            let db = Database::create(dir.path().join("t.redb")).unwrap();
            let whole = 0..all.len();
            let parts = if chunked {
                chunks(&blocks::runs(&all))
            } else {
                vec![whole]
            };
            assert_eq!(parts.len() > 1, chunked);
            for part in parts {
                let txn = db.begin_write().unwrap();
                fold_into(&txn, &all[part]).unwrap();
                txn.commit().unwrap();
            }
            let read = db.begin_read().unwrap();
            let t = read.open_table(BLOCKS).unwrap();
            t.iter()
                .unwrap()
                .map(|r| {
                    let (k, v) = r.unwrap();
                    let (log, seq) = k.value();
                    (log.to_string(), seq, v.value().len())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(true), keys(false));
    }
}
