//! The operator binary's memory allocator: jemalloc, tuned for a small
//! long-running controller.
//!
//! The image ships a static musl binary, and musl's allocator serialises
//! every allocation and free on one lock: with 10,000 bindings a restarted
//! operator spent over a third of its CPU waiting on that lock (`perf`) and
//! took 2.0–2.6 s to vouch for them all. jemalloc gives each thread a cache
//! and a few arenas; `docs/benchmarks.md` ("The allocator") has the
//! measurements behind the choice and the options below.

/// jemalloc serves every allocation of the `dbgrant` binary (the library
/// leaves the choice to whoever links it).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts: its `malloc_conf` (a weak
/// symbol in jemalloc, named with tikv-jemalloc-sys's `_rjem_` prefix).
/// The `_RJEM_MALLOC_CONF` environment variable still overrides them.
///
/// - `narenas:2`: jemalloc's default is four arenas per CPU of the *node*
///   (it does not see the container's CPU limit), each holding its own
///   free pages; a controller needs few.
/// - `background_thread:true`: a jemalloc thread returns freed pages on
///   time; without it pages are only returned when the operator allocates
///   again, so an idle operator kept the peak of its last burst.
/// - `dirty_decay_ms:1000`: give freed pages back after about a second
///   instead of ten, so a burst (a restart's first LIST, a bulk apply) does
///   not stay resident.
/// - `muzzy_decay_ms:0`: and release them outright, not lazily
///   (`MADV_FREE` pages still count in RSS until the kernel needs them).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Conf = Conf(OPTIONS.as_ptr());

/// The options in [`MALLOC_CONF`].
const OPTIONS: &std::ffi::CStr = c"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// A `const char *` jemalloc reads at start-up.
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: it points at a 'static C string nothing writes to.
unsafe impl Sync for Conf {}

#[cfg(test)]
mod tests {
    use tikv_jemalloc_ctl::raw;

    fn option<T: Copy>(name: &[u8]) -> T {
        // SAFETY: each name below is a jemalloc `opt.*` of type `T`
        // (jemalloc(3), MALLCTL NAMESPACE), NUL-terminated.
        unsafe { raw::read::<T>(name) }.expect("jemalloc answers mallctl")
    }

    #[test]
    fn jemalloc_serves_the_binary_with_its_options() {
        // Reading jemalloc's own view of its options proves both that it is
        // the allocator and that it found `_rjem_malloc_conf`.
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            eprintln!("_RJEM_MALLOC_CONF is set and overrides the built-in options; not checked");
            return;
        }
        assert_eq!(option::<u32>(b"opt.narenas\0"), 2);
        assert!(option::<bool>(b"opt.background_thread\0"));
        // The option asks for the threads; this says they run (jemalloc
        // turns them off where it cannot start them).
        assert!(option::<bool>(b"background_thread\0"), "jemalloc's background thread is not running");
        assert_eq!(option::<isize>(b"opt.dirty_decay_ms\0"), 1000);
        assert_eq!(option::<isize>(b"opt.muzzy_decay_ms\0"), 0);
    }
}
