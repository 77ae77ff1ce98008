//! Aggregate mode, between the kernel's totals and the classifier: what changed since the
//! last read of the `AGG` and `LAT` maps, and each changed key as something the
//! [`crate::classify::Classifier`] classifies the way it would each call the key sums.
//!
//! The kernel keeps running totals per key (summed per CPU); a key it re-creates after
//! userspace deleted it (idle) starts again from zero, which [`Deltas`] recognises. Pure:
//! the maps are read in `attach`, the clock is passed in.

use std::collections::HashMap;

use ktls_trace_common::{AggKey, AggVal, LatHist, LatKey, Probe, facts};

use crate::{
    attach::RawAggregates,
    event::{Comm, TlsWire, TraceEvent},
};

/// Once a key has not changed for this many reads (at top's default 1 s interval: half a
/// minute), the kernel's maps are cleared of what is no longer live ([`Deltas`]), which
/// bounds them to the live sockets and threads.
pub const FORGET_AFTER_IDLE_READS: u32 = 30;

/// Calls of one key since the last read, ready for the classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// One call standing for all: bytes, return value and records are their sums.
    pub event: TraceEvent,
    /// The [`facts`] every one of the calls had.
    pub facts: u8,
    pub calls: u64,
}

/// Latencies of one process's calls of one probe since the last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub pid: u32,
    pub probe: Probe,
    /// Bucket `i > 0` counts latencies in `[2^(i-1), 2^i)` ns.
    pub hist: LatHist,
}

/// What changed since the last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub calls: Vec<Aggregate>,
    pub latency: Vec<Latency>,
}

impl Batch {
    /// Calls in the batch (the aggregate mode's "events").
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().map(|a| a.calls).sum()
    }

    /// The calls in the order to classify them: kernel TLS sends first, so that the
    /// sockets they name are known as kernel TLS sockets when the TCP pushes of the same
    /// batch are attributed (as in an event stream, where a send precedes the pushes of
    /// its records by the tx worker). Every view that classifies batches goes this way.
    pub fn ktls_first(&self) -> Vec<&Aggregate> {
        let mut order: Vec<&Aggregate> = self.calls.iter().collect();
        order.sort_by_key(|a| !crate::classify::is_ktls_call(a.event.probe));
        order
    }
}

/// Keys to delete from the kernel's maps: every key of a generation nothing writes any
/// more, read for the last time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forget {
    pub calls: Vec<AggKey>,
    pub latency: Vec<LatKey>,
}

impl Forget {
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.latency.is_empty()
    }
}

/// A key of a map written in generations ([`AggKey::generation`]).
pub trait Generational {
    fn generation(&self) -> u8;
}

impl Generational for AggKey {
    fn generation(&self) -> u8 {
        self.generation
    }
}

impl Generational for LatKey {
    fn generation(&self) -> u8 {
        self.generation
    }
}

/// A running total the kernel keeps (per CPU: the key's total is their sum).
pub trait Total: Copy + PartialEq {
    const ZERO: Self;
    /// `self - before`, or None when some counter went down (the key was re-created).
    fn since(&self, before: &Self) -> Option<Self>;
    fn is_zero(&self) -> bool;
    /// Adds another CPU's part (wrapping, as the kernel's counters do).
    fn add(&mut self, other: &Self);
}

impl Total for AggVal {
    const ZERO: Self = AggVal {
        calls: 0,
        bytes: 0,
        done: 0,
        records: 0,
    };

    fn add(&mut self, v: &Self) {
        self.calls = self.calls.wrapping_add(v.calls);
        self.bytes = self.bytes.wrapping_add(v.bytes);
        self.done = self.done.wrapping_add(v.done);
        self.records = self.records.wrapping_add(v.records);
    }

    fn since(&self, b: &Self) -> Option<Self> {
        Some(AggVal {
            calls: self.calls.checked_sub(b.calls)?,
            bytes: self.bytes.checked_sub(b.bytes)?,
            done: self.done.checked_sub(b.done)?,
            records: self.records.checked_sub(b.records)?,
        })
    }

