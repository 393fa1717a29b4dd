//! Checking that daemon logs hold no key material: private key lines, KEKs, layer keys,
//! in every text form a log line could carry them.

use std::path::PathBuf;

use anyhow::bail;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// Fails naming the log file when one of `logs` contains one of `secrets` (the secret
/// itself is shown only by its first characters).
pub fn check_no_secret_in_logs(logs: &[PathBuf], secrets: &[String]) -> anyhow::Result<()> {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
            let shown: String = s.chars().take(12).collect();
            bail!("{} contains key material ({shown}...)", log.display());
        }
    }
    Ok(())
}

/// The text forms of the raw key `bytes` a log could hold: hex (both cases), base64
/// (standard and URL-safe), and the integer lists of JSON and of Rust's `Debug`.
pub fn text_forms(bytes: &[u8]) -> Vec<String> {
    let numbers: Vec<String> = bytes.iter().map(u8::to_string).collect();
    let hex = hex::encode(bytes);
    vec![
        hex.to_uppercase(),
        hex,
        STANDARD.encode(bytes).trim_end_matches('=').to_string(),
        URL_SAFE_NO_PAD.encode(bytes),
        numbers.join(","),
        numbers.join(", "),
    ]
}

/// The base64 lines of PEM files (private keys): secret text no log may contain.
pub fn pem_secret_lines(files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_a_key() {
        let forms = text_forms(&[0xab, 1, 255]);
        assert!(forms.contains(&"ab01ff".to_string()));
        assert!(forms.contains(&"AB01FF".to_string()));
        assert!(forms.contains(&"171, 1, 255".to_string()));
        assert!(forms.contains(&"qwH/".to_string()));
        assert!(forms.contains(&"qwH_".to_string()));
    }

    #[test]
    fn a_log_with_a_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        std::fs::write(&log, "INFO fine\nDEBUG kek=ab01ff\n").unwrap();
        let err = check_no_secret_in_logs(std::slice::from_ref(&log), &text_forms(&[0xab, 1, 255]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.log"), "{err}");
        check_no_secret_in_logs(&[log], &text_forms(&[1, 2, 3])).unwrap();
    }
}
