//! The log side of witnessing (`serve --witness-policy FILE`): after each integration the daemon
//! asks the policy's witnesses to cosign the new checkpoint (C2SP tlog-witness), and publishes
//! it — serves it, mirrors it, puts it in receipts and bundles — only once the quorum has.
//!
//! Appends are durable before any witness is asked, so a witness failure never loses one; it
//! only delays the receipt. How long is the policy's call ([`Unreachable`]): wait for the quorum
//! however long it takes, or answer after a while with the log-signed checkpoint alone (which
//! a verifier holding the policy then refuses, as it should).
//!
//! For each witness the daemon remembers the size it last cosigned. The first request says
//! `old 0`; a witness that knows the log answers 409 with its size, and the request is sent
//! again with a consistency proof from there, as the spec intends.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_core::checkpoint::Checkpoint;
use custodian_core::note::Note;
use custodian_core::witness::{AddCheckpoint, PolicyWitness, WitnessPolicy, parse_decimal};
use custodian_storage::ledger::{Ledger, LedgerError, SignedCheckpoint};
use tokio::sync::watch;

use crate::error::ServerError;

/// The file in the data directory that keeps the latest cosigned checkpoint across restarts.
pub const PUBLISHED_FILE: &str = "ledger-published-checkpoint";

/// What an append does when the witness quorum cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Wait for the quorum, however long (the client's deadline still applies).
    Wait,
    /// After this long, answer with the log-signed checkpoint alone, without cosignatures.
    Uncosigned(Duration),
}

/// The log side's settings.
#[derive(Clone, Debug)]
pub struct WitnessingConfig {
    /// The witnesses and the quorum.
    pub policy: WitnessPolicy,
    /// How long one add-checkpoint request may take.
    pub request_timeout: Duration,
    /// What appends do while the quorum is unreachable.
    pub unreachable: Unreachable,
}

/// Shared between the sequencer (which reports integrations and waits for publication) and the
/// witnessing task (which publishes).
#[derive(Debug)]
pub struct Publication {
    integrated: watch::Sender<u64>,
    published: watch::Sender<u64>,
    unreachable: Unreachable,
}

impl Publication {
    /// Tells the witnessing task the log grew to `size`.
    pub fn integrated(&self, size: u64) {
        self.integrated.send_replace(size);
    }

    /// Waits until a checkpoint of at least `size` is published and returns it; `None` when
    /// the policy's patience ran out first.
    pub async fn wait(&self, ledger: &Ledger, size: u64) -> Option<Arc<SignedCheckpoint>> {
        let mut published = self.published.subscribe();
        let reached = published.wait_for(|&p| p >= size);
        match self.unreachable {
            Unreachable::Wait => reached.await.ok()?,
            Unreachable::Uncosigned(patience) => {
                tokio::time::timeout(patience, reached).await.ok()?.ok()?
            }
        };
        Some(ledger.published())
    }
}

/// The witnessing task's state.
pub struct Witnessing {
    ledger: Arc<Ledger>,
    config: WitnessingConfig,
    client: reqwest::Client,
    /// Per witness, the size it is known to have cosigned last.
    known: Vec<Mutex<Option<u64>>>,
    publication: Arc<Publication>,
    file: PathBuf,
    /// Whether the published checkpoint carries the quorum (false for the size-0 start).
    cosigned: bool,
}