    /// Every field, not only `calls`: a program adds them one after another, so a read
    /// on another CPU can see a call counted whose bytes come only at the next read.
    fn is_zero(&self) -> bool {
        self.calls == 0 && self.bytes == 0 && self.done == 0 && self.records == 0
    }
}

impl Total for LatHist {
    const ZERO: Self = LatHist::ZERO;

    fn add(&mut self, h: &Self) {
        for (s, v) in self.buckets.iter_mut().zip(h.buckets.iter()) {
            *s = s.wrapping_add(*v);
        }
        self.sum_ns = self.sum_ns.wrapping_add(h.sum_ns);
    }

    fn since(&self, b: &Self) -> Option<Self> {
        let mut d = LatHist::ZERO;
        for ((d, now), before) in d.buckets.iter_mut().zip(&self.buckets).zip(&b.buckets) {
            *d = now.checked_sub(*before)?;
        }
        d.sum_ns = self.sum_ns.checked_sub(b.sum_ns)?;
        Some(d)
    }

    /// The sum too: it is added after the bucket (a torn read, as for [`AggVal`]).
    fn is_zero(&self) -> bool {
        self.sum_ns == 0 && self.buckets.iter().all(|n| *n == 0)
    }
}

#[derive(Debug)]
struct Seen<V> {
    total: V,
    idle_reads: u32,
}

/// The totals of the last read, per key.
#[derive(Debug)]
struct Tracked<K, V>(HashMap<K, Seen<V>>);

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq + Copy + Generational, V: Total> Tracked<K, V> {
    /// The non-zero changes of `now` (every key the map holds). Keys of generation
    /// `drain` go to `forget` (this was their last read; they stay tracked until a read
    /// finds them gone, so one the kernel would not delete is not counted twice). Says
    /// whether a key of generation `live` stayed unchanged for `idle_limit` reads.
    fn update(
        &mut self,
        now: Vec<(K, V)>,
        live: u8,
        drain: Option<u8>,
        idle_limit: u32,
        changed: &mut Vec<(K, V)>,
        forget: &mut Vec<K>,
    ) -> bool {
        let mut idle = false;
        let mut next = HashMap::with_capacity(now.len());
        for (k, total) in now {
            let (delta, idle_reads) = match self.0.get(&k) {
                Some(s) => {
                    let d = total.since(&s.total).unwrap_or(total);
                    let idle = if d.is_zero() { s.idle_reads + 1 } else { 0 };
                    (d, idle)
                }
                None => (total, 0),
            };
            if !delta.is_zero() {
                changed.push((k, delta));
            }
            if drain == Some(k.generation()) {
                forget.push(k);
            }
            idle |= k.generation() == live && idle_reads >= idle_limit;
            next.insert(k, Seen { total, idle_reads });
        }
        // Keys the map no longer holds are gone (deleted, or the program never re-made them).
        self.0 = next;
        idle
    }
}

/// What changed since the last read, as the kernel's keys and values, and what to do to
/// the kernel's maps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub calls: Vec<(AggKey, AggVal)>,
    pub latency: Vec<(LatKey, LatHist)>,
    /// Delete these (a generation nothing writes any more, read for the last time).
    pub forget: Forget,
    /// Switch the programs to this generation (then report it: [`Deltas::switched`]).
    pub switch_to: Option<u8>,
}

/// Turns successive reads of the kernel's totals into changes, and clears the maps of
/// idle keys without losing a call.
///
/// The programs write each key in a generation (`AGG_GEN`). Once a key of the live
/// generation stayed unchanged for the idle limit, the programs are switched to the
/// other generation; the old one is then written by nothing once the calls already in
/// flight are over, and at the next read (after an RCU grace period,
/// [`crate::attach::Tracer`]) its keys are read a last time and deleted. The live keys
/// start again from zero in the new generation, which the tracking sees as new keys.
/// Deleting single idle keys instead would race the kernel: a closed socket's address is
/// reused by the next connection, whose calls land on the key just found idle.
#[derive(Debug)]
pub struct Deltas {
    calls: Tracked<AggKey, AggVal>,
    latency: Tracked<LatKey, LatHist>,
    idle_limit: u32,
    /// The generation the programs write.
    live: u8,
    /// The generation they wrote before the last switch, until it is cleared.
    retiring: Option<u8>,
}

