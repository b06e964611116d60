//! Monitoring: the alerting rules in deploy/ pass `promtool check rules`.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("promtool is missing ({e}): install Debian's `prometheus` package (scripts/setup.sh)")
    })
}

#[test]
fn alerting_rules_pass_promtool() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/alerts.yml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap_or_default()]);
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scrape_config_passes_promtool() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus.yml");
    let out = promtool(&["check", "config", config.to_str().unwrap_or_default()]);
    assert!(
        out.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
