//! The userspace hot path, per event: ring-buffer record -> `event::decode` ->
//! `classify::Classifier` -> `Summary::add` (what `trace` counts) / `Model::ingest` (what
//! `top` aggregates) / the JSON line `trace --json` writes.
//!
//! Run with `cargo bench -p ktls-trace --bench pipeline`; docs/performance.md relates the
//! events/s reported here to the event rates the kernel produced in `cargo xtask bench`.
//!
//! The input is a synthetic stream shaped like kernel TLS + sendfile on 6.12, as the eBPF
//! programs report it: per 64 KiB splice, four TCP pushes (`tcp_sendmsg_locked`, nested in
//! `tls_sw_sendmsg` inside `do_sendfile`), then the `tls_sw_sendmsg` (with the 4 records it
//! closed) and the `do_sendfile` themselves: 6 records of 96 bytes per splice, spread over
//! four connections of two processes.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ktls_trace::{
    Counts, Model, Printer, ProcessNames, Summary,
    classify::{Classifier, Rules},
    event::{Comm, TraceEvent, decode},
    read_record,
};
use ktls_trace_common::{COMM_LEN, EVENT_SIZE, Event, HEAD_LEN, Probe, has, msg, sock_id};

/// Splices in one batch: 6 events each. About 2,700 events are what one ring-buffer
/// wake-up (256 KiB) delivers under load.
const SPLICES: usize = 450;
const SPLICE: u64 = 65_536;
const RECORD: u64 = 16_384;

fn comm(name: &[u8]) -> [u8; COMM_LEN] {
    let mut c = [0u8; COMM_LEN];
    c[..name.len()].copy_from_slice(name);
    c
}

/// One completed call of `pid` on `sock` (0: no socket), nested `inside` (parent, root).
fn record(ts_ns: u64, pid: u32, sock: u64, probe: Probe, inside: Option<(Probe, Probe)>) -> Event {
    let (parent, root) = inside.map_or((Probe::NONE, Probe::NONE), |(p, r)| (p as u8, r as u8));
    Event {
        ts_ns,
        latency_ns: 0,
        bytes: 0,
        ret: 0,
        sock,
        pid,
        tid: pid + 1,
        flags: 0,
        fd_out: 0,
        fd_in: 0,
        records: 0,
        tls_version: 0,
        tls_cipher: 0,
        probe: probe as u8,
        parent,
        root,
        has: has::RET | has::LATENCY | if sock != 0 { has::SOCK } else { 0 },
        comm: comm(b"ktls-load-srv"),
        head: [0; HEAD_LEN],
    }
}

/// Sets size, return value (= size), flags and latency.
fn with(mut e: Event, bytes: u64, flags: Option<u32>, latency_ns: u64) -> Event {
    e.bytes = bytes;
    e.ret = bytes as i64;
    e.latency_ns = latency_ns;
    if let Some(f) = flags {
        e.flags = f;
        e.has |= has::FLAGS;
    }
    e
}

/// The synthetic stream, as raw ring-buffer records.
fn records() -> Vec<[u8; EVENT_SIZE]> {
    let mut out = Vec::with_capacity(SPLICES * 6);
    let mut ts = 1_000_000_000u64;
    let in_tls = Some((Probe::TlsSwSendmsg, Probe::DoSendfile));
    for i in 0..SPLICES {
        let pid = 400 + (i % 2) as u32;
        let sock = sock_id(0xffff_8880_1234_0000 + (i % 4) as u64 * 0x800, 0x5eed);
        let mut push = |e: Event| {
            // SAFETY: Event is plain old data without padding (asserted in
            // ktls-trace-common), exactly EVENT_SIZE bytes.
            let bytes: [u8; EVENT_SIZE] = unsafe { std::mem::transmute(e) };
            out.push(bytes);
        };
        for _ in 0..SPLICE / RECORD {
            ts += 5_000;
            let tcp = record(ts, pid, sock, Probe::TcpSendmsgLocked, in_tls);
            push(with(tcp, RECORD + 22, Some(msg::MSG_SPLICE_PAGES), 1_500));
        }
        ts += 1_000;
        let sf = Some((Probe::DoSendfile, Probe::DoSendfile));
        let mut tls = record(ts, pid, sock, Probe::TlsSwSendmsg, sf);
        tls.records = (SPLICE / RECORD) as u32;
        tls.tls_version = 0x0304;
        tls.tls_cipher = 51;
        tls.has |= has::RECORDS | has::TLS;
        let flags = msg::MSG_SPLICE_PAGES | msg::MSG_MORE;
        push(with(
            tls,
            SPLICE,
            Some(flags),
            25_000 + (i as u64 % 7) * 1_000,
        ));
        ts += 1_000;
        let call = record(ts, pid, 0, Probe::DoSendfile, None);
        push(with(call, SPLICE, None, 30_000 + (i as u64 % 11) * 1_000));
    }
    out
}