impl Default for Deltas {
    fn default() -> Self {
        Deltas::forgetting_after(FORGET_AFTER_IDLE_READS)
    }
}

impl Deltas {
    /// The maps are cleared once a key stayed unchanged for `idle_reads` reads (the
    /// default: [`FORGET_AFTER_IDLE_READS`]; tests clear sooner, to race the kernel more).
    pub fn forgetting_after(idle_reads: u32) -> Self {
        Deltas {
            calls: Tracked::default(),
            latency: Tracked::default(),
            idle_limit: idle_reads.max(1),
            live: 0,
            retiring: None,
        }
    }

    /// A generation the programs no longer write, whose keys the next read is the last
    /// of: the read must wait until no program started before the switch still runs.
    pub fn retiring(&self) -> Option<u8> {
        self.retiring
    }

    /// The changes since the last read (everything, at the first), the keys to delete,
    /// and whether to switch generations, with the retiring generation (if any) known to
    /// be written by nothing any more (the tests' shorthand).
    #[cfg(test)]
    pub fn update(&mut self, raw: RawAggregates) -> Changes {
        self.update_with(raw, true)
    }

    /// As [`Deltas::update`]; `retired` says whether the retiring generation is written by
    /// nothing any more (its grace period is over). If not, it is cleared at a later read.
    /// No switch in a read that clears or still waits for the old generation: the
    /// tracking must first see its keys gone.
    pub fn update_with(&mut self, raw: RawAggregates, retired: bool) -> Changes {
        let mut c = Changes::default();
        let waiting = self.retiring.is_some() && !retired;
        let drain = if waiting { None } else { self.retiring.take() };
        let (live, limit) = (self.live, self.idle_limit);
        let idle = self.calls.update(
            raw.calls,
            live,
            drain,
            limit,
            &mut c.calls,
            &mut c.forget.calls,
        ) | self.latency.update(
            raw.latency,
            live,
            drain,
            limit,
            &mut c.latency,
            &mut c.forget.latency,
        );
        if idle && drain.is_none() && !waiting {
            c.switch_to = Some(live ^ 1);
        }
        c
    }

    /// The programs now write generation `to` (after [`Changes::switch_to`]).
    pub fn switched(&mut self, to: u8) {
        if to != self.live {
            self.retiring = Some(self.live);
            self.live = to;
        }
    }
}

/// The classifiable form of a key's change: one call standing for all of them (None: a
/// probe this build does not know).
pub fn aggregate_of(key: &AggKey, d: &AggVal, ts_ns: u64) -> Option<Aggregate> {
    let probe = Probe::from_u8(key.probe)?;
    let f = key.facts;
    let has = |bit: u8| f & bit != 0;
    let event = TraceEvent {
        ts_ns,
        pid: key.pid,
        tid: key.tid,
        comm: Comm::from_kernel(&key.comm),
        process: None,
        probe,
        bytes: d.bytes,
        ret: has(facts::RET).then_some(d.done.min(i64::MAX as u64) as i64),
        latency_ns: None,
        sock: has(facts::SOCK).then_some(key.sock),
        flags: None,
        fds: None,
        parent: Probe::from_u8(key.parent),
        root: Probe::from_u8(key.root),
        head: None,
        records: has(facts::RECORDS).then_some(d.records.min(u32::MAX as u64) as u32),
        tls: has(facts::TLS).then_some(TlsWire {
            version: key.tls_version,
            cipher: key.tls_cipher,
        }),
    };
    Some(Aggregate {
        event,
        facts: f,
        calls: d.calls,
    })
}

