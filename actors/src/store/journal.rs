//! The embedded store's journal: where appended messages go first.
//!
//! The messages table is keyed by (log, seq), so a commit that carries one message for each of
//! 5,000 chats copies 5,000 B-tree leaves (4 KiB each, zeroed, checksummed and written out) for
//! 5,000 small messages. Appends therefore go to a journal table keyed by a node-wide counter,
//! where a commit only extends the rightmost leaf, and a copy of each stays in memory in the
//! [`Overlay`] that readers merge with the messages table.
//!
//! There are two journal tables. One takes appends; when it holds `fold_at` messages it is
//! sealed and the other takes over. The writer then folds the sealed one into the messages table
//! within its next commits, about twice as many messages per commit as the commit appends, all of
//! a log's sealed messages at once (one leaf copy for many of them), and drops the whole table
//! when the last log is folded. On open, whatever the journals
//! hold is folded before anything else runs. A message is thus always in a journal, the messages
//! table, or both (same key, same bytes), and every acked message is in the overlay or in the
//! messages table of any later read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::{StoreError, StoreResult};

/// A journal: node-wide append counter → (log, seq, the encoded stored message).
pub type JournalDef = TableDefinition<'static, u64, (&'static str, u64, &'static [u8])>;

/// The two journal tables.
pub const JOURNALS: [JournalDef; 2] = [
    TableDefinition::new("journal_0"),
    TableDefinition::new("journal_1"),
];

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Encoded messages of one log, by seq, tagged with the journal that holds them.
type LogEntries = BTreeMap<u64, (u8, Arc<[u8]>)>;

/// The journaled messages not yet folded (or folded but not yet forgotten), for readers.
#[derive(Default)]
pub struct Overlay {
    logs: HashMap<String, LogEntries>,
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

