//! The struct offsets the eBPF programs need, read from the running kernel's BTF (and the
//! `sock:sock_send_length` format file), and where kernel TLS keeps a socket's state (from
//! the tls module's BTF, once it is loaded). Anything not found stays unknown: the programs
//! then leave that field out rather than read the wrong bytes, and `doctor` says which
//! number it costs (`plan::numbers`).

use std::path::Path;

use ktls_trace_common::{OFF_UNKNOWN, Offsets, TlsLayout};

use crate::{
    btf::{Btf, MemberKind},
    kernel,
};

/// Reads the offsets from `btf` (vmlinux) and the tracepoint format under `tracefs`.
pub fn read(btf: Option<&Btf>, tracefs: Option<&Path>) -> Offsets {
    let mut o = Offsets::UNKNOWN;
    if let Some(btf) = btf {
        let off = |s: &str, m: &str| btf.member_offset(s, m).unwrap_or(OFF_UNKNOWN);
        let val = |n: &str| {
            btf.enum_value(n)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(OFF_UNKNOWN)
        };
        o.msghdr_flags = off("msghdr", "msg_flags");
        o.msghdr_iter = off("msghdr", "msg_iter");
        // `u8 iter_type` since 5.14; before, `unsigned int type` with the direction in
        // bit 0 and the ITER_* values as bits (5.10: ITER_IOVEC = 4).
        o.iter_type = off("iov_iter", "iter_type");
        if o.iter_type == OFF_UNKNOWN {
            o.iter_type = off("iov_iter", "type");
            o.iter_type_old = u32::from(o.iter_type != OFF_UNKNOWN);
        }
        o.iter_ubuf = off("iov_iter", "ubuf");
        // Renamed from `iov` to `__iov` in 6.4 (commit de4f5fed3f23).
        o.iter_iov = btf
            .member_offset("iov_iter", "__iov")
            .or_else(|_| btf.member_offset("iov_iter", "iov"))
            .unwrap_or(OFF_UNKNOWN);
        o.iter_ubuf_val = val("ITER_UBUF");
        o.iter_iovec_val = val("ITER_IOVEC");
        o.socket_sk = off("socket", "sk");
        o.skc_family = off("sock_common", "skc_family");
        o.skc_num = off("sock_common", "skc_num");
        o.skc_dport = off("sock_common", "skc_dport");
        o.skc_daddr = off("sock_common", "skc_daddr");
        o.skc_rcv_saddr = off("sock_common", "skc_rcv_saddr");
        o.skc_v6_daddr = off("sock_common", "skc_v6_daddr");
        o.skc_v6_rcv_saddr = off("sock_common", "skc_v6_rcv_saddr");
        o.task_group_leader = off("task_struct", "group_leader");
        o.task_comm = off("task_struct", "comm");
    }
    if let Some(tfs) = tracefs
        && let Some(f) = kernel::tracepoint_fields(tfs, "sock", "sock_send_length")
    {
        let get = |n: &str| f.get(n).map(|(off, _)| *off).unwrap_or(OFF_UNKNOWN);
        o.tp_ssl_sk = get("sk");
        o.tp_ssl_ret = get("ret");
        o.tp_ssl_proto = get("protocol");
    }
    o
}

/// Where kernel TLS keeps version, cipher and the transmit record sequence number, from
/// `btf` (vmlinux, where TLS may be built in) or else the tls module's split BTF; and in
/// words, where that was found.
pub fn tls_layout(vmlinux: &Btf) -> Result<(TlsLayout, String), String> {
    let module;
    let (btf, source) = if vmlinux.has_struct("tls_context") {
        (vmlinux, "vmlinux BTF")
    } else {
        module = vmlinux.with_module("tls").map_err(|e| {
            format!(
                "the tls module's BTF is not readable ({e}; needs CONFIG_DEBUG_INFO_BTF_MODULES)"
            )
        })?;
        (&module, "the tls module's BTF")
    };
    let layout = layout_from(vmlinux, btf)?;
    let kind = if layout.rec_seq_is_ptr != 0 {
        "a pointer"
    } else {
        "an array"
    };
    let where_ = format!(
        "tls_context.tx.rec_seq, {kind}, at offset {} in {source}",
        layout.tx_rec_seq
    );
    Ok((layout, where_))
}

