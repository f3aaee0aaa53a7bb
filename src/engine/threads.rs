//! Threads for statements that may wait a long time for their client
//! ([`super::cursor`]): reused from one statement to the next, never
//! limited in number.
//!
//! A cursor's thread owns its connection while the client reads the rows,
//! which may take as long as the client likes, so cursors cannot share
//! tokio's blocking pool: a few hundred slow clients would fill it and
//! every commit would queue behind them. Starting an OS thread per
//! statement, as cursors did first, costs more than a point select itself
//! (a stack mapped and unmapped, a clone and a join per statement); so a
//! thread that finishes its job waits a while for the next one.
//!
//! # Rules
//! 1. **A job never waits for a thread.** An idle thread takes it, or a new
//!    one starts; there is no queue and no limit (cursors are bounded by
//!    sessions, and sessions by the node's connection limit).
//! 2. **Idle threads end.** At most [`MAX_IDLE`] wait, each for at most
//!    [`IDLE`]; then it ends. A thread taken from the idle list just as it
//!    times out still receives the job it was taken for.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Work for a thread.
type Job = Box<dyn FnOnce() + Send>;

/// How long a thread waits for its next job before it ends.
pub const IDLE: Duration = Duration::from_secs(30);
/// Idle threads kept at most.
pub const MAX_IDLE: usize = 64;

/// The threads waiting for a job: an id (to find itself when it times out)
/// and where to send the job.
struct Idle {
    next_id: u64,
    waiting: Vec<(u64, mpsc::Sender<Job>)>,
}

/// A set of reusable threads.
pub struct Threads {
    name: &'static str,
    idle: Mutex<Idle>,
}

/// The cursors' threads.
pub static CURSORS: Threads = Threads::new("availdb-cursor");

impl Threads {
    /// No thread yet; each will be called `name`.
    pub const fn new(name: &'static str) -> Threads {
        Threads {
            name,
            idle: Mutex::new(Idle {
                next_id: 0,
                waiting: Vec::new(),
            }),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on an idle thread, or on a new one (rule 1). Fails only
    /// when the OS refuses a new thread.
    pub fn run(&'static self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut job: Job = Box::new(job);
        loop {
            let taken = self.idle().waiting.pop();
            let Some((_, thread)) = taken else {
                break;
            };
            match thread.send(job) {
                Ok(()) => return Ok(()),
                // It ended meanwhile: try the next.
                Err(mpsc::SendError(back)) => job = back,
            }
        }
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || self.serve(job))
            .map(|_| ())
    }

    /// Idle threads right now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle().waiting.len()
    }

    /// A thread's life: its first job, then whatever comes while it waits.
    fn serve(&'static self, first: Job) {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut job = first;
        loop {
            job();
            let id = {
                let mut idle = self.idle();
                if idle.waiting.len() >= MAX_IDLE {
                    return;
                }
                let id = idle.next_id;
                idle.next_id += 1;
                idle.waiting.push((id, tx.clone()));
                id
            };
            job = match rx.recv_timeout(IDLE) {
                Ok(next) => next,
                Err(RecvTimeoutError::Timeout) => {
                    let mut idle = self.idle();
                    if let Some(at) = idle.waiting.iter().position(|(i, _)| *i == id) {
                        idle.waiting.remove(at);
                        return;
                    }
                    drop(idle);
                    // Taken just now (rule 2): its job is on the way.
                    match rx.recv() {
                        Ok(next) => next,
                        Err(_) => return,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_thread_that_finished_a_job_runs_the_next_and_jobs_never_wait_for_each_other() {
        // Reuse: the second job runs on the first one's thread.
        let threads: &'static Threads = Box::leak(Box::new(Threads::new("test")));
        let (tx, rx) = mpsc::channel();
        let first = tx.clone();
        threads
            .run(move || first.send(std::thread::current().id()).unwrap())
            .unwrap();
        let one = rx.recv().unwrap();
        // The thread puts itself on the idle list right after its job.
        for _ in 0..1000 {
            if threads.idle_count() > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let second = tx.clone();
        threads
            .run(move || second.send(std::thread::current().id()).unwrap())
            .unwrap();
        let two = rx.recv().unwrap();
        assert_eq!(one, two, "the idle thread took the second job");

        // No queue: jobs that block until all of them run at once all
        // start (with a limit or a queue, this would never return).
        let n = 8;
        let all = Arc::new(Barrier::new(n + 1));
        for _ in 0..n {
            let all = all.clone();
            threads
                .run(move || {
                    all.wait();
                })
                .unwrap();
        }
        all.wait();
    }
}
