//! Reading the in-kernel aggregates (aggregate mode): the `AGG` totals per key and the
//! `LAT` histograms, summed over CPUs. What they mean, and what changed since the last
//! read, is for [`crate::aggregate`]; this is only the kernel interface.

use aya::{
    Pod,
    maps::{MapError, PerCpuHashMap},
};
use ktls_trace_common::{AggKey, AggVal, LatHist, LatKey, maps};

use super::{Tracer, unpreempted::Stretches};

/// [`AggKey`] as an aya map key.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodAggKey(AggKey);
// SAFETY: AggKey is repr(C) integers and a byte array without padding (size asserted in
// ktls-trace-common), so any bytes are a valid value.
unsafe impl Pod for PodAggKey {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodAggVal(AggVal);
// SAFETY: as for PodAggKey: four u64s.
unsafe impl Pod for PodAggVal {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodLatKey(LatKey);
// SAFETY: as for PodAggKey: a u32 and four bytes.
unsafe impl Pod for PodLatKey {}

#[repr(transparent)]
#[derive(Clone, Copy)]
struct PodLatHist(LatHist);
// SAFETY: an array of u64s.
unsafe impl Pod for PodLatHist {}

/// Why the aggregates could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("the eBPF object has no {0} map")]
    NoMap(&'static str),
    #[error("reading the {0} map failed: {1}")]
    Read(&'static str, MapError),
}

/// Everything the aggregate maps hold now, summed over CPUs (totals since each key was
/// created).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RawAggregates {
    pub calls: Vec<(AggKey, AggVal)>,
    pub latency: Vec<(LatKey, LatHist)>,
}

fn add_val(sum: &mut AggVal, v: &AggVal) {
    sum.calls = sum.calls.wrapping_add(v.calls);
    sum.bytes = sum.bytes.wrapping_add(v.bytes);
    sum.done = sum.done.wrapping_add(v.done);
    sum.records = sum.records.wrapping_add(v.records);
}

impl Tracer {
    /// Reads both aggregate maps (one lookup per key: a few hundred keys on a busy
    /// server, read once per interval).
    pub fn read_aggregates(&self) -> Result<RawAggregates, AggregateError> {
        let mut out = RawAggregates::default();
        let map = self
            .ebpf
            .map(maps::AGG)
            .ok_or(AggregateError::NoMap(maps::AGG))?;
        let agg = PerCpuHashMap::<_, PodAggKey, PodAggVal>::try_from(map)
            .map_err(|e| AggregateError::Read(maps::AGG, e))?;
        // As real-time stretches: a reader preempted inside a lookup would blind the
        // kprobes on its CPU (attach/unpreempted.rs).
        let mut stretches = Stretches::new();
        let mut items = agg.iter();
        loop {
            stretches.step();
            let Some(item) = items.next() else { break };
            // A key deleted between listing and lookup is simply gone: skip it.
            let Ok((k, per_cpu)) = item else { continue };
            let mut sum = AggVal::default();
            for v in per_cpu.iter() {
                add_val(&mut sum, &v.0);
            }
            out.calls.push((k.0, sum));
        }
        let map = self
            .ebpf
            .map(maps::LAT)
            .ok_or(AggregateError::NoMap(maps::LAT))?;
        let lat = PerCpuHashMap::<_, PodLatKey, PodLatHist>::try_from(map)
            .map_err(|e| AggregateError::Read(maps::LAT, e))?;
        let mut items = lat.iter();
        loop {
            stretches.step();
            let Some(item) = items.next() else { break };
            let Ok((k, per_cpu)) = item else { continue };
            let mut sum = LatHist::ZERO;
            for h in per_cpu.iter() {
                for (s, v) in sum.buckets.iter_mut().zip(h.0.buckets.iter()) {
                    *s = s.wrapping_add(*v);
                }
                sum.sum_ns = sum.sum_ns.wrapping_add(h.0.sum_ns);
            }
            out.latency.push((k.0, sum));
        }
        Ok(out)
    }

