//! Keeping secrets out of core dumps: every Veil process that holds keys or plaintext
//! (the daemon, `veil mount`, `veil keyprovider serve`) calls [`forbid_core_dumps`] first.
//!
//! `prctl(PR_SET_DUMPABLE, 0)` makes the kernel write no core file for the process,
//! whatever `RLIMIT_CORE` and `kernel.core_pattern` say (piped handlers such as
//! systemd-coredump included), and lets only privileged processes (`CAP_SYS_PTRACE`)
//! attach to it or read its memory through `/proc/PID/mem`. The flag is reset by
//! `execve`, so each program sets it for itself. The plaintext cache's large buffers are
//! also marked `MADV_DONTDUMP` (`veil_fusefs::no_dump`), for dumps taken anyway (`gcore`
//! as root).

use crate::error::DaemonError;

/// Makes this process non-dumpable: no core file, no ptrace or `/proc/PID/mem` for
/// unprivileged users. Fails only if the kernel refuses, which callers treat as fatal.
pub fn forbid_core_dumps() -> Result<(), DaemonError> {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(DaemonError::Io {
            context: "making the process non-dumpable (prctl PR_SET_DUMPABLE 0)".into(),
            cause: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether this process is dumpable now (`prctl(PR_GET_DUMPABLE)`).
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no arguments and returns the flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) > 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_becomes_non_dumpable() {
        // Unit tests run in threads of one process: this one owns the flag (and nothing
        // else here depends on it).
        forbid_core_dumps().unwrap();
        assert!(!is_dumpable());
    }
}
