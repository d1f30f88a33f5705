//! A CPU trial's out-of-memory end, written as the process dies.
//!
//! A CPU trial runs under a data limit (`RLIMIT_DATA`); when an allocation fails there, Rust
//! prints `memory allocation of N bytes failed` and aborts: no error value exists for the trial
//! to turn into its end. So the binary's allocator is `GuardedAllocator`, which passes
//! everything to the system's; when an allocation fails while the guard is armed (`arm`, by
//! `sweep train`'s sink once the trial knows its micro-batch), it first writes result.json as
//! `TrialEnd::OutOfMemory` at that micro-batch, then returns the failure (and std aborts).
//!
//! Nothing may allocate there: the file's bytes, its path and its staging path are prepared when
//! the guard is armed, the byte count is written into a stack buffer, and only `open`, `write`,
//! `close` and `rename` are called. The file is staged and renamed like `util::fs::write_atomic`,
//! so a reader sees the whole end or none. The progress stream gets no end line here: the
//! orchestrator reads result.json once the process has gone. A failure that a library handles
//! (a fallible reservation) also writes the file; the trial's real end replaces it later.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::protocol::trial::{TrialEnd, TrialResult};

/// The system's allocator, with the out-of-memory end written when an allocation fails.
pub struct GuardedAllocator;

// SAFETY: every call is passed to `System` unchanged; on a failure the guard writes a file
// without allocating and the failure is returned as it came.
unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if ptr.is_null() {
            on_failure(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if ptr.is_null() {
            on_failure(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let grown = System.realloc(ptr, layout, new_size);
        if grown.is_null() {
            on_failure(new_size);
        }
        grown
    }
}

/// What the guard writes, prepared while memory was there.
struct Prepared {
    staging: CString,
    path: CString,
    /// result.json before and after the failed allocation's byte count.
    head: Vec<u8>,
    tail: Vec<u8>,
}

static PREPARED: AtomicPtr<Prepared> = AtomicPtr::new(std::ptr::null_mut());
/// Set by the first failure: only one thread writes the file.
static FIRED: AtomicBool = AtomicBool::new(false);

const PLACEHOLDER: &str = "@BYTES@";

/// The out-of-memory end of a trial at `micro_batch` that failed to allocate `bytes` (std's own
/// words for it).
pub fn end_for(micro_batch: u32, bytes: &str) -> TrialEnd {
    TrialEnd::OutOfMemory {
        micro_batch,
        message: format!("memory allocation of {bytes} bytes failed"),
    }
}

/// result.json's bytes around the byte count, as `util::fs::write_atomic` would write the end.
fn rendered(micro_batch: u32) -> Option<(Vec<u8>, Vec<u8>)> {
    let bytes = serde_json::to_vec_pretty(&end_for(micro_batch, PLACEHOLDER)).ok()?;
    let at = bytes
        .windows(PLACEHOLDER.len())
        .position(|w| w == PLACEHOLDER.as_bytes())?;
    Some((
        bytes[..at].to_vec(),
        bytes[at + PLACEHOLDER.len()..].to_vec(),
    ))
}

/// Arms the guard for the trial in `dir`, running at `micro_batch`; arming again replaces it.
/// Only `sweep train` arms it.
pub fn arm(dir: &Path, micro_batch: u32) {
    let path = dir.join(TrialResult::FILE);
    let staging = dir.join(format!(".{}.out-of-memory", TrialResult::FILE));
    let (Ok(path), Ok(staging), Some((head, tail))) = (
        CString::new(path.as_os_str().as_encoded_bytes()),
        CString::new(staging.as_os_str().as_encoded_bytes()),
        rendered(micro_batch),
    ) else {
        return;
    };
    let prepared = Box::into_raw(Box::new(Prepared {
        staging,
        path,
        head,
        tail,
    }));
    // The one it replaces is left allocated: a failing thread may be reading it.
    PREPARED.swap(prepared, Ordering::SeqCst);
}

/// Disarms the guard: the trial's end is being written by other means.
pub fn disarm() {
    PREPARED.swap(std::ptr::null_mut(), Ordering::SeqCst);
}

/// Writes the prepared end for a failed allocation of `size` bytes, once.
fn on_failure(size: usize) {
    let prepared = PREPARED.load(Ordering::SeqCst);
    if prepared.is_null() {
        return;
    }
    if FIRED.swap(true, Ordering::SeqCst) {
        // Another thread failed first and writes the end: let its abort end the process, so
        // that two threads do not print their failures into each other in the trial's log.
        // Should the process live on (the first failure was handled), this one fails after a
        // second.
        for _ in 0..1000 {
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            // SAFETY: nanosleep reads the struct it is given and writes nothing (no remainder).
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
        return;
    }
    // SAFETY: `prepared` came from `Box::into_raw` and is never freed.
    let prepared = unsafe { &*prepared };
    let mut digits = [0u8; 20];
    let count = decimal(size, &mut digits);
    write_file(prepared, count);
}

/// `value` in decimal at the end of `buffer`: the written digits.
fn decimal(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// The staged file, then the rename; with libc calls only.
fn write_file(prepared: &Prepared, count: &[u8]) {
    // SAFETY: the paths are NUL-terminated CStrings that outlive the calls; the descriptor is
    // this function's own and closed before the rename.
    unsafe {
        let fd = libc::open(
            prepared.staging.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        if fd < 0 {
            return;
        }
        let whole =
            write_all(fd, &prepared.head) && write_all(fd, count) && write_all(fd, &prepared.tail);
        libc::close(fd);
        if whole {
            libc::rename(prepared.staging.as_ptr(), prepared.path.as_ptr());
        }
    }
}

/// Writes all of `bytes` to `fd`; false on an error.
fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe `bytes`.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prepared_file_with_its_byte_count_is_the_out_of_memory_end() {
        let (head, tail) = rendered(16).unwrap();
        let mut digits = [0u8; 20];
        for size in [0usize, 7, 4096, usize::MAX] {
            let count = decimal(size, &mut digits);
            assert_eq!(count, size.to_string().as_bytes());
            let text = [head.as_slice(), count, tail.as_slice()].concat();
            let end: TrialEnd = serde_json::from_slice(&text).unwrap();
            assert_eq!(end, end_for(16, &size.to_string()));
        }
    }

    #[test]
    fn the_written_file_reads_as_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (head, tail) = rendered(3).unwrap();
        let prepared = Prepared {
            staging: CString::new(dir.path().join(".staged").as_os_str().as_encoded_bytes())
                .unwrap(),
            path: CString::new(
                dir.path()
                    .join(TrialResult::FILE)
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .unwrap(),
            head,
            tail,
        };
        write_file(&prepared, b"1024");
        assert_eq!(TrialEnd::read(dir.path()).unwrap(), end_for(3, "1024"));
        assert!(!dir.path().join(".staged").exists());
    }
}
