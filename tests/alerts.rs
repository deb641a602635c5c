//! The shipped Prometheus configuration and alert rules
//! (deploy/prometheus/), checked by the real promtool (Debian's
//! `prometheus` package; .ci/run installs it): the configuration loads with
//! its rules, every rule parses, every alert has a unit test in
//! alerts_test.yml, and the unit tests pass (each alert fires on the series
//! meant to fire it and on no other).

use std::{path::Path, process::Command};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("run promtool (Debian package `prometheus`; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_configuration_and_its_rules_load() {
    let text = promtool(&["check", "config", "prometheus.yml"]);
    assert!(text.contains("SUCCESS: 1 rule files found"), "{text}");
    let text = promtool(&["check", "rules", "alerts.yml"]);
    assert!(text.contains("SUCCESS: 11 rules found"), "{text}");
}

#[test]
fn every_alert_has_a_unit_test_and_they_pass() {
    let rules = std::fs::read_to_string(Path::new(DIR).join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(Path::new(DIR).join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 11, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no unit test in alerts_test.yml"
        );
    }
    let text = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}
