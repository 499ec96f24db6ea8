//! Linearizable reads in rounds, as etcd's `linearizableReadLoop`: reads that arrive while
//! a round is in flight wait for the next one, and one round (one ReadIndex: openraft's
//! leadership check and, for local reads, the wait for apply) serves all of them. Without
//! it every read was its own ReadIndex, a message to the raft core and back.
//!
//! **Invariant:** a round starts after every read it serves arrived, so its read index is
//! at least the commit index any of those readers could have seen acknowledged before
//! asking. That is why an arrival never joins a round already running.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::RaftError;

/// What a round ends with, shared by every read it served.
type Outcome<T> = Option<Result<T, Arc<RaftError>>>;

/// A task running read rounds, and the round that the next arrivals join.
pub(super) struct ReadRounds<T> {
    /// The next round's channel: joined by arrivals, swapped for a fresh one as the round
    /// starts.
    next: Arc<Mutex<watch::Sender<Outcome<T>>>>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl<T: Clone + Send + Sync + 'static> ReadRounds<T> {
    /// Starts the task; `round` is one ReadIndex.
    pub fn spawn<F, Fut>(round: F) -> ReadRounds<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RaftError>> + Send + 'static,
    {
        let next = Arc::new(Mutex::new(watch::channel(None).0));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(next.clone(), wake.clone(), round));
        ReadRounds { next, wake, task }
    }

    /// Waits for the next round to start and end, and returns its outcome.
    pub async fn join(&self) -> Result<T, RaftError> {
        let mut outcome = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .subscribe();
        self.wake.notify_one();
        let ended = outcome.wait_for(Option::is_some).await;
        let Ok(ended) = ended else {
            return Err(RaftError::Stopped);
        };
        match ended.as_ref() {
            Some(Ok(value)) => Ok(value.clone()),
            Some(Err(e)) => Err(refusal(e)),
            None => Err(RaftError::Stopped),
        }
    }
}

impl<T> ReadRounds<T> {
    /// Ends the task, and with it its handle on raft; readers still waiting get `Stopped`.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl<T> Drop for ReadRounds<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run<T, F, Fut>(next: Arc<Mutex<watch::Sender<Outcome<T>>>>, wake: Arc<Notify>, round: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, RaftError>>,
{
    loop {
        wake.notified().await;
        let this = {
            let mut next = next.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *next, watch::channel(None).0)
        };
        // A wake-up whose reader was served by the round before (it joined just before
        // that round took the channel) finds nobody waiting.
        if this.receiver_count() == 0 {
            continue;
        }
        let outcome = round().await.map_err(Arc::new);
        this.send_replace(Some(outcome));
    }
}

/// A round's error for one of its readers. A ReadIndex fails only for want of a leader, a
/// timeout, a stopped raft or a failed call to the leader; anything else keeps its message.
fn refusal(e: &RaftError) -> RaftError {
    match e {
        RaftError::NoLeader => RaftError::NoLeader,
        RaftError::NotLeader(leader) => RaftError::NotLeader(*leader),
        RaftError::Stopped => RaftError::Stopped,
        RaftError::Timeout => RaftError::Timeout,
        RaftError::Peer(e) => RaftError::Peer(e.clone()),
        other => RaftError::Fatal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Rounds counted by a round that takes `pause` and returns its own number.
    fn counting(pause: Duration) -> (ReadRounds<u64>, Arc<AtomicU64>) {
        let rounds = Arc::new(AtomicU64::new(0));
        let counter = rounds.clone();
        let reads = ReadRounds::spawn(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(pause).await;
                Ok(n)
            }
        });
        (reads, rounds)
    }

    #[tokio::test]
    async fn reads_that_arrive_during_a_round_share_the_next_one() {
        let (reads, rounds) = counting(Duration::from_millis(100));
        let reads = Arc::new(reads);
        let first = tokio::spawn({
            let reads = reads.clone();
            async move { reads.join().await.expect("first") }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let later: Vec<_> = (0..50)
            .map(|_| {
                let reads = reads.clone();
                tokio::spawn(async move { reads.join().await.expect("later") })
            })
            .collect();
        assert_eq!(first.await.expect("task"), 1);
        for read in later {
            // Not round 1: it was running when these arrived.
            assert_eq!(read.await.expect("task"), 2);
        }
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_after_a_round_ended_gets_a_new_round() {
        let (reads, rounds) = counting(Duration::ZERO);
        assert_eq!(reads.join().await.expect("read"), 1);
        assert_eq!(reads.join().await.expect("read"), 2);
        assert_eq!(rounds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn every_reader_of_a_failed_round_gets_its_error() {
        let reads = ReadRounds::<()>::spawn(|| async { Err(RaftError::NotLeader(7)) });
        let (a, b) = tokio::join!(reads.join(), reads.join());
        for e in [a, b] {
            assert!(matches!(e, Err(RaftError::NotLeader(7))), "{e:?}");
        }
    }

    #[tokio::test]
    async fn a_reader_that_gives_up_does_not_stop_the_rounds() {
        let (reads, _) = counting(Duration::from_millis(50));
        let gave_up = tokio::time::timeout(Duration::from_millis(10), reads.join()).await;
        assert!(gave_up.is_err());
        assert!(reads.join().await.is_ok());
    }
}
