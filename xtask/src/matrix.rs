//! `cargo xtask matrix`: what `ktls-trace doctor` says on every kernel of the matrix, as
//! measured in the guests: one table of probe points and of where every number comes from
//! (the basis of docs/kernel-support.md), and the raw reports under `target/matrix/`.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use serde_json::Value;

use crate::vm::{self, KernelChoice};

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Which kernel series to ask.
    #[arg(long, value_enum, default_value = "all")]
    pub kernel: KernelChoice,
}

/// The guest plan: doctor's report between markers.
const SCRIPT: &str = r#"dmesg -n 1
echo "KT-DOCTOR-BEGIN"
/opt/kt/ktls-trace doctor --json | tr -d '\n'
echo
echo "KT-DOCTOR-END"
"#;

pub fn matrix_cmd(args: &MatrixArgs) -> Result<()> {
    let dir = crate::cmd::workspace_root().join("target/matrix");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut reports = Vec::new();
    vm::script_on_each(
        args.kernel,
        SCRIPT,
        Duration::from_secs(600),
        |series, console| {
            let label = series.label();
            let report = doctor_report(console)
                .with_context(|| format!("no doctor report from the {label} guest"))?;
            let path = dir.join(format!("{label}.json"));
            std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            reports.push((label, report));
            Ok(())
        },
    )?;
    print!("{}", table(&reports));
    Ok(())
}

/// The JSON line between the markers.
fn doctor_report(console: &[String]) -> Option<Value> {
    let begin = console.iter().position(|l| l.contains("KT-DOCTOR-BEGIN"))?;
    console[begin + 1..]
        .iter()
        .take_while(|l| !l.contains("KT-DOCTOR-END"))
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// Probe points and numbers, one column per kernel.
pub fn table(reports: &[(&str, Value)]) -> String {
    let mut out = String::new();
    let kernels: Vec<String> = reports
        .iter()
        .map(|(l, r)| format!("{l} ({})", r["kernel"].as_str().unwrap_or("?")))
        .collect();
    out.push_str(&format!("| | {} |\n", kernels.join(" | ")));
    out.push_str(&format!("| --- |{}\n", " --- |".repeat(reports.len())));
    let row = |out: &mut String, name: &str, cell: &dyn Fn(&Value) -> String| {
        let cells: Vec<String> = reports.iter().map(|(_, r)| cell(r)).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(&mut out, "full", &|r| r["full"].to_string());
    let probes = reports
        .first()
        .and_then(|(_, r)| r["probe_points"].as_array().cloned())
        .unwrap_or_default();
    for p in probes {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        row(&mut out, &format!("`{name}`"), &|r| {
            r["probe_points"]
                .as_array()
                .and_then(|v| v.iter().find(|x| x["name"] == name.as_str()))
                .map(|x| x["note"].as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        });
    }
    let numbers = reports
        .first()
        .and_then(|(_, r)| r["numbers"].as_array().cloned())
        .unwrap_or_default();
    for n in numbers {
        let name = n["number"].as_str().unwrap_or("?").to_string();
        row(&mut out, &name, &|r| {
            r["numbers"]
                .as_array()
                .and_then(|v| v.iter().find(|x| x["number"] == name.as_str()))
                .map(|x| {
                    format!(
                        "{}: {}",
                        x["source"].as_str().unwrap_or("?"),
                        x["how"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_become_one_table() {
        let console: Vec<String> = [
            "noise",
            "KT-DOCTOR-BEGIN",
            r#"{"kernel":"6.1.0-57-cloud-amd64","full":true,"probe_points":[{"name":"do_sendfile","note":"will be probed"}],"numbers":[{"number":"TLS records","source":"exact","how":"rec_seq"}]}"#,
            "KT-DOCTOR-END",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = doctor_report(&console).unwrap();
        let other = json!({"kernel":"5.10.0-46","full":false,
            "probe_points":[{"name":"do_sendfile","note":"will be probed"}],
            "numbers":[{"number":"TLS records","source":"missing","how":"no kernel TLS"}]});
        let t = table(&[("6.1", r), ("5.10", other)]);
        assert!(
            t.contains("| | 6.1 (6.1.0-57-cloud-amd64) | 5.10 (5.10.0-46) |"),
            "{t}"
        );
        assert!(t.contains("| full | true | false |"), "{t}");
        assert!(
            t.contains("| `do_sendfile` | will be probed | will be probed |"),
            "{t}"
        );
        assert!(
            t.contains("| TLS records | exact: rec_seq | missing: no kernel TLS |"),
            "{t}"
        );
        assert!(doctor_report(&["nothing".to_string()]).is_none());
    }
}
