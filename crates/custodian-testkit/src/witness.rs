//! Starting and stopping a real `custodian witness serve` process on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A witness on a loopback port with its own key and state, cosigning for the given logs.
/// Killed when dropped; a restart keeps its port, key and state.
pub struct WitnessProcess {
    child: Option<Child>,
    /// The submission prefix, http://127.0.0.1:PORT.
    pub url: String,
    /// Its cosignature/v1 verifier key.
    pub vkey: String,
    /// Its name in cosignature lines.
    pub name: String,
    dir: PathBuf,
    listen: String,
}

impl WitnessProcess {
    /// Makes a key named `name` in `dir`, a log list of `log_vkeys`, and starts the witness.
    pub fn start(dir: &Path, name: &str, log_vkeys: &[&str]) -> WitnessProcess {
        std::fs::create_dir_all(dir).expect("witness dir");
        let output = Command::new(crate::binary())
            .args(["witness", "keygen", "--force", "--name", name])
            .arg(dir.join("witness"))
            .output()
            .expect("run custodian witness keygen");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let vkey = std::fs::read_to_string(dir.join("witness.pub"))
            .expect("witness.pub")
            .trim()
            .to_string();
        let logs: String = log_vkeys.iter().map(|k| format!("log {k}\n")).collect();
        std::fs::write(dir.join("logs.conf"), logs).expect("logs.conf");
        let mut witness = WitnessProcess {
            child: None,
            url: String::new(),
            vkey,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".into(),
        };
        witness.spawn();
        witness
    }

    fn spawn(&mut self) {
        let mut child = Command::new(crate::binary())
            .args([
                "witness",
                "serve",
                "--log",
                "warn",
                "--listen",
                &self.listen,
            ])
            .arg("--key")
            .arg(self.dir.join("witness.key"))
            .arg("--logs")
            .arg(self.dir.join("logs.conf"))
            .arg("--state")
            .arg(self.dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run custodian witness serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let Some(address) = line.trim().strip_prefix("custodian witness listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected output from custodian witness serve: {line:?}");
        };
        self.listen = address.to_string();
        self.url = format!("http://{address}");
        // Keep reading its stdout so the witness never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        self.child = Some(child);
    }

    /// The policy line naming this witness as `label`.
    pub fn policy_line(&self, label: &str) -> String {
        format!("witness {label} {} {}\n", self.vkey, self.url)
    }

    /// Kills it with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, key and state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
