//! Measurement primitives: latency histograms, percentiles for reports, error tallies and a
//! compact set of received sequence numbers (for the loss check).

use std::collections::BTreeMap;

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies in microseconds, 1 µs .. 10 min, 3 significant digits. The histogram (about
/// 200 KiB) is allocated on the first sample: a chat run has one per sender, most of them merged
/// away at once.
#[derive(Clone, Debug, Default)]
pub struct Latency(Option<Box<Histogram<u64>>>);

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Latency {
    fn hist(&mut self) -> &mut Histogram<u64> {
        self.0.get_or_insert_with(|| Box::new(new_histogram()))
    }

    /// Records one latency given in nanoseconds (clamped into the histogram's range).
    pub fn record_ns(&mut self, ns: u64) {
        self.hist().saturating_record((ns / 1000).max(1));
    }

    /// Adds another histogram's samples (from another task or process).
    pub fn merge(&mut self, other: &Latency) {
        if let Some(o) = &other.0 {
            if o.is_empty() {
                return;
            }
            let _ = self.hist().add(&**o);
        }
    }

    /// The summary that reports and charts show.
    pub fn percentiles(&self) -> Percentiles {
        let Some(h) = &self.0 else {
            return Percentiles::default();
        };
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// Serialized (HDR V2) so that worker processes can ship full histograms as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let empty;
        let h = match &self.0 {
            Some(h) => &**h,
            None => {
                empty = new_histogram();
                &empty
            }
        };
        V2Serializer::new()
            .serialize(h, &mut out)
            .expect("serializing into a Vec cannot fail");
        out
    }

    /// The inverse of [`Latency::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Latency> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        Ok(Latency(Some(Box::new(h))))
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_bytes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Latency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Latency::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// The percentiles that a human compares between runs, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Errors counted by protocol code (or `timeout`, `transport`, `connect_401`, ...).
pub type Errors = BTreeMap<String, u64>;

/// Adds `other`'s counts into `into`.
pub fn merge_errors(into: &mut Errors, other: &Errors) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The seqs of one conversation that one receiver has seen: a bitset, because a long fan-out run
/// delivers millions of (receiver, seq) pairs and a hash set per receiver would not fit.
#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    count: u64,
}

impl SeqSet {
    /// Marks `seq` as seen; returns false if it already was (a duplicate delivery).
    pub fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        self.count += fresh as u64;
        fresh
    }

    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        word < self.bits.len() && self.bits[word] & (1 << (seq % 64)) != 0
    }

    /// How many distinct seqs were seen.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_and_histogram_round_trip() {
        let mut s = SeqSet::default();
        assert!(s.insert(1));
        assert!(!s.insert(1));
        assert!(s.insert(200));
        assert!(s.contains(200) && !s.contains(2) && !s.contains(100_000));
        assert_eq!(s.len(), 2);

        let mut l = Latency::default();
        for ms in 1..=100 {
            l.record_ns(ms * 1_000_000);
        }
        let back = Latency::from_bytes(&l.to_bytes()).unwrap();
        assert_eq!(back.percentiles(), l.percentiles());
        assert!((l.percentiles().p50_ms - 50.0).abs() < 0.1);
    }
}
