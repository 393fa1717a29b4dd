//! Noticing that kata-agent unmounted a container's root: nobody tells Veil, so a thread
//! watches the mount table.
//!
//! `/proc/self/mountinfo` is pollable: `poll` reports `POLLPRI | POLLERR` on it whenever
//! the mount namespace's table changed since the last poll. The watcher thread waits for
//! that (or [`GuestOptions::watch_interval`](crate::GuestOptions::watch_interval), which
//! bounds a missed change, or its stop signal), then calls its check, which releases the
//! containers whose root overlay is gone.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The running watcher; [`Watcher::stop`] (or dropping it) ends the thread.
pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts a thread that calls `check` after every mount table change and at least
    /// every `interval`, until stopped.
    pub fn start(interval: Duration, check: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let mountinfo = File::open("/proc/self/mountinfo")?;
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor owned by nothing else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, wake2) = (stop.clone(), wake.clone());
        let timeout = i32::try_from(interval.as_millis())
            .unwrap_or(i32::MAX)
            .max(1);
        let thread = std::thread::Builder::new()
            .name("veil-guest-watch".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    let mut fds = [
                        libc::pollfd {
                            fd: mountinfo.as_raw_fd(),
                            events: libc::POLLPRI,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: wake2.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: fds is a valid array of two pollfd for the call's duration.
                    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
                    if rc < 0 {
                        let err = std::io::Error::last_os_error();
                        if err.kind() != std::io::ErrorKind::Interrupted {
                            tracing::warn!(error = %err, "polling the mount table failed; checking periodically");
                            std::thread::sleep(interval);
                        }
                    }
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    check();
                }
            })?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}
