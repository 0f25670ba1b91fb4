//! Virtual time: a single-threaded executor whose clock jumps to the next timer, and the
//! [`Sleeper`] that waits on it.
//!
//! Every future of a run (calls, probes, the orchestrator) is polled here, one at a time, in a
//! fixed order: tasks run in the order they were woken, timers fire in the order of their due
//! time and then of their creation. Nothing depends on the wall clock or on thread scheduling,
//! so a run is the same on every machine.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use futures::task::ArcWake;
use parking_lot::Mutex;

use crate::clock::{Clock, ManualClock, Timestamp};
use crate::engine::Sleeper;

/// The timers of a run, keyed by (due ms, creation order).
#[derive(Debug, Default)]
struct Timers {
    next_id: u64,
    pending: BTreeMap<(u64, u64), Waker>,
}

/// Virtual time: a [`ManualClock`] and the timers waiting on it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VirtualTime {
    clock: ManualClock,
    timers: Arc<Mutex<Timers>>,
}

impl VirtualTime {
    /// Virtual time starting at `start`.
    #[must_use]
    pub fn new(start: Timestamp) -> Self {
        VirtualTime {
            clock: ManualClock::new(start),
            timers: Arc::new(Mutex::new(Timers::default())),
        }
    }

    /// The clock (give it to the engine).
    #[must_use]
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Now.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A future completing once virtual time reaches `now + d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        let due = self.now().saturating_add(d).as_millis();
        Sleep {
            time: self.clone(),
            due,
            key: None,
        }
    }

    /// The earliest timer's due time.
    fn next_due(&self) -> Option<u64> {
        self.timers
            .lock()
            .pending
            .keys()
            .next()
            .map(|(due, _)| *due)
    }

    /// Sets the clock to `t` and wakes every timer due by then, in order.
    fn advance_to(&self, t: Timestamp) {
        self.clock.set(t);
        let due: Vec<Waker> = {
            let mut timers = self.timers.lock();
            let later = timers
                .pending
                .split_off(&(t.as_millis().saturating_add(1), 0));
            let now = std::mem::replace(&mut timers.pending, later);
            now.into_values().collect()
        };
        for w in due {
            w.wake();
        }
    }
}

/// A virtual-time sleep (see [`VirtualTime::sleep`]).
#[derive(Debug)]
#[must_use]
pub struct Sleep {
    time: VirtualTime,
    due: u64,
    key: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.time.now().as_millis() >= self.due {
            if let Some(k) = self.key.take() {
                self.time.timers.lock().pending.remove(&k);
            }
            return Poll::Ready(());
        }
        let mut timers = self.time.timers.lock();
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = (self.due, timers.next_id);
                timers.next_id += 1;
                k
            }
        };
        timers.pending.insert(key, cx.waker().clone());
        drop(timers);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.time.timers.lock().pending.remove(&k);
        }
    }
}

/// The [`Sleeper`] of a simulation: backoff and deadlines wait in virtual time.
#[derive(Debug, Clone)]
pub struct VirtualSleeper(pub VirtualTime);

#[async_trait]
impl Sleeper for VirtualSleeper {
    async fn sleep(&self, d: Duration) {
        self.0.sleep(d).await;
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

struct TaskWaker {
    id: usize,
    queued: AtomicBool,
    ready: Arc<Mutex<VecDeque<usize>>>,
}

impl ArcWake for TaskWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        if !arc_self.queued.swap(true, Ordering::AcqRel) {
            arc_self.ready.lock().push_back(arc_self.id);
        }
    }
}

/// The executor: spawned tasks run until they wait on a timer; [`Executor::advance`] moves
/// virtual time to the next timer.
pub(crate) struct Executor {
    time: VirtualTime,
    tasks: Vec<Option<(Task, Arc<TaskWaker>)>>,
    free: Vec<usize>,
    ready: Arc<Mutex<VecDeque<usize>>>,
    live: usize,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("live", &self.live)
            .finish()
    }
}

impl Executor {
    pub(crate) fn new(time: VirtualTime) -> Self {
        Executor {
            time,
            tasks: Vec::new(),
            free: Vec::new(),
            ready: Arc::new(Mutex::new(VecDeque::new())),
            live: 0,
        }
    }

    /// Spawns a task; it first runs at the next [`Executor::run_ready`].
    pub(crate) fn spawn(&mut self, fut: impl Future<Output = ()> + 'static) {
        let id = self.free.pop().unwrap_or(self.tasks.len());
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(true),
            ready: Arc::clone(&self.ready),
        });
        let entry = Some((Box::pin(fut) as Task, waker));
        if id == self.tasks.len() {
            self.tasks.push(entry);
        } else if let Some(slot) = self.tasks.get_mut(id) {
            *slot = entry;
        }
        self.live += 1;
        self.ready.lock().push_back(id);
    }

    /// Polls woken tasks until none is ready.
    pub(crate) fn run_ready(&mut self) {
        loop {
            let Some(id) = self.ready.lock().pop_front() else {
                return;
            };
            let Some(Some((task, waker))) = self.tasks.get_mut(id) else {
                continue;
            };
            waker.queued.store(false, Ordering::Release);
            let w = futures::task::waker(Arc::clone(waker));
            let mut cx = Context::from_waker(&w);
            if task.as_mut().poll(&mut cx).is_ready() {
                if let Some(slot) = self.tasks.get_mut(id) {
                    *slot = None;
                }
                self.free.push(id);
                self.live -= 1;
            }
        }
    }

    /// Tasks not finished.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The earliest timer.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.time.next_due()
    }

    /// Moves virtual time to `t` (never backwards) and wakes the timers due.
    pub(crate) fn advance(&mut self, t: Timestamp) {
        let t = t.max(self.time.now());
        self.time.advance_to(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex as PMutex;

    #[test]
    fn tasks_wake_in_order_of_due_time_then_creation_and_the_clock_jumps_to_each() {
        let time = VirtualTime::new(Timestamp::from_millis(1_000));
        let mut exec = Executor::new(time.clone());
        let log = Arc::new(PMutex::new(Vec::new()));
        for (name, ms) in [("c", 300u64), ("a", 100), ("b", 300), ("z", 0)] {
            let (t, log) = (time.clone(), Arc::clone(&log));
            exec.spawn(async move {
                t.sleep(Duration::from_millis(ms)).await;
                log.lock().push((name, t.now().as_millis()));
            });
        }
        exec.run_ready();
        while let Some(due) = exec.next_due() {
            exec.advance(Timestamp::from_millis(due));
            exec.run_ready();
        }
        assert_eq!(exec.live(), 0);
        assert_eq!(
            *log.lock(),
            [("z", 1_000), ("a", 1_100), ("c", 1_300), ("b", 1_300)]
        );
    }

    #[test]
    fn a_dropped_sleep_leaves_no_timer_behind() {
        let time = VirtualTime::new(Timestamp::from_millis(0));
        let mut exec = Executor::new(time.clone());
        let t = time.clone();
        exec.spawn(async move {
            let long = t.sleep(Duration::from_secs(60));
            let short = t.sleep(Duration::from_secs(1));
            // The short one wins the race; the long one is dropped.
            futures::pin_mut!(long, short);
            let _ = futures::future::select(short, long).await;
        });
        exec.run_ready();
        assert_eq!(exec.next_due(), Some(1_000));
        exec.advance(Timestamp::from_millis(1_000));
        exec.run_ready();
        assert_eq!(exec.live(), 0);
        assert_eq!(exec.next_due(), None);
    }
}
