//! Detaching every probe at once when the tracer ends.
//!
//! Closing a kprobe's or a tracepoint's perf event waits for RCU grace periods inside the
//! kernel: `perf_trace_event_unreg` calls `tracepoint_synchronize_unregister`, and
//! `unregister_kprobe` calls `synchronize_rcu` (kernel/trace/trace_event_perf.c,
//! kernel/kprobes.c). aya detaches a program's links when the program is dropped, one
//! after another, so a tracer with 12 programs waited about a dozen grace periods in a
//! row before its process could exit. Closed from a thread each, the waits overlap: one
//! grace period ends them all. The kernel work is the same; only the waiting is shared.

use aya::{
    Ebpf,
    programs::{
        Program,
        fentry::{FEntryLink, FEntryLinkId},
        fexit::{FExitLink, FExitLinkId},
        kprobe::{KProbeLink, KProbeLinkId},
        trace_point::{TracePointLink, TracePointLinkId},
    },
};

/// What `attach` returned for one program.
#[derive(Debug)]
pub enum LinkId {
    KProbe(KProbeLinkId),
    TracePoint(TracePointLinkId),
    FEntry(FEntryLinkId),
    FExit(FExitLinkId),
}

/// A link of a named program of the object.
#[derive(Debug)]
pub struct LinkRef {
    pub program: String,
    pub id: LinkId,
}

/// A link taken out of its program: dropping it detaches it.
enum Owned {
    // Only dropped: their `Drop` is the point.
    #[expect(dead_code)]
    KProbe(KProbeLink),
    #[expect(dead_code)]
    TracePoint(TracePointLink),
    #[expect(dead_code)]
    FEntry(FEntryLink),
    #[expect(dead_code)]
    FExit(FExitLink),
}

/// Takes the link out of its program (None if the program or link is gone: unloaded,
/// detached already; aya then has nothing left to detach for it either).
fn take(ebpf: &mut Ebpf, link: LinkRef) -> Option<Owned> {
    let taken = match (ebpf.program_mut(&link.program)?, link.id) {
        (Program::KProbe(p), LinkId::KProbe(id)) => p.take_link(id).map(Owned::KProbe),
        (Program::TracePoint(p), LinkId::TracePoint(id)) => p.take_link(id).map(Owned::TracePoint),
        (Program::FEntry(p), LinkId::FEntry(id)) => p.take_link(id).map(Owned::FEntry),
        (Program::FExit(p), LinkId::FExit(id)) => p.take_link(id).map(Owned::FExit),
        _ => return None,
    };
    taken
        .map_err(|e| log::debug!("taking the link of {}: {e}", link.program))
        .ok()
}

/// Detaches these links, each from a thread of its own, and returns when all are
/// detached. Where a thread cannot be started, that link is detached on this one.
pub fn detach_all(ebpf: &mut Ebpf, links: Vec<LinkRef>) {
    let owned: Vec<Owned> = links.into_iter().filter_map(|l| take(ebpf, l)).collect();
    std::thread::scope(|scope| {
        for link in owned {
            // On failure the closure, and with it the link, is dropped right here.
            let _ = std::thread::Builder::new()
                .name("ktls-detach".into())
                .spawn_scoped(scope, move || drop(link));
        }
    });
}
