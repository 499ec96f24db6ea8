//! Where client-sized reads run: a range over more than one key, a read-only txn, a lease's
//! key list, a hash, a RangeStream. A client decides how long these take, so they never
//! run on the async workers that carry other clients' puts, keep-alives and watch events.
//! They run on the pool's own threads, which have a lower CPU priority (nice
//! [`READ_NICENESS`]): when a huge read and a small write want the same core, the write
//! goes first, and a burst of huge reads queues here instead of starving everyone else.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::Error;

/// How much less CPU weight a read thread gets than the rest of the node (Linux nice
/// levels: each is ~20 % less weight, so +10 is about a tenth of a normal thread's).
const READ_NICENESS: i32 = 10;
/// The lowest priority Linux has.
const MAX_NICENESS: i32 = 19;

type Job = Box<dyn FnOnce() + Send>;

/// The read threads; cheap to clone.
#[derive(Clone)]
pub struct ReadPool {
    jobs: mpsc::Sender<Job>,
    /// RangeStreams running at once, each on its own thread (a slow client holds it).
    streams: Arc<Semaphore>,
}

/// A place among the running streams, held by the stream's thread.
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl ReadPool {
    /// Starts `threads` read threads, and allows `streams` RangeStreams at once.
    pub fn start(threads: usize, streams: usize) -> std::io::Result<ReadPool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("cairn-read-{n}"))
                .spawn(move || {
                    lower_priority();
                    // Ends when the pool (every sender) is gone.
                    while let Ok(job) = next_job(&queue) {
                        job();
                    }
                })?;
        }
        Ok(ReadPool {
            jobs,
            streams: Arc::new(Semaphore::new(streams.max(1))),
        })
    }

    /// Runs `read` on a read thread, after the reads queued before it.
    pub async fn run<T, F>(&self, read: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A client that gave up (timeout, cancel) while the read queued behind others
            // no longer waits for it: skip the work rather than delay the reads behind it.
            if !tx.is_closed() {
                let _ = tx.send(read());
            }
        });
        self.jobs.send(job).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Runs a stream's producer on a thread of its own with the read threads' priority,
    /// once fewer than the allowed number of streams are running.
    pub async fn spawn_stream(&self, produce: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let slot = StreamSlot {
            _permit: self
                .streams
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Error::Stopped)?,
        };
        thread::Builder::new()
            .name("cairn-read-stream".into())
            .spawn(move || {
                let _slot = slot;
                lower_priority();
                produce();
            })
            .map(drop)
            .map_err(Error::internal)
    }
}

fn next_job(queue: &Mutex<mpsc::Receiver<Job>>) -> Result<Job, mpsc::RecvError> {
    queue.lock().map_err(|_| mpsc::RecvError)?.recv()
}

/// Lowers the calling thread's priority by [`READ_NICENESS`] below the process's. Only
/// ever lowering it needs no privilege; if the OS refuses, the read still runs.
fn lower_priority() {
    let niceness = (thread_niceness() + READ_NICENESS).min(MAX_NICENESS);
    // SAFETY: a plain system call on the calling thread's own id; no memory is shared.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, thread_id(), niceness) };
    if result != 0 {
        tracing::debug!("could not lower a read thread's priority");
    }
}

fn thread_niceness() -> i32 {
    // SAFETY: a plain system call on the calling thread's own id. It may return -1 as a
    // niceness; an error (impossible for one's own thread) would read as -1 too.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, thread_id()) }
}

fn thread_id() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    libc::id_t::try_from(tid).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_its_threads_at_once_and_at_low_priority() {
        let pool = ReadPool::start(2, 1).expect("pool");
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let reads = (0..8).map(|_| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(thread_niceness())
                })
                .await
            })
        });
        let base = thread_niceness();
        for read in reads.collect::<Vec<_>>() {
            let niceness = read.await.expect("join").expect("read");
            assert_eq!(niceness, (base + READ_NICENESS).min(MAX_NICENESS));
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
