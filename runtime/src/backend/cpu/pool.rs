//! The CPU backend's worker threads: started once, kept for the backend's life, and woken for
//! each parallel loop of an op without a fork/join of tasks.
//!
//! One loop runs at a time. The calling thread publishes it (a pointer and a new epoch) and
//! takes part; the workers, spinning on the epoch, join in within a microsecond; tasks are
//! handed out by an atomic counter, so uneven tasks balance. After a loop a worker keeps
//! checking for the next one for [`SPIN_TIME`] before it sleeps on a condition variable: a
//! forward pass's loops follow each other within microseconds (norms, adds and a decode
//! step's attention run on the calling thread between them), so the workers stay awake for
//! the whole pass and sleep when the caller does something else.
//!
//! It replaced rayon's per-op fork/join (DESIGN.md, "a persistent thread pool, not a rayon
//! fork per op"): there, a worker found no work in the serial stretch between two matmuls,
//! fell asleep after a few dozen `sched_yield`s and had to be woken by the next one through
//! the kernel: ≈ 56 context switches per TinyLlama decode step, 13% of the two CPUs idle, and
//! the scheduler ≈ 9% of its samples (perf, 2026-11-27).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker keeps checking for the next loop before it sleeps. The gaps inside
/// a forward pass are far shorter (tens of microseconds at most); a gap this long means the
/// caller went on to other work (sampling is shorter too; reading a prompt is longer).
const SPIN_TIME: Duration = Duration::from_micros(500);

/// A loop's body as the workers see it: called once per participant, it takes tasks until
/// none are left.
type Job<'a> = dyn Fn() + Sync + 'a;

/// What the caller and the workers share.
struct Shared {
    /// Incremented (after `job` is set) to publish a loop.
    epoch: AtomicUsize,
    /// The current loop's `&Job`, as a thin pointer to the fat reference on the caller's
    /// stack; valid from the `epoch` increment until `pending` falls to 0.
    job: AtomicPtr<&'static Job<'static>>,
    /// Workers that have not finished the current loop.
    pending: AtomicUsize,
    /// The first panic of a worker in the current loop, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Workers asleep, or about to be (see `Pool::publish`).
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A fixed set of threads that run one parallel loop at a time with the calling thread.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Set while a loop runs: a second caller (another thread, or a task of the running loop)
    /// runs its loop on its own thread instead of waiting for, or breaking into, this one.
    busy: AtomicBool,
}

