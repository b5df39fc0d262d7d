//! The sequencer: turns concurrent appends into batches, one durable commit (one fsync) and one
//! checkpoint signature per batch.
//!
//! Requests queue on a channel. The sequencer takes the first, then everything already queued
//! (up to `max_batch`), optionally waits up to `window` for more, and commits the batch on a
//! blocking thread, which also answers the batch's callers. While that commit (and its fsync)
//! runs, new requests queue up and form the next batch, so the batch size adapts to load without
//! any tuning: one writer gets one-entry batches at fsync latency, many writers share each fsync.
//!
//! The answers leave from the committing thread and the next batch is gathered by the
//! sequencer's task, each on its own schedule. An answer then does not wait for that task to be
//! scheduled again, and when the cores are busy the task comes back later, finds more requests
//! queued and commits them in fewer, larger batches, each with one fsync and one signature
//! (docs/performance-history.md, "Answers from the committing thread").

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use custodian_core::entry::{EntryKind, Value};
use custodian_storage::ledger::{
    Appended, Condition, Ledger, LedgerError, Prepared, SignedCheckpoint,
};
use tokio::sync::{mpsc, oneshot};

use crate::witnessing::Publication;

/// How the sequencer batches.
#[derive(Clone, Copy, Debug)]
pub struct SequencerConfig {
    /// The most entries in one batch.
    pub max_batch: usize,
    /// How long to wait for more requests after the first of a batch; zero commits at once
    /// (requests still batch up while the previous commit is in flight).
    pub window: Duration,
    /// How many requests may wait in the queue before appends get back-pressure.
    pub queue: usize,
}

impl Default for SequencerConfig {
    fn default() -> Self {
        SequencerConfig {
            max_batch: 4096,
            window: Duration::ZERO,
            queue: 65_536,
        }
    }
}

type Reply = oneshot::Sender<Result<(Appended, Arc<SignedCheckpoint>), LedgerError>>;

struct Job {
    /// When the request entered the queue: the batch's debug event reports how long its oldest
    /// request waited for the commit to begin.
    queued: Instant,
    request: Prepared,
    condition: Option<Condition>,
    reply: Reply,
}

/// A handle for appending through the sequencer. Cloning it is cheap.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Job>,
    ledger: Arc<Ledger>,
    /// With a witness policy: where integrations are reported and publication awaited.
    publication: Option<Arc<Publication>>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sequencer {
    /// Starts the sequencer task on the current tokio runtime. With a `publication`, each
    /// append answers only once a checkpoint covering it is published (cosigned).
    pub fn start(
        ledger: Arc<Ledger>,
        config: SequencerConfig,
        publication: Option<Arc<Publication>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(run(ledger.clone(), config, rx, publication.clone()));
        Sequencer {
            tx,
            ledger,
            publication,
        }
    }

    /// The ledger behind the sequencer.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Appends one entry; returns once it is durable and signed into a checkpoint — with a
    /// witness policy, once a cosigned checkpoint covering it is published (or, if the policy
    /// allows, once its patience ran out: then the checkpoint is the log-signed one alone). An
    /// invalid request is rejected here, before it can share a batch with others.
    pub async fn append(
        &self,
        kind: EntryKind,
        payload: Value,
    ) -> Result<(Appended, Arc<SignedCheckpoint>), LedgerError> {
        self.append_if(kind, payload, None).await
    }

    /// Appends one entry as [`Sequencer::append`] does, provided that `condition` holds against
    /// whatever other daemons sharing the ledger appended since `condition.after`
    /// ([`LedgerError::ConditionFailed`] otherwise, with nothing appended).
    pub async fn append_if(
        &self,
        kind: EntryKind,
        payload: Value,
        condition: Option<Condition>,
    ) -> Result<(Appended, Arc<SignedCheckpoint>), LedgerError> {
        self.enqueue(kind, payload, condition).await?.wait().await
    }

    /// The first half of [`Sequencer::append_if`]: checks the request and puts it in the queue,
    /// waiting only while the queue is full. Entries enter the log in the order they are queued,
    /// so a caller that queues its next entry only after this returns appends in its own order
    /// while its answers are still pending.
    pub async fn enqueue(
        &self,
        kind: EntryKind,
        payload: Value,
        condition: Option<Condition>,
    ) -> Result<Queued, LedgerError> {
        self.enqueue_prepared(Ledger::prepare(kind, payload)?, condition)
            .await
    }

    /// [`Sequencer::enqueue`] for a request already checked ([`Ledger::prepare`] or
    /// [`Ledger::prepare_cbor`]).
    pub async fn enqueue_prepared(
        &self,
        request: Prepared,
        condition: Option<Condition>,
    ) -> Result<Queued, LedgerError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Job {
                queued: Instant::now(),
                request,
                condition,
                reply,
            })
            .await
            .map_err(|_| LedgerError::Poisoned("the sequencer has stopped".into()))?;
        Ok(Queued {
            wait,
            ledger: self.ledger.clone(),
            publication: self.publication.clone(),
        })
    }
}

