//! The embedded store of a single node: redb (an ACID B-tree store) in the data directory.
//!
//! Reads run on the caller's thread in their own read transaction. Writes go to one writer
//! thread that takes everything queued and makes it durable at once (group commit), then
//! answers every caller in order. Jobs that only append messages go to the journal (see
//! [`super::journal`]: one file append and one fdatasync), whose indexer folds them into the
//! messages table in bulk; reads merge the two. Other jobs are applied in one redb write
//! transaction (one fsync).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::blocks::{self, Entry, BLOCKS};
use super::journal::{Journal, Overlay, Record};
use super::*;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const ORGS: TableDefinition<&str, &[u8]> = TableDefinition::new("orgs");
const CONVS: TableDefinition<&str, &[u8]> = TableDefinition::new("convs");
const MEMBERS: TableDefinition<(&str, &str), u8> = TableDefinition::new("members");
const USER_CONVS: TableDefinition<(&str, &str), u8> = TableDefinition::new("user_convs");
/// Where earlier versions kept messages, one entry each; moved into blocks at open.
const LEGACY_MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// Most writes one commit takes; the rest wait for the next commit.
const MAX_BATCH: usize = 4096;
/// Messages the active journal takes before it is sealed and folded into the messages table
/// (the default of `--journal-messages`).
pub const JOURNAL_MESSAGES: usize = 50_000;
/// Logs whose last seq the writer remembers between commits; past this the memory starts afresh.
const LAST_SEQ_CACHE: usize = 200_000;

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<StoreResult<()>>,
}

/// The redb-backed store. Cheap to share: clone the `Arc`.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Journaled messages not yet in the messages table (written by the writer thread).
    overlay: Arc<RwLock<Overlay>>,
    /// `None` only while dropping: closing the channel stops the writer thread.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    /// Stops the writer after it has committed what was queued, so the file can be reopened.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn enc<T: serde::Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    // Sized for a typical message, so that encoding does not grow the buffer several times.
    let mut buf = Vec::with_capacity(256);
    rmp_serde::encode::write_named(&mut buf, v).map_err(backend)?;
    Ok(buf)
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> StoreResult<T> {
    rmp_serde::from_slice(b).map_err(backend)
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Member => 0,
        Role::Admin => 1,
        Role::Owner => 2,
    }
}

fn role_of(c: u8) -> Role {
    match c {
        2 => Role::Owner,
        1 => Role::Admin,
        _ => Role::Member,
    }
}

/// Adds messages to those found so far, by seq (the journal's copy of a message folded in
/// between is also in a block: the first copy found stays).
fn add_recent(
    found: &mut BTreeMap<u64, StoredMessage>,
    recent: Vec<(u64, Arc<[u8]>)>,
) -> StoreResult<()> {
    for (seq, bytes) in recent {
        if let std::collections::btree_map::Entry::Vacant(e) = found.entry(seq) {
            e.insert(dec(&bytes)?);
        }
    }
    Ok(())
}

/// Moves the messages of [`LEGACY_MESSAGES`] into blocks and drops that table; returns how
/// many.
fn move_legacy_messages(txn: &redb::WriteTransaction) -> StoreResult<u64> {
    let rows: Vec<(String, u64, Vec<u8>)> = {
        let t = txn.open_table(LEGACY_MESSAGES).map_err(backend)?;
        t.iter()
            .map_err(backend)?
            .map(|row| {
                let (k, v) = row.map_err(backend)?;
                let (log, seq) = k.value();
                Ok((log.to_string(), seq, v.value().to_vec()))
            })
            .collect::<StoreResult<_>>()?
    };
    if !rows.is_empty() {
        let entries: Vec<Entry<'_>> = rows
            .iter()
            .map(|(log, seq, bytes)| Entry {
                log,
                seq: *seq,
                bytes,
            })
            .collect();
        let mut t = txn.open_table(BLOCKS).map_err(backend)?;
        blocks::write(&mut t, &entries)?;
    }
    txn.delete_table(LEGACY_MESSAGES).map_err(backend)?;
    Ok(rows.len() as u64)
}

