//! A moto S3 server (PyPI `moto[server]`, installed by scripts/test) on a free loopback port, for
//! the tests that put an `s3://` backend or tile mirror against a real S3 API.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto S3 server with one bucket, stopped when dropped.
pub struct Moto {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto (`CUSTODIAN_MOTO_SERVER`, else `moto_server` on the PATH) and creates
    /// `bucket`; panics with the fix if it cannot.
    pub fn start(bucket: &str) -> Moto {
        let program =
            std::env::var("CUSTODIAN_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the S3 test server {program:?}: {e}. \
                     scripts/test installs it (pip install 'moto[server]'); \
                     CUSTODIAN_MOTO_SERVER names another binary"
                )
            });
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match moto.try_create_bucket(bucket, false) {
                Ok(response) if response.starts_with("HTTP/1.1 200") => return moto,
                Ok(response) => panic!("moto refused to create bucket {bucket}: {response}"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("moto did not start on port {port} within 60 s: {e}"),
            }
        }
    }

    /// Creates another bucket, with S3 Object Lock enabled if `object_lock` (which also turns
    /// versioning on, as S3 does); panics if moto refuses.
    pub fn create_bucket(&self, bucket: &str, object_lock: bool) {
        let response = self
            .try_create_bucket(bucket, object_lock)
            .unwrap_or_else(|e| panic!("moto on port {}: {e}", self.port));
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "moto refused to create bucket {bucket}: {response}"
        );
    }

    fn try_create_bucket(&self, bucket: &str, object_lock: bool) -> std::io::Result<String> {
        let lock = if object_lock {
            "x-amz-bucket-object-lock-enabled: true\r\n"
        } else {
            ""
        };
        self.http(&format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{lock}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        ))
    }

    /// Sends one raw HTTP/1.1 request (with `Connection: close`) and returns the whole answer.
    pub fn http(&self, request: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// The object store options that reach this server with moto's test credentials.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_virtual_hosted_style_request", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
