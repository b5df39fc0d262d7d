//! Starting and stopping a real `custodian serve` process for tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use custodian_proto::cas::v1::content_store_client::ContentStoreClient;
use tonic::transport::Channel;

/// The `custodian` binary Cargo built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_custodian")
}

/// A daemon on a free loopback port, with its own data directory. Killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub address: String,
    pub data_dir: PathBuf,
    extra: Vec<String>,
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
            data_dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let mut child = Command::new(binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start custodian serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let address = line
            .trim()
            .strip_prefix("custodian listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"));
        self.address = format!("http://{address}");
        self.child = Some(child);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A gRPC client for the content store.
    pub async fn client(&self) -> ContentStoreClient<Channel> {
        let channel = Channel::from_shared(self.address.clone())
            .expect("daemon address is a valid URI")
            .connect()
            .await
            .expect("connect to the daemon");
        ContentStoreClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A raw channel, for health and reflection clients.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone())
            .expect("daemon address is a valid URI")
            .connect()
            .await
            .expect("connect")
    }

    /// Runs `custodian ARGS` as a client of this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(args)
            .env("CUSTODIAN_SERVER", &self.address)
            .output()
            .expect("run custodian")
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