/// The smallest string greater than every string that starts with `prefix`, for range scans.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> StoreResult<Arc<Self>> {
        Self::open_with(dir, JOURNAL_MESSAGES)
    }

    /// [`EmbeddedStore::open`] with the journal sealed every `fold_at` messages.
    pub fn open_with(dir: &Path, fold_at: usize) -> StoreResult<Arc<Self>> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("kaiwa.redb")).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(USERS).map_err(backend)?;
            txn.open_table(ORGS).map_err(backend)?;
            txn.open_table(CONVS).map_err(backend)?;
            txn.open_table(MEMBERS).map_err(backend)?;
            txn.open_table(USER_CONVS).map_err(backend)?;
            txn.open_table(BLOCKS).map_err(backend)?;
            txn.open_table(KV).map_err(backend)?;
        }
        let moved = move_legacy_messages(&txn)?;
        txn.commit().map_err(backend)?;
        if moved > 0 {
            tracing::info!(moved, "moved messages into blocks");
        }
        let db = Arc::new(db);
        // What the journal held when the node stopped goes into its logs first.
        let (journal, folded) = Journal::open(&dir.join("journal"), db.clone(), fold_at)?;
        if folded > 0 {
            tracing::info!(folded, "folded the journal into the message logs");
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let wdb = db.clone();
        let overlay = journal.overlay();
        let writer = std::thread::Builder::new()
            .name("kaiwa-store-writer".into())
            .spawn(move || writer_loop(&wdb, rx, journal))
            .map_err(backend)?;
        Ok(Arc::new(EmbeddedStore {
            db,
            overlay,
            jobs: Some(tx),
            writer: Some(writer),
        }))
    }

    fn read<T, F>(&self, f: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> StoreResult<T>,
    {
        let res = self
            .db
            .begin_read()
            .map_err(backend)
            .and_then(|txn| f(&txn));
        std::future::ready(res).boxed()
    }

    fn get_record<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: TableDefinition<'static, &'static str, &'static [u8]>,
        id: &str,
    ) -> StoreFuture<Option<T>> {
        self.read(|txn| {
            let t = txn.open_table(table).map_err(backend)?;
            match t.get(id).map_err(backend)? {
                Some(v) => Ok(Some(dec(v.value())?)),
                None => Ok(None),
            }
        })
    }
}

