//! A deterministic workload for the integration tests: one TCP connection over loopback,
//! sending a known number of bytes through one path, with an in-process receiver that
//! counts what arrives on the wire.
//!
//! usage: ktls-workload MODE BYTES [--no-wait]
//!   MODE: plain-sendfile | ktls-sendfile | ktls-write | plain-write | userspace-tls |
//!         parallel-write | small-writes
//!   (userspace-tls: plain TCP, the bytes framed as TLS 1.3 application-data records
//!   `17 03 03 len` by this program, one write() per record, as a user-space TLS library
//!   sends them; the payload is not encrypted)
//!
//! small-writes: plain TCP, one write() per 64 bytes: the most calls per second a process
//! can make, each one event (for the tests that must overflow a ring buffer however slow
//! the machine is).
//!
//! parallel-write: 32 connections with tiny send buffers; 32 threads each write BYTES in
//! one write() that blocks until its receiver starts reading (3 s after "go"), so 32 calls
//! are inside tcp_sendmsg at once: more than a kretprobe's instances on a small machine
//! (10, or twice the CPUs). Once every big write is done, each thread writes one more
//! byte, one thread at a time. The report adds "calls": the write() calls made.
//!
//! Protocol (so a tracer can attach first): prints `ready PID`, waits for a line on
//! stdin, sends, then prints one JSON line {"mode","sent","wire_bytes","records"} and exits.
//! kTLS is set up with fixed test keys (TLS 1.3, AES-GCM-128): no handshake is needed to
//! exercise the kernel's transmit path, and the receiver reads the raw records.

