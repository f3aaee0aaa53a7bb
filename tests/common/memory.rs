//! The resident memory of a server process, read from `/proc/<pid>/status`
//! (Linux): what the bounded-memory tests assert on.
//!
//! * `VmRSS` is the resident set now, `VmHWM` its peak since the process
//!   started or since [`reset_peak`] (writing `5` to `/proc/<pid>/clear_refs`,
//!   Linux ≥ 4.0), so a test can measure one phase alone.
//! * A [`Sampler`] polls `VmRSS` on a thread of its own as well: the peak it
//!   saw is reported next to `VmHWM` in failure messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One field of `/proc/<pid>/status` in bytes (`kB` values), None if the
/// process or the field is gone.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resident bytes now.
pub fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Peak resident bytes since start or the last [`reset_peak`].
pub fn peak(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM for process {pid}"))
}

/// Starts a new peak: `VmHWM` becomes the resident set now.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| panic!("cannot reset the peak RSS of process {pid}: {e}"));
}

/// Megabytes, for messages.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Polls a process's `VmRSS` every 20 ms until dropped or finished.
pub struct Sampler {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Sampler {
        let max = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (max, stop) = (max.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(rss) = status_bytes(pid, "VmRSS") {
                        max.fetch_max(rss, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Sampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest `VmRSS` seen so far.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Stops sampling; returns the largest `VmRSS` seen.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
