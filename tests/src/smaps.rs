//! The mappings of promoted files (`memfd:veil-promoted`, `veil_fusefs::promote`) in a
//! process, as `/proc/PID/smaps` shows them: how large, how much of each is locked, and
//! their flags (`dd`: left out of core dumps).

/// One mapping of a promoted file's memfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotedMapping {
    /// Its size, in KiB.
    pub size_kib: u64,
    /// How much of it is locked in memory, in KiB.
    pub locked_kib: u64,
    /// Its `VmFlags`.
    pub flags: String,
}

impl PromotedMapping {
    /// Locked whole and left out of core dumps.
    pub fn locked_and_undumped(&self) -> bool {
        self.locked_kib == self.size_kib && self.flags.split_whitespace().any(|f| f == "dd")
    }
}

/// The promoted files' mappings of process `pid` (none if it cannot be read).
pub fn promoted_mappings(pid: u32) -> Vec<PromotedMapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut found = Vec::new();
    let mut current: Option<PromotedMapping> = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            found.extend(current.take());
            if line.contains("/memfd:veil-promoted") {
                current = Some(PromotedMapping {
                    size_kib: 0,
                    locked_kib: 0,
                    flags: String::new(),
                });
            }
            continue;
        }
        let Some(m) = current.as_mut() else {
            continue;
        };
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            m.size_kib = kib();
        } else if line.starts_with("Locked:") {
            m.locked_kib = kib();
        } else if let Some(f) = line.strip_prefix("VmFlags:") {
            m.flags = f.trim().to_string();
        }
    }
    found.extend(current);
    found
}

/// Waits (up to `within`) until process `pid` has a promoted file of `bytes` mapped, and
/// checks that the mapping is locked whole and left out of core dumps.
pub fn wait_promoted(pid: u32, bytes: usize, within: std::time::Duration) -> anyhow::Result<()> {
    let want_kib = (bytes >> 10) as u64;
    let start = std::time::Instant::now();
    loop {
        let maps = promoted_mappings(pid);
        if let Some(m) = maps.iter().find(|m| m.size_kib == want_kib) {
            if !m.locked_and_undumped() {
                anyhow::bail!("the promoted file's mapping in process {pid} is not locked whole and dd: {m:?}");
            }
            return Ok(());
        }
        if start.elapsed() > within {
            anyhow::bail!("process {pid} has no promoted file of {bytes} bytes mapped: {maps:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Reads the file at `path` whole, again and again, until process `pid` has promoted it
/// (a promoted file of `want.len()` bytes mapped): the first read fills the plaintext
/// cache through Veil, a later open is answered by passthrough once the kernel's
/// `RELEASE` of the earlier handle has arrived. Every read must give exactly `want`.
/// Then checks the mapping as [`wait_promoted`] does and reads the file once more (by
/// passthrough now).
pub fn promote_by_reading(
    pid: u32,
    path: &std::path::Path,
    want: &[u8],
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let read_right = || -> anyhow::Result<()> {
        let got = std::fs::read(path)?;
        if got != want {
            anyhow::bail!(
                "{} read other bytes ({} bytes, {} wanted)",
                path.display(),
                got.len(),
                want.len()
            );
        }
        Ok(())
    };
    let want_kib = (want.len() >> 10) as u64;
    let start = std::time::Instant::now();
    loop {
        read_right()?;
        if promoted_mappings(pid)
            .iter()
            .any(|m| m.size_kib == want_kib)
        {
            break;
        }
        if start.elapsed() > within {
            anyhow::bail!(
                "process {pid} never promoted {} (read whole {:?} long)",
                path.display(),
                within
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_promoted(pid, want.len(), within)?;
    read_right()
}
