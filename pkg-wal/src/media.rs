//! Media errors under the log's read-only mappings: a `SIGBUS` becomes an
//! error for the bytes it hit, not the death of the process.
//!
//! The log's segments are read through shared read-only mappings
//! ([`crate::storage::MmapStorage`]), and the write-back cache keeps
//! payloads lent from them ([`crate::LoggedBytes`]). When the kernel must
//! read a page of such a mapping back from the disk and the disk answers
//! with an I/O error (a bad sector, a vanished device, a file truncated
//! under the mapping), the reading thread gets `SIGBUS`, whose default
//! action kills the process, and with it every mount.
//!
//! This module installs one process-wide `SIGBUS` handler (on the first
//! [`register`]). For a fault inside a registered mapping, the handler
//! records the page as *poisoned* in a fixed table and maps an anonymous
//! page of zeros over it (`mmap(MAP_FIXED)`, a plain system call, safe in
//! a signal handler on Linux), then returns: the faulting load retries and
//! reads zeros. Zeros are never data: every reader of mapped bytes calls
//! [`check`] after it used them (copied them out, checked a CRC), which
//! fails for any range that touches a poisoned page. The poison stays for
//! the life of the mapping, so later readers of the same page fail too.
//! The same trick (replace the page, remember it, fail the read) is how
//! databases that read through `mmap` survive media errors; the choice
//! over `pread` here keeps the cache's zero-copy lending of log bytes.
//!
//! Faults outside registered mappings, or more poisoned pages than the
//! table holds ([`MAX_POISONED`]), go to the handler that was installed
//! before (the default one kills the process, as without this module).
//!
//! Ordering: the handler writes the table entry before it replaces the
//! page, so a thread that reads the zero page afterwards (on any core:
//! the page-table change is a system call with its own barriers) finds
//! the entry in its [`check`].

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most mappings registered at once (the log's segment files: a few
/// dozen in practice). A mapping that does not fit is simply not
/// protected: a fault there behaves as without this module.
pub const MAX_MAPPINGS: usize = 1024;

/// Most pages poisoned at once (4 MiB of unreadable log with 4 KiB
/// pages). Past it, a fault behaves as without this module.
pub const MAX_POISONED: usize = 1024;

/// A range that touches a page the disk could not read (see the module
/// docs). The bytes there are lost; the caller answers `EIO` for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("media error: the disk could not read a page of the log")]
pub struct MediaError {
    /// Start address of the first poisoned page the range touches; 0
    /// for a copy made from such a page.
    pub page: usize,
}

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);

/// Registered mappings: `start == 0` is a free slot.
static MAPPINGS: [Slot; MAX_MAPPINGS] = [EMPTY_SLOT; MAX_MAPPINGS];
/// Poisoned page addresses: 0 is a free slot.
static POISONED: [AtomicUsize; MAX_POISONED] = [ZERO; MAX_POISONED];
/// How many pages were ever poisoned (so [`check`] is one load while the
/// disk is healthy).
static EVER_POISONED: AtomicUsize = AtomicUsize::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
/// The `sigaction` that was in place before ours (written once, before
/// ours is installed; read only by the handler).
static mut PREVIOUS: Option<libc::sigaction> = None;

/// Protects the mapping `start..start + len` (see the module docs).
/// Returns `false` if the table is full (the mapping then stays
/// unprotected). Call [`unregister`] before the mapping goes.
pub fn register(start: *const u8, len: usize) -> bool {
    install();
    let start = start as usize;
    if start == 0 || len == 0 {
        return false;
    }
    for slot in &MAPPINGS {
        if slot
            .start
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // Claimed (usize::MAX matches no fault address, see `owner`).
            slot.len.store(len, Ordering::Release);
            slot.start.store(start, Ordering::Release);
            return true;
        }
    }
    false
}

/// Stops protecting the mapping registered at `start` and forgets its
/// poisoned pages (their addresses may be reused once it is unmapped).
/// Call before unmapping.
pub fn unregister(start: *const u8) {
    let start = start as usize;
    for slot in &MAPPINGS {
        if slot.start.load(Ordering::Acquire) == start {
            let len = slot.len.load(Ordering::Acquire);
            for p in &POISONED {
                let page = p.load(Ordering::Acquire);
                if page != 0 && page >= start && page < start + len {
                    p.store(0, Ordering::Release);
                }
            }
            slot.len.store(0, Ordering::Release);
            slot.start.store(0, Ordering::Release);
            return;
        }
    }
}

