//! Keeping blocking file I/O off the caller's async executor, without depending on a runtime.
//!
//! The built-in durable stores ([`FileCheckpointStore`](crate::checkpoint::FileCheckpointStore))
//! expose async traits but do blocking work (open, read, write, `fsync`, `rename`, file locks).
//! Running that work inside a future would stall whatever executor polls it, so each store hands
//! it to an [`Offload`] and awaits the result through a `futures` oneshot channel. An `Offload`
//! is one of:
//!
//! - [`Offload::pool`]: a small pool of dedicated `std::thread` workers owned by the store (the
//!   default). Works under any executor, including `futures::executor::block_on`.
//! - [`Offload::spawner`]: a caller-supplied hook, e.g. `tokio::task::spawn_blocking`, so the
//!   work runs on the caller's own blocking pool.
//! - [`Offload::inline`]: runs the work on the polling thread. Only for callers that are
//!   synchronous anyway (a CLI, a `block_on` in a test); it blocks the executor by design.
//!
//! ```
//! use downshift::blocking::Offload;
//!
//! let offload = Offload::pool("example", 2).unwrap();
//! let answer = futures::executor::block_on(offload.run(|| 6 * 7)).unwrap();
//! assert_eq!(answer, 42);
//! ```

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc;

use futures::channel::oneshot;
use parking_lot::Mutex;

/// A unit of blocking work handed to an [`Offload`] spawner hook.
pub type BlockingJob = Box<dyn FnOnce() + Send + 'static>;

type SpawnHook = dyn Fn(BlockingJob) + Send + Sync + 'static;

/// Where a store runs its blocking work. Cheap to clone; clones share the same workers.
#[derive(Clone)]
pub struct Offload {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Pool {
        jobs: mpsc::Sender<BlockingJob>,
        threads: usize,
    },
    Spawner(Arc<SpawnHook>),
    Inline,
}

impl Offload {
    /// Starts `threads` dedicated worker threads (at least one) named `downshift-{name}-{i}`.
    /// The workers exit when the last clone of this `Offload` is dropped.
    ///
    /// # Errors
    /// When the operating system refuses to start a thread.
    pub fn pool(name: &str, threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<BlockingJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("downshift-{name}-{i}"))
                .spawn(move || {
                    loop {
                        // Holding the lock while waiting is fine: idle workers queue behind it.
                        let job = rx.lock().recv();
                        match job {
                            // A panicking job drops its result sender; the caller sees the
                            // cancellation, and the worker stays alive for the next job.
                            Ok(job) => {
                                let _ = catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(_) => break,
                        }
                    }
                })?;
        }
        Ok(Offload {
            inner: Inner::Pool { jobs: tx, threads },
        })
    }

    /// Hands every job to `spawn`, e.g. `|job| { tokio::task::spawn_blocking(job); }`.
    ///
    /// `spawn` must eventually run the job exactly once; if it drops the job, the waiting
    /// operation fails with an "unavailable" error instead of hanging.
    #[must_use]
    pub fn spawner(spawn: impl Fn(BlockingJob) + Send + Sync + 'static) -> Self {
        Offload {
            inner: Inner::Spawner(Arc::new(spawn)),
        }
    }

    /// Runs jobs on the thread that polls the future. This blocks that thread for the duration of
    /// the I/O: use it only from synchronous code (a CLI, `block_on` in a test).
    #[must_use]
    pub fn inline() -> Self {
        Offload {
            inner: Inner::Inline,
        }
    }

    /// Runs `work` off the current executor and returns its result.
    ///
    /// # Errors
    /// [`oneshot::Canceled`] when the job was dropped without running to completion (the workers
    /// are gone, the spawner dropped it, or it panicked).
    pub async fn run<T, F>(&self, work: F) -> Result<T, oneshot::Canceled>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match &self.inner {
            Inner::Inline => Ok(work()),
            Inner::Pool { jobs, .. } => {
                let (tx, rx) = oneshot::channel();
                let job: BlockingJob = Box::new(move || {
                    let _ = tx.send(work());
                });
                // A send error means the workers are gone: the job (and `tx`) is dropped and the
                // receiver reports the cancellation.
                let _ = jobs.send(job);
                rx.await
            }
            Inner::Spawner(spawn) => {
                let (tx, rx) = oneshot::channel();
                spawn(Box::new(move || {
                    let _ = tx.send(work());
                }));
                rx.await
            }
        }
    }
}

impl fmt::Debug for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Pool { threads, .. } => write!(f, "Offload::Pool({threads} threads)"),
            Inner::Spawner(_) => f.write_str("Offload::Spawner"),
            Inner::Inline => f.write_str("Offload::Inline"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_runs_work_off_the_calling_thread() {
        let offload = Offload::pool("test", 2).unwrap();
        let caller = std::thread::current().id();
        let worker =
            futures::executor::block_on(offload.run(|| std::thread::current().id())).unwrap();
        assert_ne!(caller, worker);
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let offload = Offload::pool("test", 1).unwrap();
        let r = futures::executor::block_on(offload.run(|| -> u8 { panic!("boom") }));
        assert!(r.is_err());
        assert_eq!(futures::executor::block_on(offload.run(|| 1)).unwrap(), 1);
    }

    #[test]
    fn a_spawner_that_drops_jobs_gives_an_error_not_a_hang() {
        let offload = Offload::spawner(drop);
        assert!(futures::executor::block_on(offload.run(|| 1)).is_err());
        let threaded = Offload::spawner(|job| {
            std::thread::spawn(job);
        });
        assert_eq!(futures::executor::block_on(threaded.run(|| 2)).unwrap(), 2);
    }
}