/// [`tls_layout`] from parsed BTF: `base` has `inet_connection_sock`, `tls` has
/// `tls_context` (the same BTF where TLS is built in).
pub fn layout_from(base: &Btf, tls: &Btf) -> Result<TlsLayout, String> {
    let missing = |what: &str, e: crate::btf::BtfError| format!("{what} not in BTF ({e})");
    let ulp = base
        .member_offset("inet_connection_sock", "icsk_ulp_data")
        .map_err(|e| missing("inet_connection_sock.icsk_ulp_data", e))?;
    let (version, _) = tls
        .member_path("tls_context", &["prot_info", "version"])
        .map_err(|e| missing("tls_context.prot_info.version", e))?;
    let (cipher, _) = tls
        .member_path("tls_context", &["prot_info", "cipher_type"])
        .map_err(|e| missing("tls_context.prot_info.cipher_type", e))?;
    let (rec_seq, kind) = tls
        .member_path("tls_context", &["tx", "rec_seq"])
        .map_err(|e| missing("tls_context.tx.rec_seq", e))?;
    let rec_seq_is_ptr = match kind {
        MemberKind::Pointer => 1,
        MemberKind::Array => 0,
        MemberKind::Other => {
            return Err("tls_context.tx.rec_seq is neither a pointer nor an array".into());
        }
    };
    Ok(TlsLayout {
        valid: 1,
        icsk_ulp_data: ulp,
        version,
        cipher,
        tx_rec_seq: rec_seq,
        rec_seq_is_ptr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF (every machine and guest this project runs on has one):
    /// the members ktls-trace reads exist at plausible offsets on every kernel of the
    /// matrix (5.10's `iov_iter.type` included).
    #[test]
    fn offsets_come_from_this_kernels_btf() {
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let o = read(Some(&btf), None);
        assert!(o.msghdr_flags > 0 && o.msghdr_flags < 256, "{o:?}");
        assert!(o.socket_sk > 0 && o.socket_sk < 128, "{o:?}");
        assert!(o.msghdr_iter < o.msghdr_flags, "msg_iter before msg_flags");
        assert_ne!(o.iter_type, OFF_UNKNOWN);
        assert_ne!(o.iter_iov, OFF_UNKNOWN);
        assert_ne!(o.iter_iovec_val, OFF_UNKNOWN);
        if o.iter_ubuf != OFF_UNKNOWN {
            assert_eq!(
                o.iter_ubuf, o.iter_iov,
                "ubuf and the iovec pointer share a union"
            );
            assert_ne!(o.iter_ubuf_val, o.iter_iovec_val);
        }
        for v in [
            o.skc_family,
            o.skc_num,
            o.skc_dport,
            o.skc_daddr,
            o.skc_rcv_saddr,
            o.skc_v6_daddr,
            o.skc_v6_rcv_saddr,
            o.task_group_leader,
            o.task_comm,
        ] {
            assert_ne!(v, OFF_UNKNOWN, "{o:?}");
        }
        // skc_daddr and skc_rcv_saddr are adjacent __be32s; skc_dport and skc_num too.
        assert_eq!(o.skc_rcv_saddr, o.skc_daddr + 4);
        assert_eq!(o.skc_num, o.skc_dport + 2);
    }

    /// Where kernel TLS is loaded (the kTLS guests), its socket state is found in BTF.
    #[test]
    #[ignore = "needs kTLS: runs in the QEMU guests (cargo xtask vm-test)"]
    fn tls_layout_where_kernel_tls_is_loaded() {
        if !crate::kernel::TlsState::module_live() {
            crate::test_util::skip(
                "tls_layout_where_kernel_tls_is_loaded",
                "this kernel has no kernel TLS",
            );
            return;
        }
        let btf = Btf::from_sys_fs().expect("kernel BTF");
        let (l, where_) = tls_layout(&btf).expect("tls layout");
        assert!(where_.contains("tls_context.tx.rec_seq"), "{where_}");
        assert_eq!(l.valid, 1);
        // prot_info comes first in struct tls_context; version before cipher_type.
        assert!(l.version < l.cipher && l.cipher < 64, "{l:?}");
        assert!(l.tx_rec_seq > l.cipher && l.tx_rec_seq < 1024, "{l:?}");
        assert!(l.icsk_ulp_data > 0 && l.icsk_ulp_data < 4096, "{l:?}");
    }
}
