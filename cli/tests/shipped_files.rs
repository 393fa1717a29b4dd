//! The files Veil ships for operators (systemd unit, example config, containerd snippet)
//! are valid and agree with the daemon's documented defaults.

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_daemon::config::{Config, DEFAULT_ADDRESS};

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

#[test]
fn example_config_parses_to_the_defaults() {
    let path = systemd_dir().join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(Config::from_toml(&text, &path).unwrap(), Config::default());
}

#[test]
fn containerd_snippet_points_at_the_default_socket() {
    let text = std::fs::read_to_string(systemd_dir().join("containerd-veil.toml")).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let veil = &value["proxy_plugins"]["veil"];
    assert_eq!(veil["type"].as_str(), Some("snapshot"));
    assert_eq!(veil["address"].as_str(), Some(DEFAULT_ADDRESS));
}

#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is needed to check the unit file (Debian package systemd)");
    }
    let unit = std::fs::read_to_string(systemd_dir().join("veil-snapshotter.service")).unwrap();
    assert!(
        unit.contains("Type=notify"),
        "the daemon notifies readiness"
    );
    assert!(
        unit.lines().any(|l| l.trim() == "LimitCORE=0"),
        "the daemon holds keys and plaintext: the unit allows no core files"
    );
    // Point ExecStart at the binary just built, since nothing is installed here.
    let unit = unit.replace(
        "/usr/local/bin/veil-snapshotter",
        env!("CARGO_BIN_EXE_veil-snapshotter"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("veil-snapshotter.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine (or containerd.service being absent) are
    // not ours; any line naming our unit is a defect.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("veil-snapshotter.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {stderr}");
}
