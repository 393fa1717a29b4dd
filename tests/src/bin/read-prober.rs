//! `read-prober PATH SIZE [SEED]`: reads PATH (a 64 KiB block at a moving offset, its page
//! cache dropped first with `POSIX_FADV_DONTNEED`) until killed, printing one line per
//! read: `START_UNIX_NANOS TOOK_NANOS ok|ERROR`. With SEED (the file is
//! `veil_tests::lazy_image::random_bytes(SIZE, SEED)`), a block of other bytes is an
//! error too. The restart test runs it as a process of its
//! own: a test process holding a file of a FUSE mount open would block in every spawn
//! (closing it on exec sends FLUSH) while the mount's daemon is down.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes read at a time.
const BLOCK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(size)) = (args.get(1), args.get(2).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: read-prober PATH SIZE");
        std::process::exit(2);
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            println!("0 0 ERROR opening {path}: {e}");
            std::process::exit(1);
        }
    };
    let want = args
        .get(3)
        .and_then(|s| s.parse::<u64>().ok())
        .map(|seed| veil_tests::lazy_image::random_bytes(size as usize, seed));
    let mut buf = vec![0u8; BLOCK];
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        // SAFETY: fadvise on an open fd; DONTNEED only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let start = Instant::now();
        let read = file.read_exact_at(&mut buf, offset);
        let took = start.elapsed().as_nanos();
        let at = offset as usize;
        let status = match read {
            Ok(()) if want.as_ref().is_some_and(|w| w[at..at + BLOCK] != buf[..]) => {
                format!("ERROR wrong bytes at {offset}")
            }
            Ok(()) => "ok".to_string(),
            Err(e) => format!("ERROR {e}"),
        };
        let _ = writeln!(out, "{wall} {took} {status}");
        let _ = out.flush();
        offset = (offset + (1 << 20)) % size.saturating_sub(BLOCK as u64).max(1);
        std::thread::sleep(Duration::from_millis(5));
    }
}