/// The latency a histogram bucket stands for: the middle of `[2^(i-1), 2^i)` (so a
/// percentile read from it is within -25%/+50% of the true one), 1 ns for bucket 0.
pub fn bucket_value(i: usize) -> u64 {
    match i {
        0 | 1 => 1,
        i => 3u64 << (i - 2).min(61),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, Path, tests::ev};
    use ktls_trace_common::{COMM_LEN, LAT_BUCKETS, lat_bucket, msg};

    fn key(probe: Probe, tid: u32, facts: u8) -> AggKey {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"nginx"[..4].as_ref());
        AggKey {
            sock: 9,
            pid: 100,
            tid,
            tls_version: 0x0304,
            tls_cipher: 51,
            probe: probe as u8,
            parent: Probe::NONE,
            root: Probe::NONE,
            facts,
            comm,
            generation: 0,
            _pad: [0; 7],
        }
    }

    fn lat_key(probe: Probe) -> LatKey {
        LatKey {
            pid: 100,
            probe: probe as u8,
            generation: 0,
            _pad: [0; 2],
        }
    }

    fn val(calls: u64, done: u64) -> AggVal {
        AggVal {
            calls,
            bytes: done,
            done,
            records: calls,
        }
    }

    #[test]
    fn deltas_are_changes_since_the_last_read() {
        let mut d = Deltas::default();
        let k = key(Probe::TlsSwSendmsg, 100, facts::RET);
        let raw = |v: AggVal| RawAggregates {
            calls: vec![(k, v)],
            latency: vec![],
        };
        let c = d.update(raw(val(3, 300)));
        assert_eq!(c.calls, vec![(k, val(3, 300))], "the first read is all new");
        assert!(c.forget.calls.is_empty());
        let c = d.update(raw(val(5, 700)));
        assert_eq!(c.calls, vec![(k, val(2, 400))]);
        let c = d.update(raw(val(5, 700)));
        assert!(c.calls.is_empty(), "no change, nothing to classify");
        // Deleted and re-created by the kernel: counted from zero again.
        let c = d.update(raw(val(1, 10)));
        assert_eq!(c.calls, vec![(k, val(1, 10))]);
    }

    /// A program adds a call's fields one after another, so a read on another CPU can see
    /// the call counted and its bytes not yet: the bytes, read next time, are a change of
    /// their own, not an idle key (this lost 12 writes' bytes of 36,800 in the churn test
    /// on 5.10).
    #[test]
    fn bytes_that_come_a_read_after_their_call_are_not_lost() {
        let mut d = Deltas::forgetting_after(1);
        let k = key(Probe::TcpSendmsg, 100, facts::RET);
        let raw = |v: AggVal| RawAggregates {
            calls: vec![(k, v)],
            latency: vec![],
        };
        let torn = AggVal {
            calls: 1,
            bytes: 100,
            done: 0,
            records: 0,
        };
        assert_eq!(d.update(raw(torn)).calls, vec![(k, torn)]);
        let c = d.update(raw(val(1, 100)));
        let rest = AggVal {
            calls: 0,
            bytes: 0,
            done: 100,
            records: 1,
        };
        assert_eq!(c.calls, vec![(k, rest)]);
        assert_eq!(c.switch_to, None, "a key that moved is not idle");
        // The histogram's sum is added after its bucket: the same.
        let lk = lat_key(Probe::TcpSendmsg);
        let mut h = LatHist::ZERO;
        h.buckets[3] = 1;
        let lat = |h: LatHist| RawAggregates {
            calls: vec![],
            latency: vec![(lk, h)],
        };
        let mut d = Deltas::default();
        assert_eq!(d.update(lat(h)).latency, vec![(lk, h)]);
        let mut done = h;
        done.sum_ns = 5_000;
        let mut only_sum = LatHist::ZERO;
        only_sum.sum_ns = 5_000;
        assert_eq!(d.update(lat(done)).latency, vec![(lk, only_sum)]);
    }

    fn in_generation(mut k: AggKey, g: u8) -> AggKey {
        k.generation = g;
        k
    }

    #[test]
    fn an_idle_key_switches_generations_and_the_old_one_is_cleared_after_its_last_read() {
        let mut d = Deltas::default();
        let k = key(Probe::TcpSendmsg, 101, facts::RET);
        let lk = lat_key(Probe::DoSendfile);
        let mut h = LatHist::ZERO;
        h.add(5_000);
        h.add(5_000);
        let raw = RawAggregates {
            calls: vec![(k, val(1, 1))],
            latency: vec![(lk, h)],
        };
        let c = d.update(raw.clone());
        assert_eq!(c.latency, vec![(lk, h)]);
        for i in 1..FORGET_AFTER_IDLE_READS {
            let c = d.update(raw.clone());
            assert_eq!(c, Changes::default(), "read {i}");
        }
        let c = d.update(raw.clone());
        assert_eq!(
            c.switch_to,
            Some(1),
            "idle for {FORGET_AFTER_IDLE_READS} reads"
        );
        assert!(c.forget.is_empty(), "still written by the programs");
        assert_eq!(d.retiring(), None, "not switched until the tracer says so");
        d.switched(1);
        assert_eq!(d.retiring(), Some(0));
        // The programs wrote more to the old key before they saw the switch, and began
        // the new generation: both counted, then the old generation goes.
        let k1 = in_generation(k, 1);
        let c = d.update(RawAggregates {
            calls: vec![(k, val(3, 3)), (k1, val(1, 7))],
            latency: vec![(lk, h)],
        });
        assert_eq!(c.calls, vec![(k, val(2, 2)), (k1, val(1, 7))]);
        assert_eq!((c.forget.calls, c.forget.latency), (vec![k], vec![lk]));
        assert_eq!(c.switch_to, None, "no switch while clearing");
        assert_eq!(d.retiring(), None);
        // A key the kernel would not delete is not counted twice.
        let c = d.update(RawAggregates {
            calls: vec![(k, val(3, 3)), (k1, val(1, 7))],
            latency: vec![],
        });
        assert!(c.calls.is_empty(), "{c:?}");
        assert!(
            c.forget.is_empty(),
            "deleted with its generation the next time"
        );
    }

    #[test]
    fn the_old_generation_waits_for_its_grace_period() {
        let mut d = Deltas::forgetting_after(1);
        let k = key(Probe::TcpSendmsg, 101, facts::RET);
        let read = |calls: Vec<(AggKey, AggVal)>| RawAggregates {
            calls,
            latency: vec![],
        };
        d.update(read(vec![(k, val(5, 50))]));
        assert_eq!(d.update(read(vec![(k, val(5, 50))])).switch_to, Some(1));
        d.switched(1);
        // A program that started before the switch may still add to k: not cleared yet,
        // and no switch while waiting, however idle.
        let c = d.update_with(read(vec![(k, val(6, 60))]), false);
        assert_eq!(c.calls, vec![(k, val(1, 10))]);
        assert!(c.forget.is_empty());
        assert_eq!(c.switch_to, None);
        assert_eq!(d.retiring(), Some(0));
        let c = d.update_with(read(vec![(k, val(6, 60))]), true);
        assert!(c.calls.is_empty());
        assert_eq!(c.forget.calls, vec![k]);
        assert_eq!(d.retiring(), None);
    }

    #[test]
    fn a_generation_used_again_counts_its_keys_from_zero() {
        let mut d = Deltas::forgetting_after(1);
        let k = key(Probe::TcpSendmsg, 101, facts::RET);
        let k1 = in_generation(k, 1);
        let read = |calls: Vec<(AggKey, AggVal)>| RawAggregates {
            calls,
            latency: vec![],
        };
        d.update(read(vec![(k, val(5, 50))]));
        let c = d.update(read(vec![(k, val(5, 50))]));
        assert_eq!(c.switch_to, Some(1));
        d.switched(1);
        let c = d.update(read(vec![(k, val(5, 50)), (k1, val(2, 20))]));
        assert_eq!(c.forget.calls, vec![k]);
        // k deleted; k1 idle for one read: back to generation 0 (k's tracking is gone).
        let c = d.update(read(vec![(k1, val(2, 20))]));
        assert_eq!(c.switch_to, Some(0));
        d.switched(0);
        // The same key in generation 0 again, from zero: all of it is new, even though
        // it is larger than what the key held before it was deleted.
        let c = d.update(read(vec![(k1, val(2, 20)), (k, val(6, 60))]));
        assert_eq!(c.calls, vec![(k, val(6, 60))]);
        assert_eq!(c.forget.calls, vec![k1]);
    }

    #[test]
    fn an_aggregate_classifies_like_its_calls() {
        // Ten 2-byte writes into kernel TLS are alerts (control), not payload, however
        // their sum looks; ten calls of 1 byte are payload although they sum to 10.
        let mut c = Classifier::default();
        let alerts = aggregate_of(
            &key(
                Probe::TlsSwSendmsg,
                100,
                facts::RET | facts::SOCK | facts::TWO_BYTES,
            ),
            &val(10, 20),
            1,
        )
        .unwrap();
        let got = c.classify_facts(&alerts.event, alerts.facts, alerts.calls);
        assert_eq!((got.payload, got.control, got.calls), (None, 20, 10));
        let writes = aggregate_of(
            &key(
                Probe::TlsSwSendmsg,
                100,
                facts::RET | facts::SOCK | facts::FLAGS,
            ),
            &val(2, 2),
            1,
        )
        .unwrap();
        let got = c.classify_facts(&writes.event, writes.facts, writes.calls);
        assert_eq!(got.payload, Some((Path::KtlsWrite, 2)));
        // The splice flag decides, as for one event.
        let spliced = aggregate_of(
            &key(
                Probe::TlsSwSendmsg,
                100,
                facts::RET | facts::SOCK | facts::FLAGS | facts::SPLICE | facts::RECORDS,
            ),
            &val(4, 65_536),
            1,
        )
        .unwrap();
        let got = c.classify_facts(&spliced.event, spliced.facts, spliced.calls);
        assert_eq!(got.payload, Some((Path::KtlsSendfile, 65_536)));
        assert_eq!(got.records, Some(4));
        // A head that looked like a TLS record: user-space TLS.
        let tls = aggregate_of(
            &key(Probe::TcpSendmsg, 100, facts::RET | facts::TLS_HEAD),
            &val(3, 3_000),
            1,
        )
        .unwrap();
        let got = c.classify_facts(&tls.event, tls.facts, tls.calls);
        assert_eq!(got.payload, Some((Path::UserspaceTls, 3_000)));
    }

    #[test]
    fn event_facts_match_the_rules() {
        let mut e = ev(Probe::TlsSwSendmsg, 1, 2, Some(9));
        e.bytes = 2;
        assert_ne!(e.facts() & facts::TWO_BYTES, 0);
        e.bytes = 3;
        assert_eq!(
            e.facts() & facts::TWO_BYTES,
            0,
            "asked 3, sent 2: not an alert"
        );
        e.flags = Some(msg::MSG_SPLICE_PAGES);
        assert_eq!(
            e.facts() & (facts::FLAGS | facts::SPLICE),
            facts::FLAGS | facts::SPLICE
        );
        e.head = Some([0x17, 3, 3, 0, 10, 0, 0, 0]);
        assert_ne!(e.facts() & facts::TLS_HEAD, 0);
    }

    #[test]
    fn bucket_values_fall_inside_their_buckets() {
        for ns in [1u64, 2, 3, 1_000, 65_535, 1 << 30, (1 << 38) - 1] {
            let b = lat_bucket(ns);
            let v = bucket_value(b);
            assert_eq!(lat_bucket(v), b, "{ns} ns -> bucket {b} -> {v}");
        }
        assert_eq!(lat_bucket(0), 0);
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
    }
}
