//! Kernel TLS facts per TCP socket from sock_diag (netlink `NETLINK_SOCK_DIAG`, the
//! interface `ss -tni` uses): an `inet_diag` dump with the `INET_DIAG_INFO` extension makes
//! the kernel add `INET_DIAG_ULP_INFO` to sockets with an upper-layer protocol; for "tls"
//! it nests `TLS_INFO_VERSION`, `TLS_INFO_CIPHER`, `TLS_INFO_TXCONF`/`RXCONF` (SW, HW, ...).
//!
//! The kernel only adds ULP information for callers with `CAP_NET_ADMIN`; without it
//! sockets still come back, without TLS details. Parsing is pure ([`parse_dump`]) and
//! unit-tested with byte fixtures; [`dump_tcp`] does the I/O.

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

use ktls_trace_common::SockInfo;

use crate::tls::{Cipher, TlsVersion};

// include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h, tls.h
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_V2_LEN: usize = 56;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
/// `INET_DIAG_ULP_INFO` (enum position 19 in inet_diag.h).
pub const INET_DIAG_ULP_INFO: u16 = 19;
pub const INET_ULP_INFO_NAME: u16 = 1;
pub const INET_ULP_INFO_TLS: u16 = 2;
pub const TLS_INFO_VERSION: u16 = 1;
pub const TLS_INFO_CIPHER: u16 = 2;
pub const TLS_INFO_TXCONF: u16 = 3;
pub const TLS_INFO_RXCONF: u16 = 4;
pub const TLS_INFO_ZC_RO_TX: u16 = 5;
pub const TLS_INFO_RX_NO_PAD: u16 = 6;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER` are flag bits on top of the attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const TCP_LISTEN: u32 = 10;
const TCP_TIME_WAIT: u32 = 6;

/// Why sock_diag could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("cannot open a sock_diag netlink socket: {0}")]
    Socket(io::Error),
    #[error("sending the sock_diag request failed: {0}")]
    Send(io::Error),
    #[error("reading the sock_diag answer failed: {0}")]
    Recv(io::Error),
    #[error("the kernel answered the sock_diag request with an error: {0}")]
    Kernel(io::Error),
    #[error("malformed sock_diag message: {0}")]
    Malformed(&'static str),
}

/// `TLS_CONF_*`: how kernel TLS handles one direction of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsConf {
    /// `TLS_CONF_BASE`: the ULP is installed, no keys yet.
    Base,
    /// `TLS_CONF_SW`: software crypto.
    Sw,
    /// `TLS_CONF_HW`: NIC offload (packet-based).
    Hw,
    /// `TLS_CONF_HW_RECORD`: NIC offload (record-based, TOE-like).
    HwRecord,
    Other(u16),
}

impl TlsConf {
    pub fn from_u16(v: u16) -> TlsConf {
        match v {
            1 => TlsConf::Base,
            2 => TlsConf::Sw,
            3 => TlsConf::Hw,
            4 => TlsConf::HwRecord,
            o => TlsConf::Other(o),
        }
    }

    pub fn name(self) -> String {
        match self {
            TlsConf::Base => "none".into(),
            TlsConf::Sw => "SW".into(),
            TlsConf::Hw => "HW".into(),
            TlsConf::HwRecord => "HW-record".into(),
            TlsConf::Other(v) => format!("conf {v}"),
        }
    }
}

/// What the kernel says about a kernel TLS socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// 0x0303 = TLS 1.2, 0x0304 = TLS 1.3.
    pub version: Option<u16>,
    /// `TLS_CIPHER_*` (51 = AES-GCM-128, ...).
    pub cipher: Option<u16>,
    pub tx: Option<TlsConf>,
    pub rx: Option<TlsConf>,
    /// `TLS_TX_ZEROCOPY_RO` is set.
    pub zc_ro_tx: bool,
    /// `TLS_RX_EXPECT_NO_PAD` is set.
    pub rx_no_pad: bool,
}

impl TlsInfo {
    pub fn version_name(&self) -> String {
        match self.version {
            Some(v) => match TlsVersion::from_wire(v) {
                Some(t) => format!("TLS {t}"),
                None => format!("{v:#06x}"),
            },
            None => "?".into(),
        }
    }

    pub fn cipher_name(&self) -> String {
        match self.cipher {
            Some(v) => match Cipher::from_wire(v) {
                Some(c) => c.kernel_name().into(),
                None => format!("cipher {v}"),
            },
            None => "?".into(),
        }
    }

    pub fn tx_name(&self) -> String {
        self.tx.map_or_else(|| "?".into(), TlsConf::name)
    }

    pub fn rx_name(&self) -> String {
        self.rx.map_or_else(|| "?".into(), TlsConf::name)
    }

    /// "TLS 1.3 AES-GCM-128 tx SW".
    pub fn summary(&self) -> String {
        format!(
            "{} {} tx {}",
            self.version_name(),
            self.cipher_name(),
            self.tx_name()
        )
    }
}

/// The ends of a TCP connection, as far as they are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

impl From<&SockInfo> for Endpoints {
    /// The addresses the eBPF programs read from `struct sock_common`.
    fn from(i: &SockInfo) -> Endpoints {
        let ip = |a: &[u8; 16]| -> Option<IpAddr> {
            match i.family {
                2 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
                10 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
                _ => None,
            }
        };
        Endpoints {
            local: ip(&i.saddr).map(|a| canonical(SocketAddr::new(a, i.sport))),
            peer: ip(&i.daddr).map(|a| canonical(SocketAddr::new(a, u16::from_be(i.dport_be)))),
        }
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// One TCP socket of a sock_diag dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// `TCP_ESTABLISHED` = 1, ...
    pub state: u8,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub uid: u32,
    pub inode: u32,
    pub cookie: u64,
    /// The upper-layer protocol ("tls", "mptcp"), when the kernel told us (CAP_NET_ADMIN).
    pub ulp: Option<String>,
    /// Kernel TLS details, when the ULP is "tls".
    pub tls: Option<TlsInfo>,
}

/// Bytes of a dump request for one address family (`AF_INET` or `AF_INET6`): all TCP
/// sockets except listeners and TIME_WAIT, with the `INET_DIAG_INFO` extension.
pub fn build_request(family: u8, seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + REQ_V2_LEN) as u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    b.push(1 << (INET_DIAG_INFO - 1));
    b.push(0);
    let states: u32 = !((1 << TCP_LISTEN) | (1 << TCP_TIME_WAIT));
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(&[0u8; 48]); // struct inet_diag_sockid: match everything
    b
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Iterates over netlink attributes (`struct nlattr`): (type without flag bits, payload).
pub fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

/// Parses the payload of `INET_DIAG_ULP_INFO`.
pub fn parse_ulp(b: &[u8]) -> (Option<String>, Option<TlsInfo>) {
    let mut name = None;
    let mut tls = None;
    for (ty, p) in attributes(b) {
        match ty {
            INET_ULP_INFO_NAME => {
                let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
                name = Some(String::from_utf8_lossy(&p[..end]).into_owned());
            }
            INET_ULP_INFO_TLS => {
                let mut t = TlsInfo::default();
                for (ty, v) in attributes(p) {
                    match ty {
                        TLS_INFO_VERSION => t.version = u16_at(v, 0),
                        TLS_INFO_CIPHER => t.cipher = u16_at(v, 0),
                        TLS_INFO_TXCONF => t.tx = u16_at(v, 0).map(TlsConf::from_u16),
                        TLS_INFO_RXCONF => t.rx = u16_at(v, 0).map(TlsConf::from_u16),
                        TLS_INFO_ZC_RO_TX => t.zc_ro_tx = true,
                        TLS_INFO_RX_NO_PAD => t.rx_no_pad = true,
                        _ => {}
                    }
                }
                tls = Some(t);
            }
            _ => {}
        }
    }
    (name, tls)
}

fn addr(family: u8, b: &[u8], port: u16) -> Result<SocketAddr, SockDiagError> {
    let ip = match i32::from(family) {
        libc::AF_INET => {
            let o: [u8; 4] = b
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(SockDiagError::Malformed("short address"))?;
            IpAddr::V4(Ipv4Addr::from(o))
        }
        libc::AF_INET6 => {
            let o: [u8; 16] = b
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or(SockDiagError::Malformed("short address"))?;
            let v6 = Ipv6Addr::from(o);
            // Show v4-mapped peers of dual-stack sockets as IPv4.
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return Err(SockDiagError::Malformed("unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Parses one `struct inet_diag_msg` and its attributes.
pub fn parse_diag_msg(b: &[u8]) -> Result<DiagSocket, SockDiagError> {
    if b.len() < DIAG_MSG_LEN {
        return Err(SockDiagError::Malformed("inet_diag_msg too short"));
    }
    let family = b[0];
    let state = b[1];
    let sport = u16::from_be_bytes([b[4], b[5]]);
    let dport = u16::from_be_bytes([b[6], b[7]]);
    let local = addr(family, &b[8..24], sport)?;
    let peer = addr(family, &b[24..40], dport)?;
    let c0 = u32_at(b, 44).unwrap_or(0);
    let c1 = u32_at(b, 48).unwrap_or(0);
    let uid = u32_at(b, 64).unwrap_or(0);
    let inode = u32_at(b, 68).unwrap_or(0);
    let mut s = DiagSocket {
        state,
        local,
        peer,
        uid,
        inode,
        cookie: u64::from(c0) | (u64::from(c1) << 32),
        ulp: None,
        tls: None,
    };
    for (ty, p) in attributes(&b[align4(DIAG_MSG_LEN)..]) {
        if ty == INET_DIAG_ULP_INFO {
            let (name, tls) = parse_ulp(p);
            s.ulp = name;
            s.tls = tls;
        }
    }
    Ok(s)
}

/// What one `recv` of a dump held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    pub sockets: Vec<DiagSocket>,
    /// `NLMSG_DONE` was seen: the dump is complete.
    pub done: bool,
}

/// Parses the netlink messages of one datagram of a dump answer.
pub fn parse_dump(mut b: &[u8]) -> Result<DumpPart, SockDiagError> {
    let mut part = DumpPart::default();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(SockDiagError::Malformed("short header"))? as usize;
        let ty = u16_at(b, 4).ok_or(SockDiagError::Malformed("short header"))?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(SockDiagError::Malformed("message length out of bounds"));
        }
        let payload = &b[NLMSG_HDRLEN..len];
        match ty {
            NLMSG_DONE => {
                part.done = true;
                return Ok(part);
            }
            NLMSG_ERROR => {
                let err = payload
                    .get(..4)
                    .and_then(|e| e.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or(SockDiagError::Malformed("short error message"))?;
                if err != 0 {
                    return Err(SockDiagError::Kernel(io::Error::from_raw_os_error(-err)));
                }
            }
            SOCK_DIAG_BY_FAMILY => part.sockets.push(parse_diag_msg(payload)?),
            _ => {}
        }
        b = b.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(part)
}

/// A netlink socket to the kernel's sock_diag.
struct DiagSock(OwnedFd);

impl DiagSock {
    fn open() -> Result<DiagSock, SockDiagError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(SockDiagError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let sock = DiagSock(unsafe { OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid fd, option value points to a timeval of the given size. A
        // failure only means no receive timeout.
        unsafe {
            libc::setsockopt(
                sock.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    fn send(&self, req: &[u8]) -> Result<(), SockDiagError> {
        // SAFETY: sockaddr_nl is plain data; zeroed means "the kernel" (nl_pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid fd; buffer and address pointers are valid for their lengths.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(SockDiagError::Send(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, SockDiagError> {
        loop {
            // SAFETY: valid fd; buf is writable for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(SockDiagError::Recv(e));
            }
        }
    }
}

/// Dumps the TCP sockets of this network namespace (IPv4 and IPv6).
pub fn dump_tcp() -> Result<Vec<DiagSocket>, SockDiagError> {
    let sock = DiagSock::open()?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        sock.send(&build_request(family, seq))?;
        // Bounded: a dump ends with NLMSG_DONE; the receive timeout ends a silent one.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let n = sock.recv(&mut buf)?;
            if n == 0 {
                break;
            }
            let part = parse_dump(&buf[..n])?;
            out.extend(part.sockets);
            if part.done || std::time::Instant::now() > deadline {
                break;
            }
        }
    }
    Ok(out)
}

/// "socket:[12345]" (a /proc/PID/fd link) -> 12345.
pub fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Inodes of the sockets process `pid` has open (empty when /proc does not tell).
pub fn socket_inodes(pid: u32) -> HashSet<u32> {
    let dir = Path::new("/proc").join(pid.to_string()).join("fd");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| parse_socket_link(&l.to_string_lossy()))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn endpoints_decode_ipv4_ipv6_and_mapped_addresses() {
        let mut i = SockInfo {
            family: 2,
            sport: 8443,
            dport_be: 54321u16.to_be(),
            owner: 7,
            ..Default::default()
        };
        i.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        i.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        let a = Endpoints::from(&i);
        assert_eq!(a.local, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(a.peer, Some("10.1.2.3:54321".parse().unwrap()));
        i.family = 10;
        i.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            Endpoints::from(&i).peer,
            Some("[::1]:54321".parse().unwrap())
        );
        // A dual-stack socket's IPv4-mapped peer compares as IPv4.
        i.daddr = "::ffff:10.1.2.3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(
            Endpoints::from(&i).peer,
            Some("10.1.2.3:54321".parse().unwrap())
        );
        i.family = 1; // AF_UNIX: no addresses
        assert_eq!(Endpoints::from(&i).peer, None);
    }

    /// One netlink attribute (`struct nlattr` + payload, padded to 4 bytes).
    pub(crate) fn nlattr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    /// One netlink message.
    pub(crate) fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    /// A `struct inet_diag_msg` for an IPv4 socket, followed by attributes.
    pub(crate) fn diag_msg_v4(
        local: ([u8; 4], u16),
        peer: ([u8; 4], u16),
        inode: u32,
        attrs: &[u8],
    ) -> Vec<u8> {
        let mut b = vec![libc::AF_INET as u8, 1, 0, 0];
        b.extend_from_slice(&local.1.to_be_bytes());
        b.extend_from_slice(&peer.1.to_be_bytes());
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&local.0);
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&peer.0);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&0u32.to_ne_bytes()); // if
        b.extend_from_slice(&0x1234u32.to_ne_bytes()); // cookie[0]
        b.extend_from_slice(&0x1u32.to_ne_bytes()); // cookie[1]
        for v in [0u32, 0, 0, 1000, inode] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(b.len(), DIAG_MSG_LEN);
        b.extend_from_slice(attrs);
        b
    }

    /// INET_DIAG_ULP_INFO for kernel TLS, nested as the kernel does (NLA_F_NESTED set).
    pub(crate) fn ulp_tls(version: u16, cipher: u16, tx: u16, rx: u16, zc: bool) -> Vec<u8> {
        const NESTED: u16 = 0x8000;
        let mut tls = Vec::new();
        tls.extend(nlattr(TLS_INFO_VERSION, &version.to_ne_bytes()));
        tls.extend(nlattr(TLS_INFO_CIPHER, &cipher.to_ne_bytes()));
        tls.extend(nlattr(TLS_INFO_TXCONF, &tx.to_ne_bytes()));
        tls.extend(nlattr(TLS_INFO_RXCONF, &rx.to_ne_bytes()));
        if zc {
            tls.extend(nlattr(TLS_INFO_ZC_RO_TX, &[]));
        }
        let mut ulp = nlattr(INET_ULP_INFO_NAME, b"tls\0");
        ulp.extend(nlattr(INET_ULP_INFO_TLS | NESTED, &tls));
        nlattr(INET_DIAG_ULP_INFO | NESTED, &ulp)
    }

    #[test]
    fn request_layout() {
        let r = build_request(libc::AF_INET as u8, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], 6, "IPPROTO_TCP");
        assert_eq!(r[18], 0b10, "INET_DIAG_INFO extension bit");
        let states = u32_at(&r, 20).unwrap_or(0);
        assert_eq!(states & (1 << 1), 1 << 1, "ESTABLISHED");
        assert_eq!(states & (1 << TCP_LISTEN), 0);
    }

    #[test]
    fn parses_a_dump_with_a_ktls_socket() {
        let info = nlattr(INET_DIAG_INFO, &[0u8; 232]); // tcp_info, skipped
        let mut attrs = info.clone();
        attrs.extend(ulp_tls(0x0304, 51, 2, 2, false));
        let mut dgram = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg_v4(
                ([127, 0, 0, 1], 8443),
                ([127, 0, 0, 1], 40_000),
                555,
                &attrs,
            ),
        );
        dgram.extend(nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg_v4(([10, 0, 0, 1], 22), ([10, 0, 0, 2], 50_000), 556, &info),
        ));
        dgram.extend(nlmsg(NLMSG_DONE, &0i32.to_ne_bytes()));
        let part = parse_dump(&dgram).expect("parses");
        assert!(part.done);
        assert_eq!(part.sockets.len(), 2);
        let k = &part.sockets[0];
        assert_eq!(k.local, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(k.peer, "127.0.0.1:40000".parse().unwrap());
        assert_eq!((k.inode, k.uid, k.state), (555, 1000, 1));
        assert_eq!(k.cookie, 0x1_0000_1234);
        assert_eq!(k.ulp.as_deref(), Some("tls"));
        let t = k.tls.as_ref().expect("tls info");
        assert_eq!(t.version, Some(0x0304));
        assert_eq!(t.tx, Some(TlsConf::Sw));
        assert_eq!(t.summary(), "TLS 1.3 AES-GCM-128 tx SW");
        assert_eq!(t.rx_name(), "SW");
        assert!(!t.zc_ro_tx);
        let plain = &part.sockets[1];
        assert_eq!((plain.ulp.as_ref(), plain.tls.as_ref()), (None, None));
        assert_eq!(plain.peer, "10.0.0.2:50000".parse().unwrap());
    }

    #[test]
    fn tls_names() {
        let hw = ulp_tls(0x0303, 52, 3, 1, true);
        let (name, tls) = parse_ulp(attributes(&hw).next().map(|(_, p)| p).unwrap_or(&[]));
        assert_eq!(name.as_deref(), Some("tls"));
        let t = tls.expect("tls");
        assert_eq!(t.summary(), "TLS 1.2 AES-GCM-256 tx HW");
        assert_eq!(t.rx_name(), "none");
        assert!(t.zc_ro_tx);
        assert_eq!(TlsConf::from_u16(4).name(), "HW-record");
        assert_eq!(TlsConf::from_u16(9).name(), "conf 9");
        let t = TlsInfo {
            cipher: Some(54),
            ..TlsInfo::default()
        };
        assert_eq!(t.cipher_name(), "CHACHA20-POLY1305");
        assert_eq!(t.version_name(), "?");
    }

    #[test]
    fn parses_ipv6_and_v4_mapped() {
        let mut b = diag_msg_v4(([0; 4], 443), ([0; 4], 1234), 1, &[]);
        b[0] = libc::AF_INET6 as u8;
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        b[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b[24..40].copy_from_slice(&mapped.octets());
        let s = parse_diag_msg(&b).expect("parses");
        assert_eq!(s.local, "[::1]:443".parse().unwrap());
        assert_eq!(s.peer, "192.0.2.7:1234".parse().unwrap());
    }

    #[test]
    fn errors_and_truncation() {
        let e = nlmsg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        match parse_dump(&e) {
            Err(SockDiagError::Kernel(io)) => assert_eq!(io.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected a kernel error, got {other:?}"),
        }
        // An ACK (error 0) is not an error.
        assert_eq!(
            parse_dump(&nlmsg(NLMSG_ERROR, &0i32.to_ne_bytes())).ok(),
            Some(DumpPart::default())
        );
        let mut m = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg_v4(([1, 2, 3, 4], 1), ([5, 6, 7, 8], 2), 3, &[]),
        );
        m.truncate(40);
        assert!(matches!(parse_dump(&m), Err(SockDiagError::Malformed(_))));
        let short = nlmsg(SOCK_DIAG_BY_FAMILY, &[2, 1, 0, 0]);
        assert!(matches!(
            parse_dump(&short),
            Err(SockDiagError::Malformed(_))
        ));
        // A bad attribute length ends the attribute walk instead of reading past it.
        let bad = [0xff, 0x00, 0x13, 0x00, 1, 2];
        assert_eq!(attributes(&bad).count(), 0);
        assert_eq!(parse_dump(&[]).ok(), Some(DumpPart::default()));
    }

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[98765]"), Some(98765));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    /// Against the running kernel: a loopback connection of this process shows up with
    /// its addresses and inode (ULP details need kernel TLS and CAP_NET_ADMIN).
    #[test]
    fn live_dump_finds_our_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (_s, _) = l.accept().expect("accept");
        let socks = match dump_tcp() {
            Ok(s) => s,
            Err(SockDiagError::Socket(e)) => {
                eprintln!("no sock_diag here ({e}); skipping");
                return;
            }
            Err(e) => panic!("sock_diag dump failed: {e}"),
        };
        let local = c.local_addr().expect("local");
        let found = socks
            .iter()
            .find(|s| s.local == local)
            .unwrap_or_else(|| panic!("{local} not in the dump of {} sockets", socks.len()));
        assert_eq!(found.peer, l.local_addr().expect("addr"));
        assert!(socket_inodes(std::process::id()).contains(&found.inode));
    }
}