use std::{
    io::{BufRead, Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use anyhow::{Context, bail};

const SOL_TCP: libc::c_int = 6;
const TCP_ULP: libc::c_int = 31;
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;
/// The size of one write() in mode small-writes.
const SMALL_WRITE: usize = 64;

/// struct tls12_crypto_info_aes_gcm_128 (include/uapi/linux/tls.h).
#[repr(C)]
struct CryptoInfoAesGcm128 {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

fn enable_ktls_tx(sock: &TcpStream) -> anyhow::Result<()> {
    let fd = sock.as_raw_fd();
    // SAFETY: fd is a connected TCP socket; the option value is a valid byte string.
    let rc = unsafe { libc::setsockopt(fd, SOL_TCP, TCP_ULP, b"tls".as_ptr().cast(), 3) };
    if rc != 0 {
        bail!(
            "setsockopt(TCP_ULP, \"tls\"): {} (is the tls module loaded?)",
            std::io::Error::last_os_error()
        );
    }
    let info = CryptoInfoAesGcm128 {
        version: TLS_1_3_VERSION,
        cipher_type: TLS_CIPHER_AES_GCM_128,
        iv: [7; 8],
        key: [0x42; 16],
        salt: [1, 2, 3, 4],
        rec_seq: [0; 8],
    };
    // SAFETY: `info` is a properly laid out tls12_crypto_info_aes_gcm_128.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            TLS_TX,
            (&info as *const CryptoInfoAesGcm128).cast(),
            std::mem::size_of::<CryptoInfoAesGcm128>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("setsockopt(TLS_TX): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads until EOF; returns (bytes, TLS records) where records are counted by walking
/// the 5-byte record headers when `tls` is set.
fn receive(mut s: TcpStream, tls: bool) -> anyhow::Result<(u64, u64)> {
    let mut all = Vec::new();
    s.read_to_end(&mut all).context("receiving")?;
    let mut records = 0;
    if tls {
        let mut p = 0usize;
        while p + 5 <= all.len() {
            if all[p] != 0x17 || all[p + 1] != 0x03 || all[p + 2] != 0x03 {
                bail!("not a TLS application-data record at offset {p}");
            }
            let len = u16::from_be_bytes([all[p + 3], all[p + 4]]) as usize;
            p += 5 + len;
            records += 1;
        }
        if p != all.len() {
            bail!("truncated TLS record at the end of the stream");
        }
    }
    Ok((all.len() as u64, records))
}

const PARALLEL_WRITERS: usize = 32;

/// A TCP pair over loopback with a small send buffer: a write bigger than what the
/// receiver queues (its default receive buffer) blocks until it reads.
fn small_buffer_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_send_buffer_size(4096)?;
    sock.connect(&listener.local_addr()?.into())?;
    let (peer, _) = listener.accept()?;
    Ok((sock.into(), peer))
}

/// One write() per call counted; returns the calls made.
fn write_counted(mut s: &TcpStream, mut buf: &[u8]) -> anyhow::Result<u64> {
    let mut calls = 0;
    while !buf.is_empty() {
        calls += 1;
        let n = s.write(buf).context("write")?;
        buf = &buf[n..];
    }
    Ok(calls)
}

/// See the module text: (bytes sent, bytes received, write() calls).
fn parallel_write(bytes: u64, wait: bool) -> anyhow::Result<(u64, u64, u64)> {
    let mut pairs = Vec::new();
    for _ in 0..PARALLEL_WRITERS {
        pairs.push(small_buffer_pair()?);
    }
    println!("ready {}", std::process::id());
    std::io::stdout().flush()?;
    if wait {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }
    let data = std::sync::Arc::new(vec![0x5a_u8; bytes as usize]);
    let big_done = std::sync::Arc::new(std::sync::Barrier::new(PARALLEL_WRITERS));
    let one_at_a_time = std::sync::Arc::new(std::sync::Mutex::new(()));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for (sock, mut peer) in pairs {
        let (data, big_done, one_at_a_time) =
            (data.clone(), big_done.clone(), one_at_a_time.clone());
        writers.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut calls = write_counted(&sock, &data)?;
            big_done.wait();
            let _turn = one_at_a_time
                .lock()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))?;
            calls += write_counted(&sock, b"!")?;
            Ok(calls)
        }));
        readers.push(std::thread::spawn(move || -> anyhow::Result<u64> {
            std::thread::sleep(std::time::Duration::from_secs(3));
            let mut all = Vec::new();
            peer.read_to_end(&mut all).context("receiving")?;
            Ok(all.len() as u64)
        }));
    }
    let mut calls = 0;
    for w in writers {
        calls += w
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    // The writers' sockets are closed when their threads end: the readers see EOF.
    let mut received = 0;
    for r in readers {
        received += r
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    }
    Ok(((bytes + 1) * PARALLEL_WRITERS as u64, received, calls))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, bytes) = match (args.get(1), args.get(2).and_then(|b| b.parse::<u64>().ok())) {
        (Some(m), Some(b)) => (m.clone(), b),
        _ => bail!(
            "usage: ktls-workload plain-sendfile|ktls-sendfile|ktls-write|plain-write|userspace-tls|parallel-write|small-writes BYTES [--no-wait]"
        ),
    };
    let wait = !args.iter().any(|a| a == "--no-wait");
    if mode == "parallel-write" {
        let (sent, wire, calls) = parallel_write(bytes, wait)?;
        println!(
            "{{\"mode\":\"{mode}\",\"sent\":{sent},\"wire_bytes\":{wire},\"records\":0,\"calls\":{calls}}}"
        );
        return Ok(());
    }
    let tls = mode.starts_with("ktls");
    let userspace_tls = mode == "userspace-tls";
    let sendfile = mode.ends_with("sendfile");

    // The file to send, with a recognisable pattern.
    let dir = std::env::temp_dir().join(format!("ktls-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("payload");
    // Built by copying one period of the pattern: a byte-by-byte loop of a debug build
    // takes seconds for 8 MB in the emulator, and a snapshot between two runs saw nothing.
    let period: Vec<u8> = (0..251u32).map(|i| i as u8).collect();
    let mut data = Vec::with_capacity(bytes as usize);
    while (data.len() as u64) < bytes {
        let n = (bytes as usize - data.len()).min(period.len());
        data.extend_from_slice(&period[..n]);
    }
    std::fs::write(&path, &data)?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let (s, _) = listener.accept()?;
        receive(s, tls || userspace_tls)
    });
    let sock = TcpStream::connect(addr)?;
    if tls {
        enable_ktls_tx(&sock)?;
    }

    println!("ready {}", std::process::id());
    std::io::stdout().flush()?;
    if wait {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
    }

    let mut sent = 0u64;
    if sendfile {
        let file = std::fs::File::open(&path)?;
        let mut off: libc::off_t = 0;
        while sent < bytes {
            // SAFETY: both fds are open for the duration of the call; `off` is valid.
            let n = unsafe {
                libc::sendfile(
                    sock.as_raw_fd(),
                    file.as_raw_fd(),
                    &mut off,
                    (bytes - sent) as usize,
                )
            };
            if n < 0 {
                bail!("sendfile: {}", std::io::Error::last_os_error());
            }
            if n == 0 {
                break;
            }
            sent += n as u64;
        }
    } else if userspace_tls {
        let mut s = &sock;
        for chunk in data.chunks(1 << 14) {
            let mut record = vec![0x17, 0x03, 0x03];
            record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            record.extend_from_slice(chunk);
            s.write_all(&record)?;
        }
        sent = bytes;
    } else if mode == "small-writes" {
        let mut s = &sock;
        for chunk in data.chunks(SMALL_WRITE) {
            s.write_all(chunk)?;
        }
        sent = bytes;
    } else {
        let mut s = &sock;
        s.write_all(&data)?;
        sent = bytes;
    }
    drop(sock);
    let (wire, records) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
    let _ = std::fs::remove_dir_all(&dir);
    println!("{{\"mode\":\"{mode}\",\"sent\":{sent},\"wire_bytes\":{wire},\"records\":{records}}}");
    Ok(())
}
