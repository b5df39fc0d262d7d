//! Starting and stopping a real `custodian serve` process for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds a bearer token to every request.
#[derive(Clone)]
pub struct AddToken(Option<MetadataValue<Ascii>>);

impl AddToken {
    /// Sends `token` (a full `Bearer …` value) with every request, or nothing.
    pub fn new(token: Option<MetadataValue<Ascii>>) -> Self {
        AddToken(token)
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A channel that authenticates with a token (or none).
pub type Authed = InterceptedService<Channel, AddToken>;

/// The `custodian` binary Cargo built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_custodian")
}

/// A daemon on a free loopback port, with its own data directory. Killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// The gRPC address, http://127.0.0.1:PORT.
    pub address: String,
    /// The REST address, http://127.0.0.1:PORT.
    pub rest: String,
    pub data_dir: PathBuf,
    /// An admin token for every namespace, created before the first start.
    pub token: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts a daemon on the embedded RocksDB store in a fresh directory.
    pub fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, &[])
    }

    /// Starts a daemon with extra `serve` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            address: String::new(),
            rest: String::new(),
            data_dir: dir.to_path_buf(),
            token: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        daemon.token = daemon.create_token("e2e-admin", "admin", "*");
        daemon.spawn();
        daemon
    }

    /// Creates a token in the data directory with `custodian token create`; returns its secret.
    pub fn create_token(&self, name: &str, scopes: &str, namespaces: &str) -> String {
        let output = Command::new(binary())
            .args([
                "token",
                "create",
                "--name",
                name,
                "--scope",
                scopes,
                "--namespace",
                namespaces,
            ])
            .args(["--secret-only", "--init", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .expect("run custodian token create");
        assert!(
            output.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .arg("serve")
            .args([
                "--init",
                "--listen",
                "127.0.0.1:0",
                "--rest-listen",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start custodian serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the listening line");
        let address = line
            .trim()
            .strip_prefix("custodian listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"));
        self.address = format!("http://{}", address.trim_end_matches(" (TLS)"));
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the REST listening line");
        let rest = line
            .trim()
            .strip_prefix("custodian rest listening on ")
            .unwrap_or_else(|| panic!("unexpected second line from serve: {line:?}"));
        self.rest = format!("http://{}", rest.trim_end_matches(" (TLS)"));
        self.child = Some(child);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A gRPC content store client with the admin token.
    pub async fn client(&self) -> ContentStoreClient<Authed> {
        ContentStoreClient::new(self.authed(Some(&self.token.clone())).await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A channel that sends `token` (or nothing) with every request.
    pub async fn authed(&self, token: Option<&str>) -> Authed {
        let value = token.map(|t| format!("Bearer {t}").parse().expect("ASCII token"));
        InterceptedService::new(self.channel().await, AddToken(value))
    }

    /// A raw channel, for health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .expect("daemon address is a valid URI")
            .connect()
            .await
            .expect("connect")
    }

    /// Runs `custodian ARGS` as a client of this daemon, with the admin token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_as(Some(&self.token), args)
    }

    /// Runs `custodian ARGS` as a client of this daemon with `token` (or none).
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut command = Command::new(binary());
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
        let mut child = self.child.take().expect("running");
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
        self.spawn();
    }

    /// Kills (if running) and starts again on the same data directory.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The peak resident memory of the daemon so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmHWM value in KiB");
        kib * 1024
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
