//! Where client-sized reads run: a range over a whole keyspace, a sorted range, a
//! read-only txn, a lease's key list, a hash. A client decides how long these take, so they
//! run on blocking threads, at most [`ReadPool::new`]'s limit at once, and never on the
//! async workers that carry other clients' puts, keep-alives and watch events. A burst of
//! huge reads then queues here instead of starving everyone else.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Error;

#[derive(Clone)]
pub struct ReadPool {
    permits: Arc<Semaphore>,
}

/// A place in the pool, held while a read runs; a streaming read gives it up while it
/// waits for its client.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl ReadPool {
    /// A pool running at most `concurrency` reads at once.
    pub fn new(concurrency: usize) -> ReadPool {
        ReadPool {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// Waits for a place, then runs `read` on a blocking thread.
    pub async fn run<T, F>(&self, read: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, Error> + Send + 'static,
    {
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            read()
        })
        .await
        .map_err(Error::internal)?
    }

    /// Waits for a place in the pool.
    pub async fn slot(&self) -> Result<Slot, Error> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map(|permit| Slot { _permit: permit })
            .map_err(|_| Error::Stopped)
    }

    /// [`ReadPool::slot`] for a blocking thread.
    pub fn blocking_slot(&self) -> Result<Slot, Error> {
        futures::executor::block_on(self.slot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_at_most_the_limit_at_once() {
        let pool = ReadPool::new(2);
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
                    Ok(())
                })
                .await
            })
        });
        for read in reads.collect::<Vec<_>>() {
            read.await.expect("join").expect("read");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }
}
