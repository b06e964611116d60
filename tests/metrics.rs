//! Monitoring: the scrape config and alerting rules in deploy/ pass promtool.

use std::path::Path;
use std::process::Command;

/// Runs `promtool check <what> deploy/<file>` and fails with its output unless it passes.
fn promtool_check(what: &str, file: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let out = Command::new("promtool")
        .arg("check")
        .arg(what)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is missing ({e}): install Debian's `prometheus` package (scripts/setup.sh)")
        });
    assert!(
        out.status.success(),
        "promtool check {what} {file} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alerting_rules_pass_promtool() {
    promtool_check("rules", "alerts.yml");
}

#[test]
fn scrape_config_passes_promtool() {
    promtool_check("config", "prometheus.yml");
}
