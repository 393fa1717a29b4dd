//! The end of a scenario (the demo's flows, the containerd run test): stopping what it
//! started, in order, by PID, and recording what was found — leftover tasks, shims,
//! exits, processes still alive, mounts still below the scenario's directory.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::containerd::{process_alive, Containerd, Shutdown};
use crate::local_registry::LocalRegistry;
use crate::scenario::VeilSnapshotter;

/// What a scenario's clean-up found.
#[derive(Debug, Default, Clone)]
pub struct Cleanup {
    /// What containerd's shutdown found.
    pub shutdown: Shutdown,
    /// Exit status of the last veil-snapshotter on SIGTERM.
    pub veil_final_exit: Option<ExitStatus>,
    /// Processes the scenario started (name, PID).
    pub started: Vec<(String, u32)>,
    /// Of those, any still alive after clean-up (should be empty).
    pub still_alive: Vec<(String, u32)>,
    /// Mounts below the scenario directory after clean-up (should be empty).
    pub mounts_left: Vec<String>,
}

impl Cleanup {
    /// Shuts `containerd` down (leftover tasks and containers deleted, shims checked),
    /// stops `veil` (SIGTERM), unmounts what is left below `dir`, stops the `registry`,
    /// then records which of the processes are still alive and what is still mounted.
    pub fn run(
        dir: &Path,
        mut containerd: Containerd,
        veil: &mut VeilSnapshotter,
        registry: Option<LocalRegistry>,
    ) -> Self {
        let mut started = vec![("containerd".to_string(), containerd.pid())];
        let shutdown = containerd.shutdown();
        drop(containerd);
        let veil_final_exit = veil.stop();
        crate::mounts::unmount_below(dir);
        started.extend(
            veil.pids
                .iter()
                .enumerate()
                .map(|(i, pid)| (format!("veil-snapshotter #{}", i + 1), *pid)),
        );
        if let Some(mut r) = registry {
            started.push(("docker-registry".into(), r.pid()));
            r.stop();
        }
        std::thread::sleep(Duration::from_millis(100));
        let still_alive = started
            .iter()
            .filter(|(_, pid)| process_alive(*pid))
            .cloned()
            .collect();
        Self {
            shutdown,
            veil_final_exit,
            started,
            still_alive,
            mounts_left: crate::mounts::mounts_below(dir),
        }
    }

    /// What is wrong: processes still alive, mounts still there.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.still_alive.is_empty() {
            p.push(format!(
                "still alive after clean-up: {:?}",
                self.still_alive
            ));
        }
        if !self.mounts_left.is_empty() {
            p.push(format!(
                "still mounted after clean-up: {:?}",
                self.mounts_left
            ));
        }
        p
    }

    /// One line for people: how each part stopped and what was left.
    pub fn summary(&self) -> String {
        let s = &self.shutdown;
        let exit = |e: Option<ExitStatus>| e.map(|e| e.to_string()).unwrap_or_else(|| "?".into());
        format!(
            "containerd stopped ({}), veil-snapshotter stopped ({}); leftover tasks {}, \
             containers {}, shims {}, mounts {}; processes still alive: {}.",
            exit(s.exit),
            exit(self.veil_final_exit),
            s.tasks_killed.len(),
            s.containers_deleted.len(),
            s.shims_left.len(),
            self.all_mounts_left(),
            self.still_alive.len()
        )
    }

    /// Mounts left anywhere: below the scenario directory and below containerd's.
    pub fn all_mounts_left(&self) -> usize {
        self.shutdown.mounts_left.len() + self.mounts_left.len()
    }
}