/// Takes jobs as they come; each turn commits everything queued since the last one.
fn writer_loop(db: &Database, rx: mpsc::Receiver<Job>, mut journal: Journal) {
    // The last seq of each log as committed. This thread is the only writer of the database,
    // so what it committed is what the file holds; a failed commit forgets everything.
    let mut last_seqs: HashMap<String, u64> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut count = jobs[0].writes.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.writes.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        if last_seqs.len() > LAST_SEQ_CACHE {
            last_seqs.clear();
        }
        let outcome = commit_batch(db, &jobs, &mut last_seqs, &mut journal);
        metrics::histogram!("kaiwa_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("kaiwa_store_batch_writes").record(count as f64);
        match outcome {
            Ok(per_job) => {
                for (job, res) in jobs.into_iter().zip(per_job) {
                    let _ = job.done.send(res);
                }
            }
            Err(e) => {
                last_seqs.clear();
                tracing::error!("store commit failed: {e}");
                for job in jobs {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Where one job of a batch is made durable.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// Refused: its appends do not continue their logs.
    Conflict,
    /// Only appends: the journal.
    Journal,
    /// Anything else: the redb transaction, so that the job applies whole or not at all.
    Database,
}

/// Makes the jobs durable: appends-only jobs in one journal write, the others in one redb
/// transaction after it. A job whose appends do not continue their logs is skipped whole (its
/// result is a conflict). `committed` holds the last seq of logs as committed before this batch;
/// on success it is updated to after it.
///
/// The journal write goes first, and once a log has an append routed to the transaction, every
/// later append of that log in the batch goes there too: whatever a crash between the two
/// leaves durable is a prefix of each log, never a log with a gap.
fn commit_batch(
    db: &Database,
    jobs: &[Job],
    committed: &mut HashMap<String, u64>,
    journal: &mut Journal,
) -> StoreResult<Vec<StoreResult<()>>> {
    let mut routes = Vec::with_capacity(jobs.len());
    let mut results = Vec::with_capacity(jobs.len());
    // The last seq of each log touched by this batch, as the batch has left it.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut in_txn: HashSet<&str> = HashSet::new();
    let mut read: Option<redb::ReadTransaction> = None;
    for job in jobs {
        // Check every append of the job first, so that a job applies whole or not at all.
        let mut planned: HashMap<&str, u64> = HashMap::new();
        let mut conflict = None;
        let mut appends_only = true;
        for w in &job.writes {
            let Write::Append { log, msg } = w else {
                appends_only = false;
                continue;
            };
            let cur = match planned.get(log.as_str()) {
                Some(s) => *s,
                None => match last.get(log).or_else(|| committed.get(log)) {
                    Some(s) => *s,
                    None => stored_last(db, &mut read, journal, log)?,
                },
            };
            if msg.msg.seq != cur + 1 {
                conflict = Some(format!(
                    "log {log}: append of seq {} after {cur}",
                    msg.msg.seq
                ));
                break;
            }
            planned.insert(log.as_str(), msg.msg.seq);
        }
        if let Some(c) = conflict {
            routes.push(Route::Conflict);
            results.push(Err(StoreError::Conflict(c)));
            continue;
        }
        let route = if appends_only && planned.keys().all(|l| !in_txn.contains(l)) {
            Route::Journal
        } else {
            in_txn.extend(planned.keys());
            Route::Database
        };
        for (log, seq) in planned {
            last.insert(log.to_string(), seq);
        }
        routes.push(route);
        results.push(Ok(()));
    }
    drop(read);

    let mut records = Vec::new();
    for (job, _) in jobs
        .iter()
        .zip(&routes)
        .filter(|(_, r)| **r == Route::Journal)
    {
        for w in &job.writes {
            if let Write::Append { log, msg } = w {
                records.push(Record {
                    log: log.clone(),
                    seq: msg.msg.seq,
                    bytes: enc(msg)?.into(),
                });
            }
        }
    }
    let stored = records.len() as u64;
    journal.write(records)?;
    let direct: Vec<&Job> = jobs
        .iter()
        .zip(&routes)
        .filter(|(_, r)| **r == Route::Database)
        .map(|(j, _)| j)
        .collect();
    metrics::counter!("kaiwa_messages_stored_total").increment(stored);
    match apply(db, &direct) {
        Ok(n) => {
            metrics::counter!("kaiwa_messages_stored_total").increment(n);
            committed.extend(last);
        }
        Err(e) => {
            // The journaled jobs are durable; the others failed, and the end of their logs is
            // looked up again next time.
            tracing::error!("store commit failed: {e}");
            for (res, route) in results.iter_mut().zip(&routes) {
                if *route == Route::Database {
                    *res = Err(e.clone());
                }
            }
            for log in &in_txn {
                last.remove(*log);
                committed.remove(*log);
            }
            committed.extend(last);
        }
    }
    Ok(results)
}

/// The last seq of `log` as stored before this batch: journaled or in the messages table.
fn stored_last(
    db: &Database,
    read: &mut Option<redb::ReadTransaction>,
    journal: &Journal,
    log: &str,
) -> StoreResult<u64> {
    // The journal first: a message folded after this look is in the table's later snapshot.
    let journaled = journal.last(log).unwrap_or(0);
    let txn = match read {
        Some(t) => t,
        None => read.insert(db.begin_read().map_err(backend)?),
    };
    let t = txn.open_table(BLOCKS).map_err(backend)?;
    Ok(journaled.max(blocks::last_seq(&t, log)?))
}

/// Applies `jobs` in one redb transaction; returns how many messages it stored.
fn apply(db: &Database, jobs: &[&Job]) -> StoreResult<u64> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut stored = 0;
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut users = txn.open_table(USERS).map_err(backend)?;
        let mut orgs = txn.open_table(ORGS).map_err(backend)?;
        let mut convs = txn.open_table(CONVS).map_err(backend)?;
        let mut members = txn.open_table(MEMBERS).map_err(backend)?;
        let mut user_convs = txn.open_table(USER_CONVS).map_err(backend)?;
        let mut messages = txn.open_table(BLOCKS).map_err(backend)?;
        let mut kv = txn.open_table(KV).map_err(backend)?;
        for w in jobs.iter().flat_map(|j| &j.writes) {
            match w {
                Write::PutUser(u) => {
                    users
                        .insert(u.id.as_str(), enc(u)?.as_slice())
                        .map_err(backend)?;
                }
                Write::PutOrg(o) => {
                    orgs.insert(o.id.as_str(), enc(o)?.as_slice())
                        .map_err(backend)?;
                }
                Write::PutConv(c) => {
                    convs
                        .insert(c.id.as_str(), enc(c)?.as_slice())
                        .map_err(backend)?;
                }
                Write::PutMember { conv, user, role } => {
                    members
                        .insert((conv.as_str(), user.as_str()), role_code(*role))
                        .map_err(backend)?;
                    user_convs
                        .insert((user.as_str(), conv.as_str()), 0)
                        .map_err(backend)?;
                }
                Write::RemoveMember { conv, user } => {
                    members
                        .remove((conv.as_str(), user.as_str()))
                        .map_err(backend)?;
                    user_convs
                        .remove((user.as_str(), conv.as_str()))
                        .map_err(backend)?;
                }
                Write::Append { log, msg } => {
                    let bytes = enc(msg)?;
                    let entry = Entry {
                        log,
                        seq: msg.msg.seq,
                        bytes: &bytes,
                    };
                    blocks::write(&mut messages, &[entry])?;
                    stored += 1;
                }
                Write::PutKv { key, value } => {
                    kv.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                }
                Write::DeleteKv { key } => {
                    kv.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
    }
    txn.commit().map_err(backend)?;
    Ok(stored)
}

impl Store for EmbeddedStore {
    fn write(&self, writes: Vec<Write>) -> StoreFuture<()> {
        let (done, rx) = oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .map(|j| j.send(Job { writes, done }).is_ok());
        if sent != Some(true) {
            return std::future::ready(Err(backend("store writer stopped"))).boxed();
        }
        async move { rx.await.map_err(|_| backend("store writer stopped"))? }.boxed()
    }

    fn user(&self, id: &str) -> StoreFuture<Option<UserRecord>> {
        self.get_record(USERS, id)
    }

    fn org(&self, id: &str) -> StoreFuture<Option<OrgRecord>> {
        self.get_record(ORGS, id)
    }

    fn conv(&self, id: &str) -> StoreFuture<Option<ConvRecord>> {
        self.get_record(CONVS, id)
    }

    fn members(&self, conv: &str) -> StoreFuture<Vec<(Id, Role)>> {
        self.read(|txn| {
            let t = txn.open_table(MEMBERS).map_err(backend)?;
            let end = prefix_end("");
            let mut out = Vec::new();
            for row in t.range((conv, "")..(conv, end.as_str())).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().1.to_string(), role_of(v.value())));
            }
            Ok(out)
        })
    }

    fn user_convs(&self, user: &str) -> StoreFuture<Vec<Id>> {
        self.read(|txn| {
            let t = txn.open_table(USER_CONVS).map_err(backend)?;
            let end = prefix_end("");
            let mut out = Vec::new();
            for row in t.range((user, "")..(user, end.as_str())).map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                out.push(k.value().1.to_string());
            }
            Ok(out)
        })
    }

    fn messages(
        &self,
        log: &str,
        after: u64,
        limit: usize,
    ) -> StoreFuture<(Vec<StoredMessage>, bool)> {
        // The overlay first, then the read transaction: a message folded in between is in the
        // blocks of that transaction.
        let recent = self
            .overlay
            .read()
            .after(log, after, limit.saturating_add(1));
        self.read(|txn| {
            let t = txn.open_table(BLOCKS).map_err(backend)?;
            let mut found: BTreeMap<u64, StoredMessage> = BTreeMap::new();
            add_recent(
                &mut found,
                blocks::after(&t, log, after, limit.saturating_add(1))?,
            )?;
            add_recent(&mut found, recent)?;
            let more = found.len() > limit;
            Ok((found.into_values().take(limit).collect(), more))
        })
    }

    fn tail(&self, log: &str, limit: usize) -> StoreFuture<Vec<StoredMessage>> {
        let recent = self.overlay.read().tail(log, limit);
        self.read(|txn| {
            let t = txn.open_table(BLOCKS).map_err(backend)?;
            let mut found: BTreeMap<u64, StoredMessage> = BTreeMap::new();
            add_recent(&mut found, blocks::tail(&t, log, limit)?)?;
            add_recent(&mut found, recent)?;
            let skip = found.len().saturating_sub(limit);
            Ok(found.into_values().skip(skip).collect())
        })
    }

    fn last_seq(&self, log: &str) -> StoreFuture<u64> {
        let recent = self.overlay.read().last(log).unwrap_or(0);
        self.read(|txn| {
            let t = txn.open_table(BLOCKS).map_err(backend)?;
            Ok(blocks::last_seq(&t, log)?.max(recent))
        })
    }

    fn kv(&self, key: &str) -> StoreFuture<Option<Vec<u8>>> {
        self.read(|txn| {
            let t = txn.open_table(KV).map_err(backend)?;
            Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
        })
    }

    fn kv_scan(&self, prefix: &str) -> StoreFuture<Vec<(String, Vec<u8>)>> {
        self.read(|txn| {
            let t = txn.open_table(KV).map_err(backend)?;
            let end = prefix_end(prefix);
            let mut out = Vec::new();
            for row in t.range(prefix..end.as_str()).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, msg, runtime as rt};

    #[test]
    fn appends_are_gapless_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            conformance::append_three(s.as_ref(), &rt);
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::read_three(s.as_ref(), &rt);
    }

    #[test]
    fn a_write_applies_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::all_or_nothing(s.as_ref(), &rt());
    }

    #[test]
    fn records_members_and_kv_scan_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::records_members_and_kv(s.as_ref(), &rt());
    }

    /// Every read of `logs` (each holding seqs 1..=n) as the store answers it now.
    fn check_logs(s: &EmbeddedStore, rt: &tokio::runtime::Runtime, logs: &[(&str, u64)]) {
        for (log, n) in logs {
            let n = *n;
            assert_eq!(rt.block_on(s.last_seq(log)).unwrap(), n, "{log}");
            let (all, more) = rt.block_on(s.messages(log, 0, 1000)).unwrap();
            let seqs: Vec<u64> = all.iter().map(|m| m.msg.seq).collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{log}");
            assert!(!more);
            if n >= 5 {
                let (page, more) = rt.block_on(s.messages(log, 2, 2)).unwrap();
                let seqs: Vec<u64> = page.iter().map(|m| m.msg.seq).collect();
                assert_eq!((seqs, more), (vec![3, 4], true), "{log}");
                let tail = rt.block_on(s.tail(log, 3)).unwrap();
                let seqs: Vec<u64> = tail.iter().map(|m| m.msg.seq).collect();
                assert_eq!(seqs, vec![n - 2, n - 1, n], "{log}");
            }
        }
    }

    #[test]
    fn reads_see_every_message_while_journals_are_sealed_folded_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let logs = ["a", "b", "c"];
        {
            // A journal of 4 messages: seals and folds many times over 30 appends.
            let s = EmbeddedStore::open_with(dir.path(), 4).unwrap();
            for seq in 1..=10u64 {
                for log in logs {
                    rt.block_on(s.write(vec![msg(log, seq)])).unwrap();
                    let done: Vec<(&str, u64)> = logs
                        .iter()
                        .map(|l| (*l, if *l <= log { seq } else { seq - 1 }))
                        .collect();
                    check_logs(&s, &rt, &done);
                }
            }
            // Gaps and repeats are refused whether the end of the log is journaled or folded.
            assert!(matches!(
                rt.block_on(s.write(vec![msg("a", 10)])),
                Err(StoreError::Conflict(_))
            ));
        }
        // Reopened with messages still in a journal: folded at open, nothing lost.
        let s = EmbeddedStore::open_with(dir.path(), 4).unwrap();
        check_logs(&s, &rt, &[("a", 10), ("b", 10), ("c", 10)]);
        rt.block_on(s.write(vec![msg("a", 11)])).unwrap();
        assert!(matches!(
            rt.block_on(s.write(vec![msg("a", 13)])),
            Err(StoreError::Conflict(_))
        ));
        check_logs(&s, &rt, &[("a", 11), ("b", 10)]);
    }

    #[test]
    fn segments_sealed_faster_than_they_are_folded_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let s = EmbeddedStore::open_with(dir.path(), 4).unwrap();
        let logs: Vec<String> = (0..9).map(|i| format!("l{i}")).collect();
        // One commit of nine logs seals a segment; every second append seals another.
        rt.block_on(s.write(logs.iter().map(|l| msg(l, 1)).collect()))
            .unwrap();
        let mut expect: Vec<(&str, u64)> = logs.iter().map(|l| (l.as_str(), 1)).collect();
        expect.push(("z", 0));
        for seq in 1..=8 {
            rt.block_on(s.write(vec![msg("z", seq)])).unwrap();
            expect.last_mut().unwrap().1 = seq;
            check_logs(&s, &rt, &expect);
        }
    }

    #[test]
    fn the_writer_remembers_log_ends_across_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let rt = rt();
        let block = |f| rt.block_on(f);
        for seq in 1..=5 {
            block(s.write(vec![msg("a", seq)])).unwrap();
        }
        // A gap or a repeat is still refused once the end of the log is remembered.
        assert!(matches!(
            block(s.write(vec![msg("a", 5)])),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            block(s.write(vec![msg("a", 7)])),
            Err(StoreError::Conflict(_))
        ));
        // A refused job leaves the remembered end alone.
        block(s.write(vec![msg("a", 6), msg("b", 1)])).unwrap();
        assert_eq!(rt.block_on(s.last_seq("a")).unwrap(), 6);
        assert_eq!(rt.block_on(s.last_seq("b")).unwrap(), 1);
    }
    /// The journal's segment files in `dir`.
    fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_record_torn_by_a_crash_is_dropped_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let s = EmbeddedStore::open_with(dir.path(), 1000).unwrap();
            for seq in 1..=3 {
                rt.block_on(s.write(vec![msg("a", seq)])).unwrap();
            }
        }
        // What a crash in the middle of the next write leaves at the end of the segment.
        let newest = segment_files(dir.path()).pop().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        std::io::Write::write_all(&mut f, &[40, 0, 0, 0, 1, 2, 3, 4, 5]).unwrap();
        drop(f);
        let s = EmbeddedStore::open_with(dir.path(), 1000).unwrap();
        check_logs(&s, &rt, &[("a", 3)]);
        rt.block_on(s.write(vec![msg("a", 4)])).unwrap();
        check_logs(&s, &rt, &[("a", 4)]);
        // The folded segments are gone; only the one taking appends is left.
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn folded_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let s = EmbeddedStore::open_with(dir.path(), 2).unwrap();
        for seq in 1..=20 {
            rt.block_on(s.write(vec![msg("a", seq)])).unwrap();
        }
        // The indexer folds in the background: wait (bounded) for it to catch up.
        for _ in 0..200 {
            if segment_files(dir.path()).len() <= 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert!(s.overlay.read().after("a", 0, 100).is_empty());
        check_logs(&s, &rt, &[("a", 20)]);
    }

    /// A job appending `seq` to `log`, with a record beside it when `mixed`.
    fn job(log: &str, seq: u64, mixed: bool) -> (Job, oneshot::Receiver<StoreResult<()>>) {
        let (done, rx) = oneshot::channel();
        let mut writes = vec![msg(log, seq)];
        if mixed {
            writes.push(Write::PutKv {
                key: format!("k{seq}"),
                value: vec![1],
            });
        }
        (Job { writes, done }, rx)
    }

    #[test]
    fn after_a_log_goes_to_the_transaction_its_later_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("kaiwa.redb")).unwrap());
        let txn = db.begin_write().unwrap();
        txn.open_table(BLOCKS).unwrap();
        txn.commit().unwrap();
        let (mut journal, _) =
            Journal::open(&dir.path().join("journal"), db.clone(), 1000).unwrap();
        // a:1 alone, a:2 with a record, a:3 alone, b:1 alone, in one batch.
        let jobs = vec![
            job("a", 1, false).0,
            job("a", 2, true).0,
            job("a", 3, false).0,
            job("b", 1, false).0,
        ];
        let mut committed = HashMap::new();
        let results = commit_batch(&db, &jobs, &mut committed, &mut journal).unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
        // Journaled: a:1 (before the log went to the transaction) and b:1; a:3 followed a:2.
        let overlay = journal.overlay();
        let seqs = |log| -> Vec<u64> {
            overlay
                .read()
                .after(log, 0, 10)
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(seqs("a"), vec![1]);
        assert_eq!(seqs("b"), vec![1]);
        let read = db.begin_read().unwrap();
        let t = read.open_table(BLOCKS).unwrap();
        let in_table: Vec<u64> = blocks::after(&t, "a", 0, 10)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(in_table, vec![2, 3]);
        assert_eq!(committed.get("a"), Some(&3));
        // The next batch continues both logs, whichever way their ends were stored.
        let next = vec![job("a", 4, false).0, job("b", 3, false).0];
        let results = commit_batch(&db, &next, &mut committed, &mut journal).unwrap();
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(StoreError::Conflict(_))));
    }
    #[test]
    fn messages_kept_one_per_entry_move_into_blocks_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        {
            let db = Database::create(dir.path().join("kaiwa.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LEGACY_MESSAGES).unwrap();
                for seq in 1..=5 {
                    let Write::Append { msg, .. } = msg("a", seq) else {
                        unreachable!()
                    };
                    t.insert(("a", seq), enc(&msg).unwrap().as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        check_logs(&s, &rt, &[("a", 5)]);
        rt.block_on(s.write(vec![msg("a", 6)])).unwrap();
        check_logs(&s, &rt, &[("a", 6)]);
    }
    #[test]
    fn a_corrupt_record_in_a_sealed_segment_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        // Segment 0 was sealed (synced whole) before segment 1 took appends, so damage inside it
        // is corruption, not a torn write: the store refuses to guess.
        std::fs::write(
            journal.join(format!("{:020}.log", 0)),
            [9u8, 0, 0, 0, 1, 2, 3, 4, 5],
        )
        .unwrap();
        std::fs::write(journal.join(format!("{:020}.log", 1)), []).unwrap();
        let err = EmbeddedStore::open(dir.path()).err().expect("open refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