/// An entry in the sequencer's queue ([`Sequencer::enqueue`]); [`Queued::wait`] gives its answer.
pub struct Queued {
    wait: oneshot::Receiver<Result<(Appended, Arc<SignedCheckpoint>), LedgerError>>,
    ledger: Arc<Ledger>,
    publication: Option<Arc<Publication>>,
}

impl Queued {
    /// Waits until the entry is durable and signed into a checkpoint, and with a witness policy
    /// published, as [`Sequencer::append`] describes.
    pub async fn wait(self) -> Result<(Appended, Arc<SignedCheckpoint>), LedgerError> {
        let (appended, checkpoint) = self
            .wait
            .await
            .map_err(|_| LedgerError::Poisoned("the sequencer stopped before replying".into()))??;
        let Some(publication) = &self.publication else {
            return Ok((appended, checkpoint));
        };
        match publication.wait(&self.ledger, checkpoint.size).await {
            Some(published) => Ok((appended, published)),
            None => {
                tracing::warn!(
                    index = appended.index,
                    size = checkpoint.size,
                    "answering an append with an uncosigned checkpoint: the witness quorum was not reached in time"
                );
                Ok((appended, checkpoint))
            }
        }
    }
}

async fn run(
    ledger: Arc<Ledger>,
    config: SequencerConfig,
    mut rx: mpsc::Receiver<Job>,
    publication: Option<Arc<Publication>>,
) {
    let max = config.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + config.window;
        loop {
            while jobs.len() < max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.len() >= max || config.window.is_zero() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                _ => break,
            }
        }
        // The queue is first in, first out: the first job has waited longest.
        let oldest = jobs[0].queued;
        let mut requests = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            requests.push((job.request, job.condition));
            replies.push(job.reply);
        }
        let ledger = ledger.clone();
        let publication = publication.clone();
        if let Err(join) = tokio::task::spawn_blocking(move || {
            commit_and_reply(&ledger, requests, replies, publication.as_deref(), oldest)
        })
        .await
        {
            // Only a panic outside the commit itself gets here (the commit's own is caught and
            // answered); the replies went down with the thread, so each waiter hears that the
            // sequencer stopped before replying.
            tracing::error!(error = %join, "the commit task failed");
        }
    }
}