/// Takes the output and drops it, as /dev/null does (the bytes are looked at, so the
/// writing cannot be optimized away).
struct Discard;

impl io::Write for Discard {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(black_box(buf).len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decoded(raw: &[[u8; EVENT_SIZE]]) -> Vec<TraceEvent> {
    raw.iter()
        .map(|r| decode(r).expect("synthetic records decode"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let raw = records();
    let events = decoded(&raw);
    let n = raw.len() as u64;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(n));

    g.bench_function("decode", |b| {
        b.iter(|| {
            for r in &raw {
                black_box(decode(black_box(r)).ok());
            }
        })
    });

    g.bench_function("classify_summary", |b| {
        let mut s = Summary::default();
        let mut k = Classifier::new(Rules::default());
        b.iter(|| {
            for e in &events {
                s.add(black_box(e), &k.classify(e));
            }
        });
        black_box(s.classified.ciphertext);
    });

    // A fresh model per batch would measure its first-event allocations over and over;
    // top keeps one model and closes a window once a second, so one model is reused and
    // a window is closed after every batch (about one interval's worth at 4K events/s).
    g.bench_function("classify_model", |b| {
        let mut m = Model::new(Rules::default(), 0);
        let mut now = 0u64;
        b.iter(|| {
            for e in &events {
                m.ingest(black_box(e));
            }
            now += 1_000_000_000;
            black_box(m.close_window(now).events);
        })
    });

    // What `top` does per record: decode, then ingest (the window is closed per batch).
    g.bench_function("top_path", |b| {
        let mut m = Model::new(Rules::default(), 0);
        let mut now = 0u64;
        let mut batch = Vec::with_capacity(raw.len());
        b.iter(|| {
            batch.extend(raw.iter().filter_map(|r| decode(black_box(r)).ok()));
            m.ingest_all(&batch);
            batch.clear();
            now += 1_000_000_000;
            black_box(m.close_window(now).events);
        })
    });

    // What `trace --json` does per ring-buffer record, with the code it runs: the session
    // decodes the record, names its process and collects the wake-up's batch (a fresh
    // vector each time, allocated as large as the last batch, as the session hands it
    // over); the printer classifies and counts
    // each event into the summary and writes its JSON line. The output is a writer that
    // discards the bytes, standing in for the pipe to /dev/null: the write syscalls are not
    // measured, everything up to the bytes handed to them is.
    g.bench_function("trace_json_path", |b| {
        let mut s = Summary::default();
        let mut k = Classifier::new(Rules::default());
        let mut counts = Counts::default();
        let mut names = ProcessNames::default();
        let mut printer = Printer::new(true);
        let mut batch_len = 0;
        b.iter(|| {
            let mut batch = Vec::with_capacity(batch_len);
            for r in &raw {
                read_record(
                    black_box(r),
                    0,
                    &mut counts,
                    &mut names,
                    |_| Some(Comm::new("ktls-load")),
                    &mut batch,
                );
            }
            batch_len = batch.len();
            black_box(printer.emit_to(&batch, &mut s, &mut k, &mut Discard));
        });
        black_box((s.classified.ciphertext, counts.events));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
