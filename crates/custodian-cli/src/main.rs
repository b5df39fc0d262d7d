//! `custodian`: the Custodian daemon and its command-line client.

#[allow(unsafe_code)]
mod allocator;
mod args;
mod blob;
mod client;
mod datapack;
mod eval;
mod evidence;
mod keys;
mod local_put;
mod log;
mod modelsig;
mod oci;
mod output;
mod pack;
mod policy;
mod publish;
mod resume;
mod retention;
mod scrub;
mod serve;
mod sink;
mod token;
mod witness;

use clap::{Parser, Subcommand};

/// Large buffers kept for reuse, everything else glibc's (see `allocator`).
#[global_allocator]
static ALLOCATOR: allocator::Pooled = allocator::Pooled;

/// The address clients use unless told otherwise; `serve` listens there by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7311";

#[derive(Parser)]
#[command(
    name = "custodian",
    version,
    about = "Custody and provenance for LLM Behavior Packages",
    long_about = "Custodian keeps custody of blobs (package files, data packs) by digest, verified \
on write and never served corrupted; keeps an append-only provenance ledger; and is a registry \
of signed Behavior Package versions and their data packs.\n\n\
Run the daemon with `custodian serve`. The other commands are clients of a running daemon (see \
--server, --token), except `log verify-receipt`, `audit`, `verify`, `pack` and `key generate`, \
which work offline, and `token`, which runs on the daemon's host.\n\n\
Behavior Packages are folders with a manifest.yaml. `pack build` hashes, checks and signs one \
(DSSE, Ed25519; `--format oms` writes an OpenSSF model-signing signature instead), `publish` \
records it in the registry and the ledger, `install` fetches and verifies it. `key rotate` and \
`key revoke` change keys in the ledger; every signature is judged against the keys valid when it \
was logged. Writes need an API token (`token create`, on the daemon's host); public content \
is readable without one, private content only with a read grant.\n\n\
Publishers pre-register each eval's bar (`eval preregister`) before runners `attest` signed \
eval runs; the built-in scanner judges every publication and hosted data pack (`scan` rescans, `scan local` runs offline, external scanners plug in with `serve --scanner` or `scan record`), and a versioned \
policy decides each version's badge (`badge`: green, review or failing, with reasons). \
`verify` re-checks a badge bundle offline with nothing but the log's key.\n\n\
Digests are written sha256:<64 hex> (the canonical address) or blake3:<64 hex>; every blob \
can be fetched by either.\n\n\
Provenance events go into an append-only RFC 6962 Merkle log with signed C2SP checkpoints. \
Auditors verify receipts (`custodian log verify-receipt`) and whole exports (`custodian audit`) \
offline, with nothing but the log's verifier key.",
    after_help = "Examples:\n  \
custodian serve                                   # embedded RocksDB in ./.custodian\n  \
export CUSTODIAN_TOKEN=$(custodian token create --name me --scope admin --namespace '*' --secret-only)\n  \
custodian key generate acme-release               # acme-release.key + acme-release.pub\n  \
custodian publish examples/pacman-builder --key acme-release.key\n  \
custodian install pacman-builder@0.2.1 -o ./pacman\n  \
custodian pack verify ./pacman --key acme-release.pub   # offline\n  \
custodian datapack upload pacman-builder@0.2.1 levels.parquet --license CC-BY-4.0\n  \
custodian scan pacman-builder@0.2.1              # rescan and record the verdicts\n  \
custodian scan local examples/pacman-builder     # the same rules, offline\n  \
custodian blob put dataset.parquet prompts.yaml   # prints each file's digests\n  \
custodian blob get sha256:9f86d0... -o dataset.parquet\n  \
custodian blob missing sha256:9f86d0... blake3:4878ca...\n  \
custodian log key > log.vkey                      # the key auditors need\n  \
custodian log receipt 42 -o entry42.receipt.json\n  \
custodian log verify-receipt entry42.receipt.json --key log.vkey   # offline\n  \
custodian log checkpoint > saved.checkpoint       # later: did the log only grow?\n  \
custodian log consistency --from saved.checkpoint --key log.vkey --update\n  \
custodian log monitor --log http://127.0.0.1:7312/log --key log.vkey --state log.state   # from cron\n  \
custodian log export audit-dir && custodian audit audit-dir --key log.vkey   # offline\n  \
custodian scrub --data-dir .custodian              # stopped daemon: read everything back\n\n\
Benchmarks are a separate binary, custodian-bench (docs/performance.md).",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Custodian daemon (content store, ledger, registry, evidence; gRPC and REST)
    #[command(long_about = serve::LONG_ABOUT)]
    Serve(Box<serve::ServeArgs>),
    /// Store, fetch and inspect blobs in a running daemon
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// The provenance ledger: keys, checkpoints, entries, appends, receipts, consistency,
    /// exports (and offline receipt verification)
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Audit an exported ledger offline: recompute every hash and root, check every signature
    #[command(
        long_about = "Audit a directory written by `custodian log export`, offline, \
with the log's verifier key obtained independently. Recomputes every stored tree hash and root \
from the entries, checks every checkpoint's signature and that its root matches (so each is \
consistent with all before it), checks the prev hash chain and that integration times never go \
back. Exits 1 naming the first index where anything diverges."
    )]
    Audit(log::AuditArgs),
    /// Keys: generate a pair; rotate, revoke or introduce publisher and attester keys in the
    /// ledger
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Build (hash, check, sign) and verify Behavior Package folders, offline
    #[command(subcommand)]
    Pack(pack::PackCommand),
    /// Publish a package folder: upload the files the daemon lacks, record the signed version
    #[command(
        long_about = "Publish a Behavior Package version. With --key the folder is built and signed first (as `pack build`); otherwise it must already be built and unchanged since. Only files the daemon does not hold are uploaded. The daemon checks the signature, every file's digest and size, the manifest and PromptPack resources, and records a PackagePublished entry in the ledger; the receipt proves it. Versions are immutable: publishing the same content again is a no-op, other content under the same version is refused. Needs a token with the publish scope for the package name (--token or CUSTODIAN_TOKEN)."
    )]
    Publish(publish::PublishArgs),
    /// Install NAME@VERSION into a folder, verifying the signature and every file
    #[command(
        long_about = "Fetch a published version into a folder. The signature is checked with the publisher key the registry pinned (and with --key if given), every file against its signed sha256 before it appears, and the signed root against the registry's record. A yanked version installs with a warning; the badge state is shown. `custodian pack verify DIR --key DIR/.custodian/publisher.pub` re-checks the folder later, offline."
    )]
    Install(publish::InstallArgs),
    /// List a package's versions
    Versions(publish::VersionsArgs),
    /// Show one version: record, files, data pack
    Show(publish::ShowArgs),
    /// Yank a version (recorded in the ledger; it stays fetchable and is flagged)
    Yank(publish::YankArgs),
    /// Data packs over the REST API: upload hosted bytes, register an external pack, show,
    /// download
    #[command(subcommand)]
    Datapack(datapack::DataPackCommand),
    /// Pin blobs (a digest, or NAME@VERSION's files and data pack): garbage collection keeps
    /// them until the pin lapses or is removed (admin; a ledger entry)
    Pin(retention::PinArgs),
    /// Remove a pin placed on the same subject (admin; a ledger entry)
    Unpin(retention::SubjectArgs),
    /// Place a legal hold: no path deletes the blobs until an admin releases it; needs --reason
    /// (admin; a ledger entry)
    Hold(retention::SubjectArgs),
    /// Release a legal hold placed on the same subject; needs --reason (admin; a ledger entry)
    Release(retention::SubjectArgs),
    /// Collect garbage online: delete blobs nothing keeps, each batch recorded first as a
    /// BlobsDeleted ledger entry
    #[command(
        long_about = "Collect garbage while the daemon keeps serving. A blob is kept while anything keeps it: a legal hold; a published version, hosted data pack or sealed ledger entry that references it; an OCI repository it is linked into; a pin that has not lapsed; or the grace period (--grace, default the daemon's serve --gc-grace, at least the upload session expiry), which runs from its upload and from every later put that was told it is already present. Everything else is deleted, in batches; each batch is first recorded as a BlobsDeleted ledger entry (digests, sizes, reason, policy), so `custodian blob why DIGEST` and a GET of a deleted digest say when and why it went. Uploads and publications may continue meanwhile: a blob acknowledged or referenced while the collection runs is never deleted. --dry-run prints what would go and records nothing. Needs an admin token."
    )]
    Gc(retention::GcArgs),
    /// Register attester keys (signers of eval runs)
    #[command(subcommand)]
    Attester(evidence::AttesterCommand),
    /// Sign eval runs with an attester key and submit them
    #[command(
        long_about = "Sign eval runs and submit them. RUN.json is one run (an object) or \
several (an array); each names package, version, eval_id, model, passed, metrics \
({name: {value, threshold}}), data_pack_sha256 (required when the version has a hosted data \
pack), reproducibility_context (an object: eval case ids, input fingerprints, schema versions, \
seed, …), started_at and finished_at (RFC 3339) and runner {id, version}. Each becomes an \
in-toto Statement about the version's manifest digest, signed as a DSSE envelope with --key; the \
daemon checks it and records a RunAttested entry. Several runs go in one AttestRuns call."
    )]
    Attest(evidence::AttestArgs),
    /// Scan content: rescan a version on the daemon, scan a folder or file offline, or record
    /// an external scanner's verdict
    Scan(evidence::ScanArgs),
    /// Show a version's badge and its reasons; -o writes the bundle for `custodian verify`
    Badge(evidence::BadgeArgs),
    /// The liveness report: the latest run of each eval × model, its age, result, data pack and
    /// context fingerprint, and each eval's pre-registration
    Report(evidence::ReportArgs),
    /// Evals: pre-register an eval's acceptance criteria before its runs
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Verify a badge bundle offline: every signature and proof, and the badge recomputed
    #[command(
        long_about = "Verify a badge bundle offline with the log's verifier key, obtained \
independently. Checks the signed checkpoint, every entry's inclusion proof, the publication's \
signature and manifest digest, every run's attester registration and signature, then re-runs the \
badge policy on the evidence and compares the result with the bundled badge. Exits 1 naming the \
first thing that does not hold. docs/verifying.md describes each step."
    )]
    Verify(evidence::VerifyArgs),
    /// Read back every blob and the whole log of a stopped daemon; report and quarantine damage
    #[command(long_about = scrub::LONG_ABOUT)]
    Scrub(scrub::ScrubArgs),
    /// Create, list and revoke API tokens (run on the daemon's host)
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Run a C2SP tlog-witness that cosigns other logs' checkpoints, and make its key
    #[command(subcommand)]
    Witness(witness::WitnessCommand),
    /// The OCI front end's provenance: every state of a tag, with receipts
    #[command(subcommand)]
    Oci(oci::OciCommand),
}

