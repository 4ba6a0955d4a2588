//! Reading a memory-mapped input once, tensor by tensor, without keeping it resident.
//!
//! Every page of a mapped file that has been touched counts in the process's resident set
//! until it is unmapped, so a converter that reads a whole 2.2 GB checkpoint through its map
//! peaks at 2.6 GB RSS (measured, TinyLlama-1.1B F16) even though it holds one tensor at a
//! time. Each range is read once; dropping its pages afterwards keeps peak RSS near the
//! tensors in flight. The pages stay in the page cache, so nothing is read twice.

use memmap2::Mmap;
#[cfg(unix)]
use memmap2::{Advice, UncheckedAdvice};

/// Asks the kernel to read `start..end` ahead rather than fault it in page by page.
pub(crate) fn prefetch(map: &Mmap, start: usize, end: usize) {
    assert!(
        start <= end && end <= map.len(),
        "{start}..{end} of a map of {}",
        map.len()
    );
    #[cfg(unix)]
    let _ = map.advise_range(Advice::WillNeed, start, end - start);
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

/// Drops `start..end` (widened to whole pages) from the resident set.
pub(crate) fn release(map: &Mmap, start: usize, end: usize) {
    // memmap2 checks the start, not the end: a range past the map would drop the pages of
    // whatever mapping follows it.
    assert!(
        start <= end && end <= map.len(),
        "{start}..{end} of a map of {}",
        map.len()
    );
    #[cfg(unix)]
    {
        // SAFETY: the range lies inside the map (asserted above). `Mmap` is a read-only shared
        // file mapping: MADV_DONTNEED only unmaps the
        // pages, and any later access (the neighbouring tensor on a shared page, say) faults
        // the same bytes back in from the file, which nobody rewrites while we read it (the
        // assumption under which it was mapped). No memory is freed or changed.
        let _ =
            unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start) };
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}