impl Pool {
    /// A pool of `threads` participants: the calling thread and `threads - 1` workers.
    pub(crate) fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("llava-cpu-{i}"))
                    .spawn(move || work(&shared))
                    .expect("the OS can start worker threads")
            })
            .collect();
        Pool {
            shared,
            workers,
            busy: AtomicBool::new(false),
        }
    }

    /// How many threads take part in a loop, the caller's included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// `f(i)` for every `i` in `0..n`, spread over the pool; returns when all are done.
    pub(crate) fn for_each(&self, n: usize, f: impl Fn(usize) + Sync) {
        self.for_each_init(n, || (), |_, i| f(i));
    }

    /// [`Self::for_each`] with a state per participant (scratch buffers), made by `init` when
    /// the participant takes its first task.
    pub(crate) fn for_each_init<S>(
        &self,
        n: usize,
        init: impl Fn() -> S + Sync,
        f: impl Fn(&mut S, usize) + Sync,
    ) {
        let next = AtomicUsize::new(0);
        let take = || Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&i| i < n);
        let body = || {
            if let Some(first) = take() {
                let mut state = init();
                f(&mut state, first);
                while let Some(i) = take() {
                    f(&mut state, i);
                }
            }
        };
        if n <= 1 || self.workers.is_empty() {
            return body();
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Nested in a task of this pool's loop, or another thread's loop is running.
            return body();
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.busy);
        self.run(&body);
    }

    /// `f(i, chunk)` for every `len`-long chunk of `data` (the last may be shorter), chunk `i`
    /// starting at `i · len`.
    pub(crate) fn for_each_chunk<T: Send>(
        &self,
        data: &mut [T],
        len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        self.for_each_chunk_init(data, len, || (), |_, i, chunk| f(i, chunk));
    }

    /// [`Self::for_each_chunk`] with a state per participant, as [`Self::for_each_init`].
    pub(crate) fn for_each_chunk_init<T: Send, S>(
        &self,
        data: &mut [T],
        len: usize,
        init: impl Fn() -> S + Sync,
        f: impl Fn(&mut S, usize, &mut [T]) + Sync,
    ) {
        assert!(len > 0 || data.is_empty(), "chunks of length 0");
        let total = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.for_each_init(total.div_ceil(len.max(1)), init, |state, i| {
            let start = i * len;
            let chunk_len = len.min(total - start);
            // SAFETY: `start + chunk_len <= total`, so the chunk lies inside `data`, which is
            // borrowed exclusively for this call; `for_each_init` hands out each `i` once, so
            // no two chunks alive at the same time overlap.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), chunk_len) };
            f(state, i, chunk);
        });
    }

    /// Runs `body` on every worker and on this thread, and returns when all have finished;
    /// re-raises the first panic of any of them.
    fn run(&self, body: &Job<'_>) {
        let shared = &*self.shared;
        // SAFETY (of the workers' dereference in `work`): the pointer is to `body_ref`, which
        // lives on this stack frame until `pending` is 0 below; no worker reads it after that
        // (each reads it once per epoch, before its decrement). The lifetime is erased only
        // to store it; `body` outlives every use.
        let body_ref: &Job<'_> = body;
        let ptr = &body_ref as *const &Job<'_> as *mut &'static Job<'static>;
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        shared.job.store(ptr, Ordering::Relaxed);
        self.publish();
        let mine = panic::catch_unwind(AssertUnwindSafe(body));
        // Even if this thread's part panicked: `body` must outlive the workers' use of it.
        wait_for(|| shared.pending.load(Ordering::Acquire) == 0);
        let theirs = shared.panic.lock().expect("not poisoned").take();
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if let Some(payload) = theirs {
            panic::resume_unwind(payload);
        }
    }

    /// Makes the job visible to the workers and wakes any that sleep.
    fn publish(&self) {
        let shared = &*self.shared;
        // SeqCst on both sides (here and in `work`): either a worker about to sleep sees the
        // new epoch, or this sees it counted in `sleepers` and takes the lock to wake it, which
        // it holds from its count until it waits.
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep.lock().expect("not poisoned");
            shared.wake.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.publish();
        for worker in self.workers.drain(..) {
            // A worker catches its tasks' panics, so it only ends by seeing `stop`.
            worker.join().expect("worker threads do not panic");
        }
    }
}

