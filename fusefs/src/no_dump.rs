//! Leaving plaintext out of core dumps: [`exclude_from_core_dumps`] marks the whole pages
//! inside a buffer `MADV_DONTDUMP`.
//!
//! The process itself is non-dumpable (the daemon and `veil mount` call
//! `veil_daemon::no_core_dumps::forbid_core_dumps` first), so the kernel writes no core
//! file at all; this is the second line, for dumps taken anyway (`gcore` by root, or a
//! process started dumpable by mistake). Only the page-aligned inside of a buffer can be marked: the
//! partial pages at its ends are shared with other allocations, and buffers smaller than
//! [`MIN_ADVISED_LEN`] are left alone (their pages mostly hold other data, and marking
//! them would split the heap's mappings into many). The mark stays on the pages after the
//! buffer is freed, so they remain out of dumps when reused.

/// Buffers shorter than this are not marked (see the module documentation).
pub const MIN_ADVISED_LEN: usize = 64 << 10;

/// Marks the whole pages inside `buf` `MADV_DONTDUMP`; returns how many bytes were
/// marked (0 for a short buffer, or if the kernel refused: this is best effort).
pub fn exclude_from_core_dumps(buf: &[u8]) -> usize {
    if buf.len() < MIN_ADVISED_LEN {
        return 0;
    }
    let page = page_size();
    let start = buf.as_ptr() as usize;
    let Some(end) = start.checked_add(buf.len()) else {
        return 0;
    };
    let first = start.div_ceil(page) * page;
    let last = end / page * page;
    if last <= first {
        return 0;
    }
    let len = last - first;
    // SAFETY: [first, last) lies inside `buf`, which is mapped; MADV_DONTDUMP changes only
    // what a core dump includes, never the memory's contents or mapping.
    let rc = unsafe { libc::madvise(first as *mut libc::c_void, len, libc::MADV_DONTDUMP) };
    if rc == 0 {
        len
    } else {
        0
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the mapping holding `addr` has the `dd` (do not dump) flag, from
    /// `/proc/self/smaps`.
    fn dont_dump_at(addr: usize) -> bool {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split(' ').next().unwrap_or_default();
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside && line.starts_with("VmFlags:") {
                return line.split_whitespace().any(|f| f == "dd");
            }
        }
        false
    }

    #[test]
    fn large_buffers_are_marked_small_ones_are_not() {
        let big = vec![7u8; 1 << 20];
        let marked = exclude_from_core_dumps(&big);
        let page = page_size();
        assert!(marked >= (1 << 20) - 2 * page, "{marked}");
        let inside = (big.as_ptr() as usize).div_ceil(page) * page;
        assert!(dont_dump_at(inside), "the buffer's pages are not marked dd");
        assert_eq!(big[12345], 7, "contents are untouched");
        let small = vec![1u8; 1000];
        assert_eq!(exclude_from_core_dumps(&small), 0);
    }
}
