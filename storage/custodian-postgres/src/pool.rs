//! Connections to PostgreSQL on threads of their own: the `postgres` crate's blocking client,
//! never on the daemon's async runtime. A call hands its job to one of a pool's worker threads,
//! each holding one connection, and waits for the answer. A worker whose connection broke
//! connects again for the next job, so a PostgreSQL restart costs the calls in flight, not the
//! daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, sync_channel};
use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls};

/// Why a call to PostgreSQL failed, before the caller's layer names it.
#[derive(Debug, thiserror::Error)]
pub enum PgFailure {
    /// The server could not be reached, or the connection broke: a restart or an outage.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with an error, or the answer made no sense.
    #[error("{0}")]
    Failed(String),
}

impl From<postgres::Error> for PgFailure {
    fn from(err: postgres::Error) -> Self {
        let Some(db) = err.as_db_error() else {
            // No answer from the server at all: the connection is gone or was never made.
            return PgFailure::Unreachable(err.to_string());
        };
        let code = db.code().code();
        let text = format!("{code}: {}", db.message());
        // Class 08 is "connection exception"; 57P01-57P03 are the server shutting down or
        // starting up. Both mean "try again later", not "this request is wrong".
        if code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03") {
            PgFailure::Unreachable(text)
        } else {
            PgFailure::Failed(text)
        }
    }
}

/// A job for a worker: runs with the worker's connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// One worker thread's connection, made (again) on demand.
pub(crate) struct Connection {
    url: String,
    client: Option<Client>,
    /// When the connection last answered a job.
    used: std::time::Instant,
    /// Bumped by any connection of the pool that found itself broken: the server restarted,
    /// so every other connection is checked before its next job.
    broken: Arc<AtomicU64>,
    /// The value of `broken` when this connection was last checked.
    checked: u64,
}

/// A connection idle for longer is checked before it is used: after a server restart an idle
/// connection is dead without knowing it, and its first job would fail.
const CHECK_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl Connection {
    pub(crate) fn new(url: &str) -> Self {
        Connection {
            url: url.to_string(),
            client: None,
            used: std::time::Instant::now(),
            broken: Arc::new(AtomicU64::new(0)),
            checked: 0,
        }
    }

    /// The connection, made first if there is none or the last one broke.
    pub(crate) fn client(&mut self) -> Result<&mut Client, PgFailure> {
        let broken = self.broken.load(Ordering::SeqCst);
        let suspect = self.used.elapsed() > CHECK_AFTER_IDLE || broken != self.checked;
        self.used = std::time::Instant::now();
        self.checked = broken;
        if suspect
            && let Some(client) = self.client.as_mut()
            && client.is_valid(std::time::Duration::from_secs(2)).is_err()
        {
            self.client = None;
        }
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client = Client::connect(&self.url, NoTls)
                .map_err(|e| PgFailure::Unreachable(describe(&e)))?;
            self.client = Some(client);
        }
        // Set just above.
        self.client
            .as_mut()
            .ok_or_else(|| PgFailure::Unreachable("no connection".into()))
    }

    /// Drops the connection, so the next job connects afresh.
    pub(crate) fn reset(&mut self) {
        self.client = None;
    }
}

/// A PostgreSQL error in one line: the server's message when it sent one.
pub(crate) fn describe(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

/// A fixed set of worker threads with a connection each.
pub(crate) struct Pool {
    jobs: Mutex<Sender<Job>>,
}

impl Pool {
    /// Starts `size` workers; `first` is an already connected one, so the pool starts with at
    /// least one live connection.
    pub(crate) fn start(first: Connection, size: usize, name: &str) -> Result<Pool, PgFailure> {
        let url = first.url.clone();
        let broken = first.broken.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        spawn_worker(first, rx.clone(), name)?;
        for _ in 1..size {
            let mut connection = Connection::new(&url);
            connection.broken = broken.clone();
            spawn_worker(connection, rx.clone(), name)?;
        }
        Ok(Pool {
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `job` on a worker's connection and waits for its answer.
    pub(crate) fn call<T: Send + 'static, E: From<PgFailure> + Send + 'static>(
        &self,
        job: impl FnOnce(&mut Client) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let (tx, rx) = sync_channel(1);
        let boxed: Job = Box::new(move |connection: &mut Connection| {
            let answer = match connection.client() {
                Ok(client) => job(client),
                Err(e) => Err(E::from(e)),
            };
            if connection.client.as_ref().is_some_and(Client::is_closed) {
                connection.broken.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send(answer);
        });
        self.jobs
            .lock()
            .map_err(|_| PgFailure::Failed("the job queue was poisoned".into()))?
            .send(boxed)
            .map_err(|_| PgFailure::Failed("the connection workers stopped".into()))?;
        rx.recv().map_err(|_| {
            E::from(PgFailure::Failed(
                "a connection worker stopped mid-call".into(),
            ))
        })?
    }
}

fn spawn_worker(
    mut connection: Connection,
    jobs: Arc<Mutex<Receiver<Job>>>,
    name: &str,
) -> Result<(), PgFailure> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                let job = {
                    let Ok(queue) = jobs.lock() else { return };
                    match queue.recv() {
                        Ok(job) => job,
                        // The pool was dropped: no more jobs.
                        Err(_) => return,
                    }
                };
                job(&mut connection);
            }
        })
        .map(|_| ())
        .map_err(|e| PgFailure::Failed(format!("cannot start a worker: {e}")))
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(an unparsable URL)".to_string(),
    }
}

/// `u64` as PostgreSQL's `bigint`; sizes and indexes stay far below 2^63.
pub(crate) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