impl Witnessing {
    /// Gates the ledger's publication on the policy and returns the task to run and the handle
    /// the sequencer uses. The published checkpoint starts at the one kept in `data_dir` (if it
    /// is this log's and meets the policy), else at the log's empty checkpoint.
    pub fn start(
        ledger: Arc<Ledger>,
        config: WitnessingConfig,
        data_dir: &Path,
    ) -> Result<(Self, Arc<Publication>), ServerError> {
        let file = data_dir.join(PUBLISHED_FILE);
        let kept = std::fs::read_to_string(&file)
            .ok()
            .and_then(|note| {
                let checkpoint = Checkpoint::open(note.as_bytes(), ledger.verifier()).ok()?;
                config.policy.check(note.as_bytes(), checkpoint.size).ok()?;
                Some(SignedCheckpoint {
                    size: checkpoint.size,
                    root: checkpoint.root,
                    note,
                })
            })
            .filter(|kept| kept.size <= ledger.latest().size);
        let cosigned = kept.is_some();
        let initial = match kept {
            Some(kept) => kept,
            None => ledger.checkpoint(0).map_err(ServerError::Ledger)?,
        };
        let start_size = initial.size;
        ledger.gate_publication(initial).map_err(|e| {
            ServerError::Witnessing(format!(
                "the kept cosigned checkpoint {}: {e}",
                file.display()
            ))
        })?;
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| ServerError::Witnessing(format!("HTTP client: {e}")))?;
        let publication = Arc::new(Publication {
            integrated: watch::Sender::new(ledger.latest().size),
            published: watch::Sender::new(start_size),
            unreachable: config.unreachable,
        });
        let known = config
            .policy
            .witnesses()
            .iter()
            .map(|_| Mutex::new(None))
            .collect();
        Ok((
            Witnessing {
                ledger,
                config,
                client,
                known,
                publication: publication.clone(),
                file,
                cosigned,
            },
            publication,
        ))
    }

    /// Gathers cosignatures for each new checkpoint and publishes it once the quorum cosigned,
    /// until the process ends. A failed round is retried with a growing pause (at most 30 s),
    /// or at once when the log grows again.
    pub async fn run(mut self) {
        let mut integrated = self.publication.integrated.subscribe();
        let mut pause = Duration::from_millis(250);
        loop {
            let target = self.ledger.latest();
            if target.size > self.ledger.published().size || !self.cosigned {
                match self.round(&target).await {
                    Ok(note) => {
                        if let Err(err) = self.publish(&target, note).await {
                            tracing::error!(%err, size = target.size, "cannot publish a cosigned checkpoint");
                        } else {
                            pause = Duration::from_millis(250);
                            continue;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(size = target.size, %err, "witness quorum not reached; retrying");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    changed = integrated.changed() => if changed.is_err() { return },
                }
                pause = (pause * 2).min(Duration::from_secs(30));
                continue;
            }
            if integrated.changed().await.is_err() {
                return;
            }
        }
    }

    /// Asks every witness at once; returns the checkpoint with the cosignatures gathered if they
    /// meet the quorum.
    async fn round(&self, target: &SignedCheckpoint) -> Result<String, String> {
        let witnesses = self.config.policy.witnesses();
        let answers = futures::future::join_all(
            witnesses
                .iter()
                .enumerate()
                .map(|(i, w)| self.submit(i, w, target)),
        )
        .await;
        let mut note = target.note.clone();
        let mut failures = Vec::new();
        for (witness, answer) in witnesses.iter().zip(answers) {
            match answer {
                Ok(lines) => lines.iter().for_each(|l| note.push_str(l)),
                Err(err) => failures.push(format!("{}: {err}", witness.name)),
            }
        }
        match self.config.policy.check(note.as_bytes(), target.size) {
            Ok(_) => {
                for failure in &failures {
                    tracing::warn!(
                        failure,
                        "a witness did not cosign (the quorum was met without it)"
                    );
                }
                Ok(note)
            }
            Err(err) => Err(format!("{err}; {}", failures.join("; "))),
        }
    }

    /// One witness: sends the checkpoint with a proof from the size it last cosigned, resends
    /// once after a 409 names another size, and returns its valid cosignature lines.
    async fn submit(
        &self,
        i: usize,
        witness: &PolicyWitness,
        target: &SignedCheckpoint,
    ) -> Result<Vec<String>, String> {
        let Some(url) = &witness.url else {
            return Err("the policy gives no URL for it".into());
        };
        let url = format!("{}/add-checkpoint", url.trim_end_matches('/'));
        let text = Note::parse(target.note.as_bytes())
            .map_err(|e| e.to_string())?
            .text;
        for _ in 0..3 {
            let old = self.known[i].lock().map(|k| k.unwrap_or(0)).unwrap_or(0);
            if old > target.size {
                return Err(format!(
                    "it has cosigned size {old} of this log, larger than this log's {}: it was shown another history under this origin",
                    target.size
                ));
            }
            let proof = if old == 0 || old == target.size {
                Vec::new()
            } else {
                let ledger = self.ledger.clone();
                let size = target.size;
                tokio::task::spawn_blocking(move || ledger.consistency_proof(old, size))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e: LedgerError| e.to_string())?
            };
            let body = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: target.note.clone().into_bytes(),
            }
            .to_body();
            let response = self
                .client
                .post(&url)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = response.status();
            let is_size = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/x.tlog.size"));
            let body = response.text().await.map_err(|e| format!("{url}: {e}"))?;
            if status == reqwest::StatusCode::CONFLICT && is_size {
                let size = parse_decimal(body.trim_end_matches('\n')).ok_or_else(|| {
                    format!("409 with a size body that is not a decimal: {body:?}")
                })?;
                *self.known[i].lock().map_err(|e| e.to_string())? = Some(size);
                continue;
            }
            if !status.is_success() {
                let first = body.lines().next().unwrap_or("").trim();
                return Err(format!("HTTP {status}: {first}"));
            }
            // Keep only lines that are this witness's valid cosignature of this checkpoint.
            let lines: Vec<String> = body
                .lines()
                .map(|l| format!("{l}\n"))
                .filter(|line| {
                    Note::parse(format!("{}{line}", target.note).as_bytes())
                        .ok()
                        .and_then(|n| {
                            n.signatures
                                .last()
                                .filter(|s| {
                                    s.name == witness.key.name() && s.id == witness.key.id()
                                })
                                .and_then(|s| {
                                    witness.key.verify_note_signature(&text, &s.signature)
                                })
                        })
                        .is_some()
                })
                .collect();
            if lines.is_empty() {
                return Err("200 without a valid cosignature from its key".into());
            }
            *self.known[i].lock().map_err(|e| e.to_string())? = Some(target.size);
            return Ok(lines);
        }
        Err("it kept answering 409 with a changing size".into())
    }

    /// Publishes a cosigned checkpoint: kept on disk first (so a restart serves it), then in
    /// the ledger, then announced to waiting appends.
    async fn publish(&mut self, target: &SignedCheckpoint, note: String) -> Result<(), String> {
        let file = self.file.clone();
        let text = note.clone();
        tokio::task::spawn_blocking(move || write_atomically(&file, text.as_bytes()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{}: {e}", self.file.display()))?;
        self.ledger
            .publish(SignedCheckpoint {
                size: target.size,
                root: target.root,
                note,
            })
            .map_err(|e| e.to_string())?;
        self.cosigned = true;
        self.publication.published.send_replace(target.size);
        tracing::debug!(size = target.size, "published a cosigned checkpoint");
        Ok(())
    }
}

/// Replaces a file durably: temporary file, fsync, rename, directory fsync.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
