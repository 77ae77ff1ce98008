//! Numbers as `top` prints them: decimal units, rates, latencies. Pure and tested.

/// Bytes (or bytes/s) with decimal units: 0, 512, 1.50K, 12.3M, 118G.
pub fn bytes(v: f64) -> String {
    if v < 1000.0 {
        return format!("{v:.0}");
    }
    let mut v = v;
    let mut unit = "";
    for u in ["K", "M", "G", "T"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.2}{unit}")
    } else if v < 100.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

/// Calls or records per second.
pub fn count(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 10.0 {
        format!("{v:.1}")
    } else {
        bytes(v)
    }
}

/// A latency, or `-` when there is none.
pub fn latency(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), crate::event::fmt_latency)
}

/// A share (0..=1) as a whole percentage, or `-`.
pub fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |z| format!("{:.0}", z * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0.0), "0");
        assert_eq!(bytes(999.0), "999");
        assert_eq!(bytes(1500.0), "1.50K");
        assert_eq!(bytes(12_345_678.0), "12.3M");
        assert_eq!(bytes(118e9), "118G");
        assert_eq!(count(0.5), "0.5");
        assert_eq!(count(0.0), "0");
        assert_eq!(count(2500.0), "2.50K");
        assert_eq!(latency(Some(1_500)), "1.5us");
        assert_eq!(latency(Some(45_000)), "45us");
        assert_eq!(latency(Some(2_500_000)), "2.50ms");
        assert_eq!(latency(None), "-");
        assert_eq!(percent(Some(0.996)), "100");
        assert_eq!(percent(None), "-");
    }
}