/// Commits one batch and answers each of its requests from the committing thread, so an answer
/// does not wait for the sequencer's task to be scheduled again. A commit that panics answers
/// each request with [`LedgerError::Poisoned`] and the panic's message. `oldest` is when the
/// batch's first request was queued.
fn commit_and_reply(
    ledger: &Ledger,
    requests: Vec<(Prepared, Option<Condition>)>,
    replies: Vec<Reply>,
    publication: Option<&Publication>,
    oldest: Instant,
) {
    let count = requests.len();
    let started = Instant::now();
    // Reading the thread's scheduler times costs a file read, so only when the batch's debug
    // event will be recorded.
    let debugging = tracing::enabled!(tracing::Level::DEBUG);
    let before = debugging.then(ThreadTimes::read).flatten();
    // A panic inside the commit (a bug in a backend) becomes this batch's error, so its callers
    // hear what happened rather than only that no answer came.
    let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ledger.append_conditional(requests, now_ms())
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|m| m.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(LedgerError::Poisoned(format!(
            "the commit of this batch panicked: {message}"
        )))
    });
    match committed {
        Ok((appended, checkpoint)) => {
            if let Some(publication) = publication {
                publication.integrated(checkpoint.size);
            }
            for (reply, entry) in replies.into_iter().zip(appended) {
                let _ = reply.send(entry.map(|entry| (entry, checkpoint.clone())));
            }
            if debugging {
                let took = started.elapsed();
                let split = before
                    .zip(ThreadTimes::read())
                    .map(|(before, after)| CommitSplit::between(before, after, took));
                tracing::debug!(
                    entries = count,
                    size = checkpoint.size,
                    waited_us = started.saturating_duration_since(oldest).as_micros() as u64,
                    took_us = took.as_micros() as u64,
                    on_cpu_us = split.map(|s| s.on_cpu.as_micros() as u64),
                    runnable_us = split.map(|s| s.runnable.as_micros() as u64),
                    blocked_us = split.map(|s| s.blocked.as_micros() as u64),
                    "batch committed and answered"
                );
            }
        }
        Err(err) => {
            tracing::error!(entries = count, error = %err, "ledger batch failed");
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

/// The committing thread's scheduler times, from `/proc/thread-self/schedstat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ThreadTimes {
    /// Time the thread has spent on a CPU.
    on_cpu: Duration,
    /// Time the thread has spent ready to run, waiting for a CPU.
    runnable: Duration,
}

impl ThreadTimes {
    /// The calling thread's times; `None` where the kernel does not keep them.
    fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
    }

    /// Parses the file's three numbers: nanoseconds on a CPU, nanoseconds waiting on a run
    /// queue, time slices (Linux, Documentation/scheduler/sched-stats.rst, "/proc/<pid>/schedstat").
    fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace();
        let mut next = || fields.next()?.parse::<u64>().ok().map(Duration::from_nanos);
        Some(ThreadTimes {
            on_cpu: next()?,
            runnable: next()?,
        })
    }
}

/// Where a commit's wall time went on the committing thread: on a CPU, ready but waiting for one
/// (the machine's cores busy with other threads), or neither (blocked: the disk's sync, a lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommitSplit {
    on_cpu: Duration,
    runnable: Duration,
    blocked: Duration,
}

impl CommitSplit {
    /// The split of `took`, from the thread's times before and after it.
    fn between(before: ThreadTimes, after: ThreadTimes, took: Duration) -> Self {
        let on_cpu = after.on_cpu.saturating_sub(before.on_cpu);
        let runnable = after.runnable.saturating_sub(before.runnable);
        CommitSplit {
            on_cpu,
            runnable,
            blocked: took.saturating_sub(on_cpu + runnable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_storage::ledger::MemoryLedger;
    use custodian_storage::ledger_conformance::{CountingBackend, payload, test_signer};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits_and_a_bad_request_fails_alone() {
        // Commits that take a while, as an fsync does, and are counted.
        let backend = Arc::new(
            CountingBackend::new(Arc::new(MemoryLedger::new()))
                .slow_commits(Duration::from_millis(5)),
        );
        let ledger = Arc::new(Ledger::open(backend.clone(), test_signer()).expect("open"));
        let before = backend.commits.load(std::sync::atomic::Ordering::SeqCst);
        let sequencer = Sequencer::start(ledger.clone(), SequencerConfig::default(), None);
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let sequencer = sequencer.clone();
            tasks.push(tokio::spawn(async move {
                sequencer.append(EntryKind::RunAttested, payload(i)).await
            }));
        }
        // A request that cannot become an entry is refused on its own.
        let bad = sequencer
            .append(EntryKind::RunAttested, Value::Float(0.5))
            .await;
        assert!(matches!(bad, Err(LedgerError::InvalidEntry(_))));
        let mut indexes = Vec::new();
        for task in tasks {
            let (appended, checkpoint) = task.await.expect("task").expect("append");
            assert!(appended.index < checkpoint.size);
            let receipt = ledger.receipt_for(&appended, &checkpoint).expect("receipt");
            receipt.verify(ledger.verifier()).expect("receipt verifies");
            indexes.push(appended.index);
        }
        indexes.sort();
        assert_eq!(indexes, (0..200).collect::<Vec<_>>());
        let commits = backend.commits.load(std::sync::atomic::Ordering::SeqCst) - before;
        // With 5 ms per commit, 200 concurrent appends must share commits (one fsync and one
        // signature per batch), not take 200 of them.
        assert!(commits < 50, "200 appends took {commits} commits");
        assert_eq!(
            ledger
                .checkpoints(1, usize::MAX)
                .expect("checkpoints")
                .len() as u64,
            commits,
            "one checkpoint per batch"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_panics_answers_its_batch_with_an_error_and_the_next_batch_commits() {
        let backend = Arc::new(CountingBackend::new(Arc::new(MemoryLedger::new())));
        let ledger = Arc::new(Ledger::open(backend.clone(), test_signer()).expect("open"));
        let sequencer = Sequencer::start(ledger.clone(), SequencerConfig::default(), None);
        backend.panic_on_next_commit();
        // The callers of the batch whose commit panicked are answered, not left waiting.
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            sequencer.append(EntryKind::RunAttested, payload(0)),
        )
        .await
        .expect("the caller is answered");
        assert!(
            matches!(&answer, Err(LedgerError::Poisoned(m)) if m.contains("panicked: a commit that panics")),
            "the panicked batch is refused, saying why"
        );
        // The sequencer goes on, and the log never held the refused entry.
        let (appended, checkpoint) = tokio::time::timeout(
            Duration::from_secs(30),
            sequencer.append(EntryKind::RunAttested, payload(1)),
        )
        .await
        .expect("the next caller is answered")
        .expect("the next batch commits");
        assert_eq!((appended.index, checkpoint.size), (0, 1));
        assert_eq!(ledger.latest().size, 1);
    }

    #[tokio::test]
    async fn a_window_gathers_sequential_callers_into_one_batch() {
        let ledger =
            Arc::new(Ledger::open(Arc::new(MemoryLedger::new()), test_signer()).expect("open"));
        let sequencer = Sequencer::start(
            ledger.clone(),
            SequencerConfig {
                window: Duration::from_millis(200),
                ..Default::default()
            },
            None,
        );
        let mut tasks = Vec::new();
        for i in 0..5u64 {
            let sequencer = sequencer.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                sequencer.append(EntryKind::ScanRecorded, payload(i)).await
            }));
        }
        let mut sizes = Vec::new();
        for task in tasks {
            sizes.push(task.await.expect("task").expect("append").1.size);
        }
        assert_eq!(sizes, vec![5; 5], "all five appends in one batch of size 5");
    }

