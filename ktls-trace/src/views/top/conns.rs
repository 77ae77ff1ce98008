//! The connection view's facts beyond the event stream: where a socket id leads (its
//! addresses, from the tracer) and what kernel TLS says about it (sock_diag).
//!
//! Socket ids are keyed hashes of kernel `struct sock` addresses, so only the tracer can
//! say which socket an id is ([`Tracer::endpoints`], behind [`SockLookup`]). Where it
//! cannot (a socket it has not seen, or [`NoSockLookup`]), the view shows sock_diag's
//! sockets of the process (matched through its /proc/PID/fd socket inodes) beside the ids.

use std::collections::HashSet;

use crate::{
    attach::Tracer,
    sockdiag::{DiagSocket, Endpoints, TlsInfo, canonical},
};

impl SockLookup for Tracer {
    fn endpoints(&self, sock: u64) -> Option<Endpoints> {
        let (e, _owner) = Tracer::endpoints(self, sock)?;
        (e.local.is_some() || e.peer.is_some()).then_some(e)
    }
}

/// Resolves a socket id of the event stream to the connection's addresses.
pub trait SockLookup {
    fn endpoints(&self, sock: u64) -> Option<Endpoints>;
}

/// What the drill-down shows for one connection beyond the model's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnFacts {
    pub endpoints: Option<Endpoints>,
    pub tls: Option<TlsInfo>,
}

/// The kernel's view of one socket, joined by both addresses.
pub fn diag_for<'a>(ep: &Endpoints, diag: &'a [DiagSocket]) -> Option<&'a DiagSocket> {
    let (local, peer) = (canonical(ep.local?), canonical(ep.peer?));
    diag.iter()
        .find(|d| canonical(d.local) == local && canonical(d.peer) == peer)
}

/// Facts for a connection: addresses from the lookup, TLS from the sock_diag socket with
/// the same addresses.
pub fn facts_for(sock: u64, lookup: &dyn SockLookup, diag: &[DiagSocket]) -> ConnFacts {
    let endpoints = lookup.endpoints(sock);
    let tls = endpoints
        .as_ref()
        .and_then(|ep| diag_for(ep, diag))
        .and_then(|d| d.tls.clone());
    ConnFacts { endpoints, tls }
}

/// The sock_diag sockets a process has open (by socket inode), kernel TLS ones first.
pub fn sessions_of(inodes: &HashSet<u32>, diag: &[DiagSocket]) -> Vec<DiagSocket> {
    let mut v: Vec<DiagSocket> = diag
        .iter()
        .filter(|d| d.inode != 0 && inodes.contains(&d.inode))
        .cloned()
        .collect();
    v.sort_by_key(|d| (d.tls.is_none(), d.local, d.peer));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockdiag::TlsConf;

    /// A lookup backed by a function.
    struct FnSockLookup<F: Fn(u64) -> Option<Endpoints>>(F);

    impl<F: Fn(u64) -> Option<Endpoints>> SockLookup for FnSockLookup<F> {
        fn endpoints(&self, sock: u64) -> Option<Endpoints> {
            (self.0)(sock)
        }
    }

    /// A lookup that knows nothing.
    struct NoSockLookup;

    impl SockLookup for NoSockLookup {
        fn endpoints(&self, _sock: u64) -> Option<Endpoints> {
            None
        }
    }

    fn diag(local: &str, peer: &str, inode: u32, tls: bool) -> DiagSocket {
        DiagSocket {
            state: 1,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            uid: 0,
            inode,
            cookie: 0,
            ulp: tls.then(|| "tls".to_string()),
            tls: tls.then(|| TlsInfo {
                version: Some(0x0304),
                cipher: Some(51),
                tx: Some(TlsConf::Sw),
                rx: Some(TlsConf::Base),
                ..TlsInfo::default()
            }),
        }
    }

    #[test]
    fn joins_by_addresses() {
        let d = vec![
            diag("127.0.0.1:8443", "127.0.0.1:5000", 10, true),
            diag("127.0.0.1:5000", "127.0.0.1:8443", 11, false),
        ];
        let lookup = FnSockLookup(|s| {
            (s == 7 || s == 9).then(|| Endpoints {
                local: "127.0.0.1:8443".parse().ok(),
                // Socket 9: the peer is not known (yet).
                peer: if s == 7 {
                    "[::ffff:127.0.0.1]:5000".parse().ok()
                } else {
                    None
                },
            })
        });
        let f = facts_for(7, &lookup, &d);
        assert_eq!(
            f.endpoints.and_then(|e| e.peer).map(|p| p.port()),
            Some(5000)
        );
        assert_eq!(
            f.tls.map(|t| t.summary()).as_deref(),
            Some("TLS 1.3 AES-GCM-128 tx SW")
        );
        assert_eq!(facts_for(8, &lookup, &d), ConnFacts::default());
        let f = facts_for(9, &lookup, &d);
        assert!(
            f.endpoints.is_some() && f.tls.is_none(),
            "no join on half an address"
        );
        assert_eq!(facts_for(7, &NoSockLookup, &d), ConnFacts::default());
    }

    #[test]
    fn sessions_of_a_process() {
        let d = vec![
            diag("127.0.0.1:5000", "127.0.0.1:8443", 11, false),
            diag("127.0.0.1:8443", "127.0.0.1:5000", 10, true),
            diag("127.0.0.1:9", "127.0.0.1:10", 12, true),
        ];
        let mine: HashSet<u32> = [10, 11].into_iter().collect();
        let s = sessions_of(&mine, &d);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].inode, 10, "kernel TLS first");
        assert!(sessions_of(&HashSet::new(), &d).is_empty());
    }
}
