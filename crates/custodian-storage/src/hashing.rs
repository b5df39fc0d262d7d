//! Work beside the transfer: a helper thread that consumes a byte stream, and a hasher on it.
//!
//! SHA-256 is the slowest thing Custodian does per byte (about 1.3 GiB/s with SHA-NI). On a
//! large transfer, running it on its own thread lets receiving, BLAKE3, CRC32C and storage writes
//! proceed on another core at the same time. Bytes are handed over by reference count, not
//! copied, and the channel is bounded, so memory stays small however fast data arrives.

use bytes::Bytes;
use custodian_core::{Digest, StreamHasher};

/// How many pieces may wait for the helper thread before `update` waits.
const QUEUE: usize = 16;

/// Consumes pieces of a byte stream on a helper thread, then produces a result.
///
/// Used to run work that needs a whole core (hashing, writing a file) beside the work that
/// receives the bytes, without copying them and with bounded memory.
pub struct Worker<R> {
    /// Pieces for the helper; dropping it ends the helper's loop.
    tx: tokio::sync::mpsc::Sender<Bytes>,
    /// The helper's result.
    done: tokio::sync::oneshot::Receiver<R>,
}

impl<R: Send + 'static> Worker<R> {
    /// Starts a helper thread that calls `each` on every piece, then `finish` on its state.
    pub fn spawn<S: Send + 'static>(
        name: &str,
        mut state: S,
        mut each: impl FnMut(&mut S, &Bytes) + Send + 'static,
        finish: impl FnOnce(S) -> R + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Some(piece) = rx.blocking_recv() {
                    each(&mut state, &piece);
                }
                let _ = done_tx.send(finish(state));
            })?;
        Ok(Worker { tx, done })
    }

    /// Hands the next piece to the helper, waiting while its queue is full.
    pub async fn send(&self, piece: Bytes) {
        // The helper only stops when `tx` is dropped, so sending cannot fail while it lives.
        let _ = self.tx.send(piece).await;
    }

    /// Ends the stream and waits for the helper's result (`None` if the helper died).
    pub async fn finish(self) -> Option<R> {
        drop(self.tx);
        self.done.await.ok()
    }
}

/// A hasher that starts inline and can move to a helper thread.
pub enum OffThreadHasher {
    /// Hashing on the caller's thread.
    Inline(StreamHasher),
    /// Hashing on a helper thread.
    Threaded(Worker<Digest>),
}

impl OffThreadHasher {
    /// A hasher that hashes on the caller's thread until [`OffThreadHasher::go_parallel`].
    pub fn new(hasher: StreamHasher) -> Self {
        OffThreadHasher::Inline(hasher)
    }

    /// Moves hashing to a helper thread (once; later calls do nothing). If no thread can be
    /// started, hashing simply stays inline.
    pub fn go_parallel(&mut self) {
        let OffThreadHasher::Inline(hasher) = self else {
            return;
        };
        // The state is cloned (a few hundred bytes) so that it stays usable inline if no
        // thread can be started.
        let worker = Worker::spawn(
            "custodian-hash",
            hasher.clone(),
            |hasher, piece| hasher.update(piece),
            StreamHasher::finalize,
        );
        if let Ok(worker) = worker {
            *self = OffThreadHasher::Threaded(worker);
        }
    }

    /// Feeds the next bytes.
    pub async fn update(&mut self, data: &Bytes) {
        match self {
            OffThreadHasher::Inline(hasher) => hasher.update(data),
            OffThreadHasher::Threaded(worker) => worker.send(data.clone()).await,
        }
    }

    /// The digest of everything fed, or `None` if the helper thread died.
    pub async fn finalize(self) -> Option<Digest> {
        match self {
            OffThreadHasher::Inline(hasher) => Some(hasher.finalize()),
            OffThreadHasher::Threaded(worker) => worker.finish().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_core::Algorithm;

    #[tokio::test]
    async fn threaded_equals_inline() {
        for algorithm in Algorithm::ALL {
            let data = crate::conformance::pattern(1, 100_000);
            let mut hasher = OffThreadHasher::new(StreamHasher::new(algorithm));
            hasher.update(&data.slice(..1000)).await;
            hasher.go_parallel();
            hasher.go_parallel();
            for piece in data[1000..].chunks(7777) {
                hasher.update(&Bytes::copy_from_slice(piece)).await;
            }
            assert_eq!(hasher.finalize().await, Some(Digest::of(algorithm, &data)));
        }
    }
}
