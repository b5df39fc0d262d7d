//! A PostgreSQL server of its own for a test: Debian's binaries (scripts/test's
//! `ensure_postgres` installs them and sets `CUSTODIAN_PG_BIN`), `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port, stopped when dropped. Run as root (as CI
//! does), the server runs as the `postgres` user: PostgreSQL refuses to run as root.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running PostgreSQL server on loopback with trust authentication for user `custodian`.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Its loopback port.
    pub port: u16,
    as_postgres: bool,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUSTODIAN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").is_file());
    found.sort_by_key(|d| {
        d.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: scripts/test installs Debian's postgresql \
             (ensure_postgres); CUSTODIAN_PG_BIN names another bin directory"
        )
    })
}

impl Postgres {
    /// Initializes and starts a server; panics with the fix if it cannot.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("custodian-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "cannot give {} to the postgres user (does it exist? Debian's postgresql \
                 package creates it)",
                dir.path().display()
            );
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let pg = Postgres {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = pg.data_dir();
        pg.run_ok(
            "initdb",
            &[
                "-D",
                data.to_str().expect("a utf-8 path"),
                "-U",
                "custodian",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn run_ok(&self, tool: &str, args: &[&str]) {
        let out = self.run(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a database and returns its URL (`postgres://custodian@127.0.0.1:PORT/NAME`).
    pub fn database(&self, name: &str) -> String {
        self.run_ok(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "custodian",
                name,
            ],
        );
        self.url(name)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://custodian@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (as a crash would) and starts it again.
    pub fn restart(&self) {
        let data = self.data_dir();
        let data = data.to_str().expect("a utf-8 path");
        self.run_ok("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        self.start_server();
    }

    /// Stops the server at once, as an outage would, and leaves it stopped.
    pub fn stop(&self) {
        let data = self.data_dir();
        let data = data.to_str().expect("a utf-8 path");
        self.run_ok("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
    }

    /// Starts a server [`Postgres::stop`] stopped, on the same port and data.
    pub fn start_again(&self) {
        self.start_server();
    }

    fn start_server(&self) {
        let data = self.data_dir();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("a utf-8 path"),
                "-o",
                &options,
                "-l",
                log.to_str().expect("a utf-8 path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