/// A worker's life: wait for each epoch, run its job, report.
fn work(shared: &Shared) {
    let mut seen = 0;
    loop {
        let Some(epoch) = next_epoch(shared, seen) else {
            return;
        };
        seen = epoch;
        let ptr = shared.job.load(Ordering::Relaxed);
        // SAFETY: published with this epoch (the Acquire load in `next_epoch` pairs with the
        // caller's increment, which follows its store of `job`); valid until this worker's
        // `pending` decrement (see `Pool::run`).
        let body: &Job<'_> = unsafe { *ptr };
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(body)) {
            shared
                .panic
                .lock()
                .expect("not poisoned")
                .get_or_insert(payload);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Waits for an epoch other than `seen`: spinning for [`SPIN_TIME`], then asleep. `None` once
/// the pool is dropped.
fn next_epoch(shared: &Shared, seen: usize) -> Option<usize> {
    let changed = || {
        let epoch = shared.epoch.load(Ordering::SeqCst);
        (epoch != seen).then_some(epoch)
    };
    let start = Instant::now();
    while start.elapsed() < SPIN_TIME {
        for _ in 0..64 {
            if let Some(epoch) = changed() {
                return (!shared.stop.load(Ordering::Relaxed)).then_some(epoch);
            }
            std::hint::spin_loop();
        }
    }
    let mut lock = shared.sleep.lock().expect("not poisoned");
    shared.sleepers.fetch_add(1, Ordering::SeqCst);
    let epoch = loop {
        if let Some(epoch) = changed() {
            break epoch;
        }
        lock = shared.wake.wait(lock).expect("not poisoned");
    };
    shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    (!shared.stop.load(Ordering::Relaxed)).then_some(epoch)
}

/// Spins until `done()`, yielding the CPU after the first few thousand checks (a worker that
/// the OS has descheduled may take a while; the caller need not burn its core meanwhile).
fn wait_for(done: impl Fn() -> bool) {
    for _ in 0..4096 {
        if done() {
            return;
        }
        std::hint::spin_loop();
    }
    while !done() {
        std::thread::yield_now();
    }
}

/// A slice's base pointer, shared by the tasks of [`Pool::for_each_chunk_init`].
struct SendPtr<T>(*mut T);

// SAFETY: the tasks derive disjoint chunks of an exclusively borrowed slice of `T: Send` from
// it (see `for_each_chunk_init`), as `<[T]>::chunks_mut` across threads would.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method, so that closures capture the whole `SendPtr` (which is `Sync`), not its field.
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 8] {
            let pool = Pool::new(threads);
            assert_eq!(pool.threads(), threads);
            for n in [0, 1, 2, 7, 1000] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(n, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{threads} threads, {n} tasks"
                );
            }
        }
    }

    /// Slow tasks on every thread: the caller must not return while a worker still runs one.
    #[test]
    fn the_caller_returns_after_every_task_has_finished() {
        let pool = Pool::new(4);
        for _ in 0..20 {
            let finished = AtomicUsize::new(0);
            pool.for_each(8, |i| {
                std::thread::sleep(Duration::from_micros(200 * (i as u64 % 3)));
                finished.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(finished.load(Ordering::Relaxed), 8);
        }
    }

    #[test]
    fn chunks_cover_the_slice_once_with_a_short_last_one() {
        let pool = Pool::new(3);
        for (total, len) in [(0, 4), (10, 3), (12, 4), (5, 8), (1000, 7)] {
            let mut data = vec![0usize; total];
            let states = AtomicUsize::new(0);
            pool.for_each_chunk_init(
                &mut data,
                len,
                || states.fetch_add(1, Ordering::Relaxed),
                |_, i, chunk| {
                    assert!(chunk.len() == len || (i + 1) * len >= total);
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v += i * len + j + 1;
                    }
                },
            );
            let want: Vec<usize> = (1..=total).collect();
            assert_eq!(data, want, "{total} in chunks of {len}");
            assert!(
                states.load(Ordering::Relaxed) <= 3,
                "one state per participant"
            );
        }
    }

    /// Many short loops in a row, with gaps longer than the spin, so that the workers go to
    /// sleep between some of them and must be woken: a lost wake-up would hang the loops,
    /// which a watchdog turns into a failure.
    #[test]
    fn loops_after_the_workers_sleep_still_run() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = Pool::new(4);
            let total = AtomicUsize::new(0);
            for round in 0..2000 {
                if round % 100 == 0 {
                    std::thread::sleep(SPIN_TIME * 3);
                }
                pool.for_each(4, |_| {
                    total.fetch_add(1, Ordering::Relaxed);
                });
            }
            done.send(total.load(Ordering::Relaxed)).unwrap();
        });
        let total = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the loops finish (a worker missed its wake-up?)");
        assert_eq!(total, 8000);
    }

    #[test]
    fn a_nested_loop_runs_on_the_calling_task() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.for_each(4, |_| {
            pool.for_each(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn loops_from_several_threads_all_complete() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.for_each(3, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3);
    }

    /// A task's panic reaches the caller (whichever thread ran it) after every participant
    /// has finished, and the pool still works afterwards.
    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_survives() {
        let pool = Pool::new(3);
        for bad in [0, 5, 63] {
            let done = AtomicUsize::new(0);
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.for_each(64, |i| {
                    if i == bad {
                        panic!("task {i} failed");
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                })
            }));
            let payload = result.expect_err("the panic reaches the caller");
            let message = payload
                .downcast_ref::<String>()
                .expect("a formatted message");
            assert_eq!(message, &format!("task {bad} failed"));
            assert!(done.load(Ordering::Relaxed) < 64);
        }
        let total = AtomicUsize::new(0);
        pool.for_each(100, |_| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 100);
    }
}
