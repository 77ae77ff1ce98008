//! Reading the in-kernel aggregates (aggregate mode): the `AGG` totals per key and the
//! `LAT` histograms, summed over CPUs. What they mean, and what changed since the last
//! read, is for [`crate::aggregate`]; this is only the kernel interface.

use aya::{
    Pod,
    maps::{MapError, PerCpuHashMap},
};
use ktls_trace_common::{AggKey, AggVal, LAT_BUCKETS, LatHist, LatKey, maps};

use super::Tracer;

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
        for item in agg.iter() {
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
        for item in lat.iter() {
            let Ok((k, per_cpu)) = item else { continue };
            let mut sum = [0u64; LAT_BUCKETS];
            for h in per_cpu.iter() {
                for (s, v) in sum.iter_mut().zip(h.0.iter()) {
                    *s = s.wrapping_add(*v);
                }
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
        if let Some(map) = self.ebpf.map_mut(maps::AGG)
            && let Ok(mut m) = PerCpuHashMap::<_, PodAggKey, PodAggVal>::try_from(map)
        {
            for k in calls {
                let _ = m.remove(&PodAggKey(*k));
            }
        }
        if let Some(map) = self.ebpf.map_mut(maps::LAT)
            && let Ok(mut m) = PerCpuHashMap::<_, PodLatKey, PodLatHist>::try_from(map)
        {
            for k in latency {
                let _ = m.remove(&PodLatKey(*k));
            }
        }
    }
}