/// The exit status of a process whose output pipe was closed (128 + SIGPIPE), as a shell reports
/// `yes | head`.
const EXIT_BROKEN_PIPE: i32 = 141;

/// Ends the process quietly when standard output is closed under it (`custodian … | head`):
/// `println!` panics on a broken pipe, and Rust ignores SIGPIPE, so without this every early
/// reader would be answered with a panic message. Any other panic is reported as before.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        default(info);
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    // The daemon and the CLI's bulk transfers reuse large buffers (see `allocator`).
    if matches!(
        cli.command,
        Command::Serve(_) | Command::Datapack(_) | Command::Blob(_) | Command::Install(_)
    ) {
        allocator::tune();
    }
    // A transfer's receive buffers come and go in bursts larger than the daemon keeps.
    if matches!(
        cli.command,
        Command::Datapack(_) | Command::Blob(_) | Command::Install(_)
    ) {
        allocator::keep_up_to(allocator::TRANSFER_KEPT);
    }
    // A get's bytes pass from HTTP/2's connection task to the task that hands them to the
    // hashing and writing threads, frame by frame. On a runtime of one thread that costs no
    // wake-up of another: a verified 1 GiB get by its sha256 digest switched threads 3,100-4,200
    // times instead of 6,000-13,800, and took 0.03-0.06 s less of the CLI's CPU (0.80-0.86 s),
    // in two sets of alternating runs (docs/performance-history.md, fiftieth session). The
    // hashing and the file writes have threads of their own either way; puts, measured the same
    // way, did not change, and keep the runtime of every other command.
    let one_thread = matches!(&cli.command, Command::Blob(blob::BlobCommand::Get { .. }));
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Blob(command) => blob::run(command).await,
            Command::Log(command) => log::run(command).await,
            Command::Audit(args) => tokio::task::spawn_blocking(move || log::audit(args)).await?,
            Command::Key(command) => keys::run_key(command).await,
            Command::Pack(command) => {
                tokio::task::spawn_blocking(move || pack::run(command)).await?
            }
            Command::Publish(args) => publish::publish(args).await,
            Command::Install(args) => publish::install(args).await,
            Command::Versions(args) => publish::versions(args).await,
            Command::Show(args) => publish::show(args).await,
            Command::Yank(args) => publish::yank(args).await,
            Command::Token(command) => token::run(command),
            Command::Datapack(command) => datapack::run(command).await,
            Command::Pin(args) => retention::pin(args).await,
            Command::Unpin(args) => retention::subject("unpin", args).await,
            Command::Hold(args) => retention::subject("hold", args).await,
            Command::Release(args) => retention::subject("release", args).await,
            Command::Gc(args) => retention::gc(args).await,
            Command::Attester(command) => evidence::attester(command).await,
            Command::Attest(args) => evidence::attest(args).await,
            Command::Scan(command) => evidence::scan(command).await,
            Command::Badge(args) => evidence::badge(args).await,
            Command::Report(args) => evidence::report(args).await,
            Command::Eval(command) => eval::run(command).await,
            Command::Verify(args) => evidence::verify(args),
            Command::Scrub(args) => scrub::run(args).await,
            Command::Witness(command) => witness::run(command).await,
            Command::Oci(command) => oci::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
