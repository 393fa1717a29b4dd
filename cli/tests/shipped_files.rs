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
fn example_guest_config_parses_to_the_defaults() {
    let path = systemd_dir().join("guest.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(Config::from_toml(&text, &path).unwrap(), Config::default());
}

#[test]
fn the_cdh_drop_in_moves_cdh_to_the_default_upstream_socket() {
    let text = std::fs::read_to_string(
        systemd_dir().join("confidential-data-hub.service.d/10-veil-upstream.conf"),
    )
    .unwrap();
    // ExecStart is reset, then CDH runs on the config veil-guest writes.
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let reset = lines.iter().position(|l| *l == "ExecStart=").unwrap();
    let out = "/run/veil/cdh-upstream.toml";
    assert!(lines[reset + 1].ends_with(&format!("-c {out}")), "{text}");
    let pre = lines
        .iter()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .unwrap();
    assert!(
        pre.ends_with(&format!("--write-upstream-cdh-config {out}")),
        "{pre}"
    );
    // The flag exists and writes CDH's config with the socket moved.
    let dir = tempfile::tempdir().unwrap();
    let (config, cdh, written) = (
        dir.path().join("guest.toml"),
        dir.path().join("cdh.toml"),
        dir.path().join("out/cdh-upstream.toml"),
    );
    std::fs::write(
        &cdh,
        "socket = 'unix:///run/confidential-containers/cdh.sock'\n[kbc]\nname = \"cc_kbc\"\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!("[guest]\ncdh_config = \"{}\"\n", cdh.display()),
    )
    .unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_veil-guest"))
        .arg("--config")
        .arg(&config)
        .arg("--write-upstream-cdh-config")
        .arg(&written)
        .status()
        .unwrap();
    assert!(status.success());
    let value: toml::Value = toml::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(
        value["socket"].as_str(),
        Some(format!("unix://{}", veil_daemon::config::DEFAULT_UPSTREAM_SOCKET).as_str())
    );
    assert_eq!(value["kbc"]["name"].as_str(), Some("cc_kbc"));
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
    verify_unit(
        "veil-snapshotter.service",
        "veil-snapshotter",
        env!("CARGO_BIN_EXE_veil-snapshotter"),
    );
}

#[test]
fn guest_unit_verifies() {
    let unit = std::fs::read_to_string(systemd_dir().join("veil-guest.service")).unwrap();
    let before: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Before="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        before.contains(&"kata-agent.service") && before.contains(&"kata-agent.path"),
        "veil-guest must be ready before kata-agent connects: {before:?}"
    );
    verify_unit(
        "veil-guest.service",
        "veil-guest",
        env!("CARGO_BIN_EXE_veil-guest"),
    );
}

/// Checks the shipped unit `name` (ExecStart pointed at `binary`) with systemd-analyze.
fn verify_unit(name: &str, installed: &str, binary: &str) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is needed to check the unit file (Debian package systemd)");
    }
    let unit = std::fs::read_to_string(systemd_dir().join(name)).unwrap();
    assert!(
        unit.contains("Type=notify"),
        "the daemon notifies readiness"
    );
    assert!(
        unit.lines().any(|l| l.trim() == "LimitCORE=0"),
        "the daemon holds keys and plaintext: the unit allows no core files"
    );
    // Point ExecStart at the binary just built, since nothing is installed here.
    let unit = unit.replace(&format!("/usr/local/bin/{installed}"), binary);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine (or containerd.service being absent) are
    // not ours; any line naming our unit is a defect.
    // One exception: `FileDescriptorStorePreserve=` is systemd 254's; older systemd
    // (Debian 12 has 252) warns that it does not know it and runs the unit without it,
    // which is what the README says of systemd 250–253.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(name))
        .filter(|l| !(systemd_before_254() && l.contains(PRESERVE_UNKNOWN)))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {stderr}");
}

/// What systemd before 254 says of the fd store's `Preserve` key.
const PRESERVE_UNKNOWN: &str = "Unknown key 'FileDescriptorStorePreserve'";

/// Whether this machine's systemd predates 254 (`systemd-analyze --version`: "systemd 252 (…)").
fn systemd_before_254() -> bool {
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("running systemd-analyze --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no version in systemd-analyze --version: {text}"));
    version < 254
}

#[test]
fn containerd_cri_snippet_makes_veil_the_cri_snapshotter_with_annotations() {
    let text = std::fs::read_to_string(systemd_dir().join("containerd-cri.toml")).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let cri = &value["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(cri["containerd"]["snapshotter"].as_str(), Some("veil"));
    assert_eq!(
        cri["containerd"]["disable_snapshot_annotations"].as_bool(),
        Some(false)
    );
    assert_eq!(cri["image_decryption"]["key_model"].as_str(), Some("node"));
}