    /// Deletes keys that stayed idle, so that the maps hold the live sockets and threads
    /// only. A call that lands between the last read of a key and its deletion is lost;
    /// keys are only deleted after many idle reads, so that needs a socket idle for that
    /// long to send in that instant. Failures are ignored: the key is tried again.
    pub fn forget_aggregates(&mut self, calls: &[AggKey], latency: &[LatKey]) {
        let mut stretches = Stretches::new();
        if let Some(map) = self.ebpf.map_mut(maps::AGG)
            && let Ok(mut m) = PerCpuHashMap::<_, PodAggKey, PodAggVal>::try_from(map)
        {
            for k in calls {
                stretches.step();
                let _ = m.remove(&PodAggKey(*k));
            }
        }
        if let Some(map) = self.ebpf.map_mut(maps::LAT)
            && let Ok(mut m) = PerCpuHashMap::<_, PodLatKey, PodLatHist>::try_from(map)
        {
            for k in latency {
                stretches.step();
                let _ = m.remove(&PodLatKey(*k));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::{Duration, Instant},
    };

    use super::*;
    use crate::{
        attach::{Losses, TraceOptions},
        kernel::KernelFacts,
        plan::BackendChoice,
    };

    /// Plain TCP sends on loopback until `stop`: every write is a `tcp_sendmsg` call.
    fn sender(stop: Arc<AtomicBool>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let mut out = TcpStream::connect(l.local_addr()?)?;
        let (mut sink, _) = l.accept()?;
        let s2 = stop.clone();
        let w = std::thread::spawn(move || {
            let buf = [7u8; 4096];
            while !s2.load(Ordering::Relaxed) {
                if out.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let r = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if matches!(sink.read(&mut buf), Ok(0) | Err(_)) {
                    break;
                }
            }
        });
        Ok(vec![w, r])
    }

    /// Reading the maps continuously while a thread sends loses none of its calls: a
    /// reader preempted inside a map lookup would blind the kprobes on its CPU
    /// (attach/unpreempted.rs). Before the reads ran as real-time stretches, 7.3.4 lost
    /// 7 of its `tcp_sendmsg` calls here, and none in the quiet half. Kernels before 6.7
    /// do not count such misses of kprobe programs, so this can only fail from 6.7 on.
    #[test]
    #[ignore = "needs kprobes: runs in the QEMU guests (cargo xtask vm-test)"]
    fn reading_the_maps_makes_the_kernel_skip_no_calls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        let facts = KernelFacts::probe();
        if facts.version.is_some_and(|v| v < (6, 7)) {
            crate::test_util::skip(
                "reading_the_maps_makes_the_kernel_skip_no_calls",
                "kernels before 6.7 do not count the calls a kprobe program misses",
            );
            return;
        }
        let opts = TraceOptions {
            backend: BackendChoice::Kprobe,
            aggregate: true,
            ..TraceOptions::default()
        };
        let tracer = Tracer::start(facts, &opts).expect("tracer");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = sender(stop.clone()).expect("loopback pair");
        let quiet = Instant::now();
        std::thread::sleep(Duration::from_secs(10));
        let before = tracer.losses();
        let mut reads = 0u64;
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_secs(10) {
            let _ = tracer.read_aggregates().expect("read");
            reads += 1;
        }
        let after = tracer.losses();
        stop.store(true, Ordering::Relaxed);
        drop(tracer);
        for t in threads {
            let _ = t.join();
        }
        let raw = format!(
            "quiet {:?}: {:?}\nreading ({reads} reads in {:?}): {:?}",
            busy.duration_since(quiet),
            before,
            busy.elapsed(),
            after
        );
        assert_eq!(after.entries_skipped(), before.entries_skipped(), "{raw}");
        assert_eq!(after, Losses::default(), "{raw}");
    }
}
