//! ktls-trace: how a Linux server's bytes travel the kernel TLS transmit path.
//!
//! Data flows one way, one module each:
//! probe ([`tracer`], eBPF in `ktls-trace-ebpf`) -> ring buffer -> decode ([`event`]) ->
//! aggregate ([`aggregate`]) -> view (`trace_cmd`, `doctor`).
//! [`kernel`] and [`plan`] decide what to attach on the running kernel.

pub mod aggregate;
pub mod btf;
pub mod cli;
pub mod doctor;
pub mod event;
pub mod kernel;
pub mod load;
pub mod plan;
pub mod procs;
pub mod signals;
pub mod sockdiag;
pub mod top;
pub mod trace_cmd;
pub mod tracer;
pub mod verify;