/// `Err` if `bytes` touch a poisoned page: they were read as zeros where
/// the disk failed. Call after using bytes read from a log mapping (a
/// copy made before the call is suspect until it returns `Ok`). One
/// atomic load while no page was ever poisoned.
pub fn check(bytes: &[u8]) -> Result<(), MediaError> {
    if EVER_POISONED.load(Ordering::Acquire) == 0 || bytes.is_empty() {
        return Ok(());
    }
    let page_size = PAGE_SIZE.load(Ordering::Relaxed);
    let (start, end) = (
        bytes.as_ptr() as usize,
        bytes.as_ptr() as usize + bytes.len(),
    );
    for p in &POISONED {
        let page = p.load(Ordering::Acquire);
        if page != 0 && page < end && page + page_size > start {
            return Err(MediaError { page });
        }
    }
    Ok(())
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if ps > 0 {
            PAGE_SIZE.store(ps as usize, Ordering::Relaxed);
        }
        // SAFETY: `act` and `old` are valid sigaction structs; the handler
        // has the SA_SIGINFO signature. PREVIOUS is written here once,
        // before the handler that reads it can run.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut act.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
                PREVIOUS = Some(old);
                libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
            }
        }
    });
}

/// The registered mapping holding `addr`, if any.
fn owner(addr: usize) -> bool {
    MAPPINGS.iter().any(|s| {
        let start = s.start.load(Ordering::Acquire);
        start != 0
            && start != usize::MAX
            && addr >= start
            && addr - start < s.len.load(Ordering::Acquire)
    })
}

/// Records `page` as poisoned; `false` if the table is full.
fn poison(page: usize) -> bool {
    for p in &POISONED {
        if p.load(Ordering::Acquire) == page {
            return true;
        }
        if p.compare_exchange(0, page, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            EVER_POISONED.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    false
}

/// The `SIGBUS` handler. Only atomics and system calls: async-signal-safe.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
    if owner(addr) && poison(page) {
        // SAFETY: `page` lies in a registered read-only mapping, which
        // stays mapped while registered; replacing one page of it with
        // zeros changes no memory Rust code holds a mutable reference to.
        let p = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE_SIZE.load(Ordering::Relaxed),
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return;
        }
    }
    // Not ours, or nothing we can do: what would have happened anyway.
    // SAFETY: PREVIOUS was written before this handler was installed.
    let previous = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    match previous {
        Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            // SAFETY: calling the handler that was installed before, with
            // the signature its flags say it has.
            unsafe {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(old.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                    f(sig);
                }
            }
        }
        _ => {
            // Back to the default action; returning re-runs the faulting
            // load, which now kills the process with SIGBUS.
            // SAFETY: a zeroed sigaction with SIG_DFL is valid.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file truncated under its mapping faults like a bad sector
    /// (`SIGBUS` on the next read of a page past the new end). The read
    /// returns, the process lives, and `check` fails for exactly the
    /// ranges on that page; the pages still backed by the file are fine.
    #[test]
    fn a_fault_in_a_registered_mapping_poisons_its_page_and_check_fails() {
        let ps = {
            install();
            PAGE_SIZE.load(Ordering::Relaxed)
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 4 * ps]).unwrap();
        f.sync_all().unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the test truncates the file under the mapping on
        // purpose; the handler under test turns the fault into zeros.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        assert!(register(map.as_ptr(), map.len()));
        assert!(check(&map[..]).is_ok());
        // Cut the file to two pages: pages 2 and 3 now fault.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2 * ps as u64)
            .unwrap();
        let copy = map[2 * ps + 10..2 * ps + 20].to_vec();
        assert_eq!(copy, vec![0u8; 10], "the poisoned page reads as zeros");
        let err = check(&map[2 * ps + 10..2 * ps + 20]).unwrap_err();
        assert_eq!(err.page, map.as_ptr() as usize + 2 * ps);
        assert!(check(&map[ps..3 * ps]).is_err(), "a range across it");
        assert!(check(&map[..2 * ps]).is_ok(), "pages before it");
        assert_eq!(&map[..2 * ps], &vec![7u8; 2 * ps][..]);
        // Unregistered, its poison is forgotten (the addresses go back to
        // the system with the mapping).
        unregister(map.as_ptr());
        let base = map.as_ptr() as usize;
        drop(map);
        assert!(POISONED.iter().all(|p| {
            let a = p.load(Ordering::Relaxed);
            a < base || a >= base + 4 * ps
        }));
    }
}
