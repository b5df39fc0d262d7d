//! Starting and stopping a real `custodian serve` process on loopback, for tests and benchmarks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use custodian_client::Channel;
use custodian_client::{Client, Conn, Target};
use custodian_proto::cas::v1::content_store_client::ContentStoreClient;

/// Why a daemon could not be started.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The binary could not be run.
    #[error("running {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// `custodian token create` failed.
    #[error("custodian token create failed: {0}")]
    Token(String),
    /// `serve` did not print its listening lines.
    #[error("unexpected output from custodian serve: {0:?}")]
    Listening(String),
    /// The connection to the daemon failed.
    #[error(transparent)]
    Client(#[from] custodian_client::ClientError),
}

/// The `custodian` binary the daemon and client commands run: `CUSTODIAN_BIN` when set, otherwise
/// the one Cargo built beside the running executable (a test binary lives in `target/PROFILE/deps`,
/// a benchmark binary in `target/PROFILE`, and `custodian` in `target/PROFILE`).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CUSTODIAN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir.join("custodian")
}

/// A daemon on free loopback ports (gRPC and REST), with its own data directory and an admin
/// token. Killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// The gRPC address, http://127.0.0.1:PORT.
    pub address: String,
    /// The REST address, http://127.0.0.1:PORT.
    pub rest: String,
    /// The daemon's data directory.
    pub data_dir: PathBuf,
    /// An admin token for every namespace, created before the first start.
    pub token: String,
    binary: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts a daemon on the embedded RocksDB store in a fresh directory; panics if it cannot.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    /// Starts a daemon with extra `serve` arguments; panics if it cannot.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        Self::launch(&binary(), dir, extra)
            .unwrap_or_else(|err| panic!("starting custodian serve: {err}"))
    }

    /// Starts `binary serve` on `dir` with extra arguments, creating an admin token first.
    pub fn launch(binary: &Path, dir: &Path, extra: &[&str]) -> Result<Daemon, HarnessError> {
        let mut daemon = Daemon {
            child: None,
            address: String::new(),
            rest: String::new(),
            data_dir: dir.to_path_buf(),
            token: String::new(),
            binary: binary.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        daemon.token = daemon.try_create_token("harness-admin", "admin", "*")?;
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Creates a token in the data directory with `custodian token create`; returns its secret.
    pub fn create_token(&self, name: &str, scopes: &str, namespaces: &str) -> String {
        self.try_create_token(name, scopes, namespaces)
            .unwrap_or_else(|err| panic!("{err}"))
    }

    fn try_create_token(
        &self,
        name: &str,
        scopes: &str,
        namespaces: &str,
    ) -> Result<String, HarnessError> {
        let output = Command::new(&self.binary)
            .args(["token", "create", "--name", name, "--scope", scopes])
            .args(["--namespace", namespaces])
            .args(["--secret-only", "--init", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !output.status.success() {
            return Err(HarnessError::Token(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn spawn_error(&self, source: std::io::Error) -> HarnessError {
        HarnessError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut child = Command::new(&self.binary)
            .arg("serve")
            .args(["--init", "--listen", "127.0.0.1:0"])
            .args(["--rest-listen", "127.0.0.1:0", "--log", "warn"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        // The child is killed if the listening lines do not come, so a failed start leaves no
        // daemon behind.
        let lines = match child.stdout.take().map(BufReader::new) {
            Some(mut out) => listening_line(&mut out, "custodian listening on ").and_then(|grpc| {
                Ok((
                    grpc,
                    listening_line(&mut out, "custodian rest listening on ")?,
                ))
            }),
            None => Err(String::new()),
        };
        let (grpc, rest) = match lines {
            Ok(lines) => lines,
            Err(line) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Listening(line));
            }
        };
        self.address = format!("http://{grpc}");
        self.rest = format!("http://{rest}");
        self.child = Some(child);
        Ok(())
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// Where this daemon is, with `token` (or none).
    pub fn target(&self, token: Option<&str>) -> Target {
        Target::new(self.address.clone(), token)
    }

    /// A connection that sends `token` (or nothing) with every request.
    pub async fn connect(&self, token: Option<&str>) -> Client {
        Client::connect(&self.target(token))
            .await
            .unwrap_or_else(|err| panic!("connecting to the daemon: {err}"))
    }

    /// A gRPC content store client with the admin token.
    pub async fn client(&self) -> ContentStoreClient<Conn> {
        self.connect(Some(&self.token)).await.store()
    }

    /// A channel that sends `token` (or nothing) with every request.
    pub async fn authed(&self, token: Option<&str>) -> Conn {
        self.connect(token).await.conn()
    }

    /// A raw channel, for health and reflection clients.
    pub async fn channel(&self) -> Channel {
        self.connect(None).await.channel()
    }

    /// Runs `custodian ARGS` as a client of this daemon, with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(Some(&self.token), args)
    }

    /// Runs `custodian ARGS` as a client of this daemon with `token` (or none).
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(&self.binary);
        command.args(args).env("CUSTODIAN_SERVER", &self.address);
        match token {
            Some(token) => command.env("CUSTODIAN_TOKEN", token),
            None => command.env_remove("CUSTODIAN_TOKEN"),
        };
        command.output().expect("run custodian")
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself; returns whether it exited successfully.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let mut child = self.child.take().expect("the daemon is running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills (if running) and starts again with these extra environment variables (replacing
    /// any given before).
    pub fn restart_with_env(&mut self, env: &[(&str, String)]) {
        self.kill9();
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.spawn().unwrap_or_else(|err| panic!("{err}"));
    }

    /// Stops the daemon with SIGTERM, requires a clean exit within 30 s, and starts it again on
    /// the same data directory.
    pub fn restart_after_terminate(&mut self) {
        self.terminate();
        assert!(
            self.wait_exit(Duration::from_secs(30)),
            "the daemon did not exit cleanly on SIGTERM"
        );
        self.spawn().unwrap_or_else(|err| panic!("{err}"));
    }

    /// Kills (if running) and starts again on the same data directory.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn().unwrap_or_else(|err| panic!("{err}"));
    }

    /// The peak resident memory of the daemon so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        crate::peak_rss(self.pid()).expect("VmHWM of the daemon in /proc")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads one line and returns the address after `prefix`, without a ` (TLS)` suffix; the line
/// itself when it is something else.
fn listening_line(out: &mut impl BufRead, prefix: &str) -> Result<String, String> {
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    match line.trim().strip_prefix(prefix) {
        Some(address) => Ok(address.trim_end_matches(" (TLS)").to_string()),
        None => Err(line),
    }
}

/// Writes a log key with a known seed into a data directory, as `serve` would have made it on
/// first start; returns the verifier key. Two data directories with one key make a split view.
pub fn write_log_key(data_dir: &Path, origin: &str, seed: u8) -> String {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(data_dir).expect("data dir");
    let key = custodian_core::note::SignerKey::from_seed(origin, [seed; 32]).expect("key");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    // The file name is the daemon's (custodian_server::KEY_FILE), which this crate cannot name.
    let mut file = options.open(data_dir.join("log-key")).expect("log key");
    std::io::Write::write_all(&mut file, key.to_private_string().as_bytes()).expect("write");
    key.verifier().to_string()
}

/// Runs `custodian serve` on `dir` (loopback ports, `--init`) with `extra`, which must make it
/// refuse to start: panics if it is still running after 60 s or exits successfully. Returns what
/// it said on standard error.
pub fn serve_refuses(dir: &Path, extra: &[&str]) -> String {
    let mut child = Command::new(binary())
        .args(["serve", "--init", "--listen", "127.0.0.1:0"])
        .args(["--rest-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                panic!("custodian serve {extra:?} started; it should have refused");
            }
        }
    }
    let out = child.wait_with_output().expect("serve's output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "serve {extra:?} should fail: {stderr}"
    );
    stderr
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