    fn of_gen(&self, log: &str, gen: u8) -> Vec<(u64, Arc<[u8]>)> {
        self.logs
            .get(log)
            .map(|l| {
                l.iter()
                    .filter(|(_, (g, _))| *g == gen)
                    .map(|(s, (_, b))| (*s, b.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn logs_of_gen(&self, gen: u8) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(_, l)| l.values().any(|(g, _)| *g == gen))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn forget(&mut self, log: &str, gen: u8) {
        if let Some(l) = self.logs.get_mut(log) {
            l.retain(|_, (g, _)| *g != gen);
            if l.is_empty() {
                self.logs.remove(log);
            }
        }
    }
}

/// What one commit appended and folded, applied to the journal once the commit is durable.
#[derive(Default)]
pub struct Pending {
    appended: Vec<(String, u64, Arc<[u8]>)>,
    folded: Vec<String>,
    folded_messages: usize,
    dropped: bool,
}

/// The writer's side of the journal.
pub struct Journal {
    overlay: Arc<RwLock<Overlay>>,
    active: u8,
    next_gid: u64,
    count: [usize; 2],
    /// The journal being folded, and its logs not folded yet.
    sealed: Option<(u8, Vec<String>)>,
    fold_at: usize,
}

impl Journal {
    /// An empty journal (the tables were folded at open) that seals at `fold_at` messages.
    pub fn new(fold_at: usize) -> Self {
        Journal {
            overlay: Arc::default(),
            active: 0,
            next_gid: 0,
            count: [0, 0],
            sealed: None,
            fold_at: fold_at.max(1),
        }
    }

    /// The highest journaled seq of `log`.
    pub fn last(&self, log: &str) -> Option<u64> {
        self.overlay.read().last(log)
    }

    /// The overlay, shared with readers.
    pub fn overlay(&self) -> Arc<RwLock<Overlay>> {
        self.overlay.clone()
    }

    /// The journal table that takes appends now.
    pub fn active(&self) -> JournalDef {
        JOURNALS[self.active as usize]
    }

    /// Journals an encoded message into the [`Journal::active`] table of the commit being
    /// built; it joins the overlay at [`Journal::committed`].
    pub fn append(
        &mut self,
        table: &mut Table<u64, (&str, u64, &[u8])>,
        pending: &mut Pending,
        log: &str,
        seq: u64,
        bytes: Vec<u8>,
    ) -> StoreResult<()> {
        table
            .insert(self.next_gid, (log, seq, bytes.as_slice()))
            .map_err(backend)?;
        self.next_gid += 1;
        pending.appended.push((log.to_string(), seq, bytes.into()));
        Ok(())
    }

    /// Folds some logs of the sealed journal into `messages` within `txn`; drops the sealed
    /// table once it is folded whole.
    pub fn fold_step(
        &self,
        txn: &WriteTransaction,
        messages: &mut Table<(&str, u64), &[u8]>,
        pending: &mut Pending,
    ) -> StoreResult<()> {
        let Some((gen, logs)) = &self.sealed else {
            return Ok(());
        };
        // Fold twice as many messages as this commit appends (at least a few dozen), so that
        // folding keeps ahead of appending and costs every commit a little instead of a few
        // commits a lot; everything at once only if the active journal filled up first.
        let mut budget = if self.count[self.active as usize] >= self.fold_at {
            usize::MAX
        } else {
            (2 * pending.appended.len()).max((self.fold_at / 64).clamp(1, 64))
        };
        let overlay = self.overlay.read();
        for log in logs.iter().rev() {
            if budget == 0 {
                break;
            }
            let entries = overlay.of_gen(log, *gen);
            for (seq, bytes) in &entries {
                messages
                    .insert((log.as_str(), *seq), &bytes[..])
                    .map_err(backend)?;
            }
            budget = budget.saturating_sub(entries.len().max(1));
            pending.folded_messages += entries.len();
            pending.folded.push(log.clone());
        }
        drop(overlay);
        if pending.folded.len() == logs.len() {
            txn.delete_table(JOURNALS[*gen as usize]).map_err(backend)?;
            pending.dropped = true;
        }
        Ok(())
    }

    /// The commit that carried `pending` is durable: what it appended is readable from the
    /// overlay, what it folded is readable from the messages table.
    pub fn committed(&mut self, pending: Pending) {
        let mut overlay = self.overlay.write();
        let active = self.active;
        self.count[active as usize] += pending.appended.len();
        for (log, seq, bytes) in pending.appended {
            overlay
                .logs
                .entry(log)
                .or_default()
                .insert(seq, (active, bytes));
        }
        if let Some((gen, logs)) = &mut self.sealed {
            for log in &pending.folded {
                overlay.forget(log, *gen);
            }
            let left = logs.len() - pending.folded.len();
            logs.truncate(left);
            if pending.dropped {
                self.count[*gen as usize] = 0;
                self.sealed = None;
            }
        }
        if self.sealed.is_none() && self.count[active as usize] >= self.fold_at {
            let logs = overlay.logs_of_gen(active);
            self.sealed = Some((active, logs));
            self.active = 1 - active;
        }
        metrics::gauge!("kaiwa_journal_messages").set((self.count[0] + self.count[1]) as f64);
        metrics::counter!("kaiwa_journal_folded_total").increment(pending.folded_messages as u64);
    }
}

/// Folds whatever both journals hold into `messages` and empties them (at open).
pub fn fold_all(txn: &WriteTransaction) -> StoreResult<u64> {
    let mut folded = 0;
    let mut messages = txn.open_table(super::embedded::MESSAGES).map_err(backend)?;
    for def in JOURNALS {
        {
            let j = txn.open_table(def).map_err(backend)?;
            for row in j.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                let (log, seq, bytes) = v.value();
                messages.insert((log, seq), bytes).map_err(backend)?;
                folded += 1;
            }
        }
        txn.delete_table(def).map_err(backend)?;
    }
    Ok(folded)
}
