//! Where short blocking work may run: on an async worker itself, or only
//! on a blocking thread.
//!
//! Statements known to be short, a small replication batch's append and a
//! commit's fsync run on the async worker that needs them: a hop to a
//! blocking thread and back costs two context switches, more than the
//! work on a small machine. That is sound only on a multi-thread runtime,
//! where another worker goes on meanwhile; a current-thread runtime (the
//! in-process tests) has one thread, which must never block.

/// True on a multi-thread tokio runtime; false on a current-thread one or
/// outside any runtime.
pub fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
