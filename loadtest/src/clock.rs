//! One process clock for latency: send and receive stamps must come from the same clock, so every
//! stamp is nanoseconds since the tool started (worker processes align to the parent's start).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static START: OnceLock<(Instant, u64)> = OnceLock::new();
/// Added to local readings so that a worker's stamps match the parent's clock.
static OFFSET_NS: AtomicI64 = AtomicI64::new(0);

fn start() -> &'static (Instant, u64) {
    START.get_or_init(|| (Instant::now(), unix_ns()))
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Nanoseconds since the tool (the parent process) started.
pub fn now_ns() -> u64 {
    let (t0, _) = start();
    (t0.elapsed().as_nanos() as i64 + OFFSET_NS.load(Ordering::Relaxed)).max(0) as u64
}

/// The wall-clock time (Unix ns) at which this process's clock reads zero; handed to workers.
pub fn epoch_unix_ns() -> u64 {
    (start().1 as i64 - OFFSET_NS.load(Ordering::Relaxed)) as u64
}

/// Makes this process's clock read as if it had started at `parent_epoch_unix_ns` (workers).
pub fn align_to(parent_epoch_unix_ns: u64) {
    let (_, mine) = start();
    OFFSET_NS.store(
        *mine as i64 - parent_epoch_unix_ns as i64,
        Ordering::Relaxed,
    );
}

/// `mark`, the send time and a space, padded to `len` bytes.
fn padded(mark: &str, len: usize) -> String {
    let mut text = format!("{mark}{} ", now_ns());
    if text.len() < len {
        text.extend(std::iter::repeat_n('x', len - text.len()));
    }
    text
}

/// A message text that starts with the send time and is padded to `len` bytes.
pub fn stamped_text(len: usize) -> String {
    padded("", len)
}

/// A padded text marked as sent during the warm-up: it counts for delivery and loss, but
/// [`parse_stamp`] finds no send time in it, so no latency histogram records it.
pub fn warmup_text(len: usize) -> String {
    padded("w", len)
}

/// The send time at the start of a stamped text, if there is one.
pub fn parse_stamp(text: &str) -> Option<u64> {
    text.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads() {
        let t = stamped_text(100);
        assert_eq!(t.len(), 100);
        let s = parse_stamp(&t).unwrap();
        assert!(s <= now_ns());
        assert!(parse_stamp("hello").is_none());
        let w = warmup_text(100);
        assert_eq!(w.len(), 100);
        assert!(parse_stamp(&w).is_none(), "warm-up sends are not measured");
    }
}