    #[test]
    fn thread_times_parse_the_kernels_first_two_numbers_and_refuse_anything_else() {
        // A line as Linux writes it: nanoseconds on a CPU, nanoseconds runnable, time slices.
        let times = ThreadTimes::parse("2090937474 1283711546 19498\n").expect("parses");
        assert_eq!(times.on_cpu, Duration::from_nanos(2_090_937_474));
        assert_eq!(times.runnable, Duration::from_nanos(1_283_711_546));
        for text in ["", "12", "12 x 3", "-1 2 3", "a b c"] {
            assert_eq!(ThreadTimes::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_commits_split_accounts_for_its_wall_time() {
        let before = ThreadTimes {
            on_cpu: Duration::from_micros(1_000),
            runnable: Duration::from_micros(500),
        };
        let after = ThreadTimes {
            on_cpu: Duration::from_micros(1_200),
            runnable: Duration::from_micros(3_500),
        };
        let split = CommitSplit::between(before, after, Duration::from_micros(4_000));
        assert_eq!(
            split,
            CommitSplit {
                on_cpu: Duration::from_micros(200),
                runnable: Duration::from_micros(3_000),
                blocked: Duration::from_micros(800),
            }
        );
        // The clock and the kernel's counters are read at slightly different moments: a wall
        // time under the counters' sum leaves nothing blocked rather than wrapping around.
        let split = CommitSplit::between(before, after, Duration::from_micros(3_100));
        assert_eq!(split.blocked, Duration::ZERO);
    }

    #[test]
    fn the_kernel_accounts_a_busy_threads_wall_time_as_on_a_cpu_or_runnable() {
        let Some(before) = ThreadTimes::read() else {
            eprintln!("skipped: this kernel keeps no /proc/thread-self/schedstat");
            return;
        };
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = ThreadTimes::read().expect("read again");
        let wall = start.elapsed();
        let split = CommitSplit::between(before, after, wall);
        // A thread that never sleeps is on a CPU or waiting for one for all of its wall time.
        let counted = split.on_cpu + split.runnable;
        assert!(split.on_cpu > Duration::ZERO, "{split:?}");
        assert!(
            counted >= wall * 8 / 10 && counted <= wall + Duration::from_millis(2),
            "{split:?} over {wall:?}"
        );
    }
}
