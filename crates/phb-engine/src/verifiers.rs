//! The threads that check appended events' signatures, apart from the
//! async workers.
//!
//! Checking a signature costs tens of microseconds of CPU. Done inline on
//! the async workers, 64 concurrent appenders kept a run queue of such
//! tasks, and a read (GetBalance) waited behind it: its p99 under the
//! write load was about ten times its p50 (BENCHMARKS.md). Here the checks
//! run on a small fixed pool of threads at a lower scheduling priority
//! (nice +5, Linux), so the async workers stay free to answer reads and
//! move bytes, and when the cores are busy the kernel gives them the CPU
//! first; the checks use whatever is left, which under load is most of it.
//!
//! Bounds: `threads` threads; at most `QUEUE` jobs wait (a caller then
//! waits asynchronously for room, which holds its request, not a thread).

use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Jobs that may wait for a verifier thread.
const QUEUE: usize = 1024;

/// Nice value of the verifier threads (0 is the default; higher is less
/// favoured).
const NICE: i32 = 5;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of verifier threads.
pub(crate) struct Verifiers {
    tx: mpsc::Sender<Job>,
}

impl Verifiers {
    /// Starts `threads` verifier threads (at least one). They end when the
    /// pool is dropped and the queue is empty.
    pub(crate) fn start(threads: usize) -> std::io::Result<Verifiers> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("phb-verify-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        // One thread waits on the queue at a time; the
                        // others wait for the lock, then for the queue.
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                        match job {
                            // A panic is the job's to report (its caller
                            // sees no answer); the thread lives on.
                            Some(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            None => return,
                        }
                    }
                })?;
        }
        Ok(Verifiers { tx })
    }

    /// Runs `f` on a verifier thread; `None` if the pool has stopped or
    /// `f` panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.tx.send(job).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority only read and set the calling
    // thread's scheduling attributes (on Linux a PRIO_PROCESS id names a
    // thread).
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
    };
    if done != 0 {
        tracing::debug!("could not lower the verifier threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_off_the_async_workers_and_a_panic_loses_no_thread() {
        let pool = Verifiers::start(1).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await;
        assert_eq!(name, Some(Some("phb-verify-0".to_string())));
        assert_eq!(pool.run(|| -> u8 { panic!("a bad job") }).await, None);
        // The one thread still serves.
        assert_eq!(pool.run(|| 7).await, Some(7));
        #[cfg(target_os = "linux")]
        {
            // SAFETY: reads the calling thread's nice value.
            let nice = pool
                .run(|| unsafe {
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                })
                .await;
            assert_eq!(nice, Some(NICE));
        }
        for i in 0..100 {
            assert_eq!(pool.run(move || i * 2).await, Some(i * 2));
        }
    }
}
