//! Tasks waiting for an LSN to be reached, woken by LSN.
//!
//! A commit waits for its record's end LSN twice: to be durable in the
//! local log ([`super::Log::wait_durable`]) and to be hardened by the
//! synchronous secondaries (`replication::primary`). A `watch` of the LSN
//! woke every waiting task at each move, and those it had not reached went
//! back to sleep. Here each task registers with the LSN it waits for, and
//! a move wakes the tasks it reaches, no other.
//!
//! # Rules
//! 1. **A move wakes whom it reaches, and only them**
//!    ([`LsnWaiters::wake_upto`]); a change that may alter what tasks wait
//!    for wakes them all ([`LsnWaiters::wake_all`]).
//! 2. **No wake-up is lost when the task registers before it checks, and
//!    the mover moves before it wakes.** Either the task's check sees the
//!    move, or its registration is in place when the wake-up runs; a
//!    wake-up before the task sleeps leaves a permit, so the sleep ends at
//!    once ([`tokio::sync::Notify::notify_one`]).
//! 3. **A task that stops waiting leaves no entry** ([`LsnWaiter`]'s
//!    `Drop`): a commit cancelled or failed for another reason.
//! 4. **Woken after the lock is let go.** A woken task may run at once on
//!    another worker and leave, and its leaving takes the lock: woken under
//!    it, it would find the lock held by the waker's next wake-up and sleep
//!    on it (a `futex` wait and wake, and two context switches, per commit
//!    at times). The tasks reached are taken off under the lock, a few at a
//!    time into a buffer on the stack, and woken once it is let go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Lsn;

/// The tasks waiting for LSNs, by LSN.
#[derive(Default)]
pub struct LsnWaiters {
    waiting: Mutex<ByLsn>,
}

#[derive(Default)]
struct ByLsn {
    next_id: u64,
    by_lsn: BTreeMap<(Lsn, u64), Arc<Notify>>,
}

impl LsnWaiters {
    /// Registers a task waiting for `lsn`; it leaves when the returned
    /// waiter is dropped (rule 3). Check the condition after this (rule 2).
    pub fn register(&self, lsn: Lsn) -> LsnWaiter<'_> {
        let notify = Arc::new(Notify::new());
        let mut waiting = self.lock();
        let key = (lsn, waiting.next_id);
        waiting.next_id += 1;
        waiting.by_lsn.insert(key, notify.clone());
        LsnWaiter {
            waiters: self,
            key,
            notify,
        }
    }

    /// Wakes the tasks waiting for an LSN at most `upto` (every one for
    /// `Lsn::MAX`); they leave.
    pub fn wake_upto(&self, upto: Lsn) {
        // Taken off from the lowest LSN up, with no map split off and no
        // list allocated (both were an allocation at every move); woken
        // once the lock is let go (rule 4).
        const BATCH: usize = 16;
        loop {
            let mut reached: [Option<Arc<Notify>>; BATCH] = Default::default();
            let mut taken = 0;
            {
                let mut waiting = self.lock();
                while taken < BATCH {
                    match waiting.by_lsn.first_entry() {
                        Some(entry) if entry.key().0 <= upto => {
                            reached[taken] = Some(entry.remove());
                            taken += 1;
                        }
                        _ => break,
                    }
                }
            }
            for notify in reached.iter().flatten() {
                notify.notify_one();
            }
            if taken < BATCH {
                return;
            }
        }
    }

    /// Wakes every waiting task.
    pub fn wake_all(&self) {
        self.wake_upto(Lsn::MAX);
    }

    /// How many tasks wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().by_lsn.len()
    }

    /// Whether no task waits.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, ByLsn> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A task registered in [`LsnWaiters`]; leaves when dropped.
pub struct LsnWaiter<'a> {
    waiters: &'a LsnWaiters,
    key: (Lsn, u64),
    notify: Arc<Notify>,
}

impl LsnWaiter<'_> {
    /// Returns once the task was woken (at once when it was woken before).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Whether the task was woken, without waiting (consumes the wake-up).
    #[cfg(test)]
    pub fn was_woken(&self) -> bool {
        use futures::FutureExt;
        self.notify.notified().now_or_never().is_some()
    }
}

impl Drop for LsnWaiter<'_> {
    fn drop(&mut self) {
        self.waiters.lock().by_lsn.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules 1 and 3: a move wakes the tasks it reaches and no other;
    /// every task for `wake_all`; a task dropped leaves no entry.
    #[test]
    fn a_move_wakes_the_tasks_it_reaches_and_no_other() {
        let waiters = LsnWaiters::default();
        let (w100, w200, w300) = (
            waiters.register(100),
            waiters.register(200),
            waiters.register(300),
        );
        waiters.wake_upto(200);
        assert!(w100.was_woken() && w200.was_woken());
        assert!(!w300.was_woken(), "300 is not reached");
        assert_eq!(waiters.len(), 1, "woken tasks leave");
        let w400 = waiters.register(400);
        waiters.wake_all();
        assert!(w300.was_woken() && w400.was_woken());
        let w500 = waiters.register(500);
        drop((w100, w200, w300, w400));
        assert_eq!(waiters.len(), 1);
        drop(w500);
        assert!(waiters.is_empty(), "no entry left behind");
    }

    /// Rule 4: the lock is free when a task is woken, so a task that runs
    /// at once elsewhere and leaves does not sleep on it; more tasks than
    /// one batch are all woken.
    #[test]
    fn tasks_are_woken_after_the_lock_is_let_go() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};

        struct Probe {
            waiters: Arc<LsnWaiters>,
            woken: AtomicUsize,
            woken_under_the_lock: AtomicUsize,
        }
        impl Wake for Probe {
            fn wake(self: Arc<Self>) {
                self.woken.fetch_add(1, Ordering::SeqCst);
                if self.waiters.waiting.try_lock().is_err() {
                    self.woken_under_the_lock.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let waiters = Arc::new(LsnWaiters::default());
        let probe = Arc::new(Probe {
            waiters: waiters.clone(),
            woken: AtomicUsize::new(0),
            woken_under_the_lock: AtomicUsize::new(0),
        });
        let waker = Waker::from(probe.clone());
        let mut cx = Context::from_waker(&waker);
        let tasks: Vec<LsnWaiter> = (0..40).map(|i| waiters.register(i)).collect();
        let mut sleeps: Vec<_> = tasks.iter().map(|t| Box::pin(t.woken())).collect();
        for sleep in &mut sleeps {
            assert!(sleep.as_mut().poll(&mut cx).is_pending());
        }
        waiters.wake_upto(u64::MAX);
        assert_eq!(
            probe.woken.load(Ordering::SeqCst),
            40,
            "every task, past one batch"
        );
        assert_eq!(
            probe.woken_under_the_lock.load(Ordering::SeqCst),
            0,
            "no task is woken while the lock is held"
        );
        assert!(waiters.is_empty());
    }

    /// Rule 2: a wake-up that comes before the task sleeps is not lost.
    #[tokio::test]
    async fn a_wake_up_before_the_sleep_ends_it_at_once() {
        let waiters = LsnWaiters::default();
        let waiter = waiters.register(7);
        waiters.wake_upto(7);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter.woken())
            .await
            .expect("the earlier wake-up ends the sleep");
    }
}
