//! An Azurite blob service (npm `azurite`, Microsoft's Azure Storage emulator, installed by
//! scripts/test) on a free loopback port, for the tests that put an `az://` backend against a
//! real Azure Blob Storage API.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac as _};

/// The emulator's one account and its published key (learn.microsoft.com, "Use the Azurite
/// emulator for local Azure Storage development", "Well-known storage account and key").
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The Blob service version the requests of this harness name.
const VERSION: &str = "2021-08-06";

/// An Azurite blob service holding its data in memory, stopped when dropped.
pub struct Azurite {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Azurite {
    /// Starts Azurite's blob service (`CUSTODIAN_AZURITE`, else `azurite-blob` on the PATH) and
    /// creates `container`; panics with the fix if it cannot.
    pub fn start(container: &str) -> Azurite {
        let program = std::env::var("CUSTODIAN_AZURITE").unwrap_or_else(|_| "azurite-blob".into());
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(&program)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            // In memory, so nothing is left behind; no telemetry (and no network beyond loopback);
            // the account from the path, as the endpoint below names it; any service version,
            // since object_store's client, not this emulator, decides which one it speaks.
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--disableProductStyleUrl",
                "--skipApiVersionCheck",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the Azure Blob test server {program:?}: {e}. \
                     scripts/test installs it (npm install azurite); \
                     CUSTODIAN_AZURITE names another binary"
                )
            });
        let azurite = Azurite { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match azurite.try_create_container(container) {
                Ok(response) if response.starts_with("HTTP/1.1 201") => return azurite,
                Ok(response) => panic!("Azurite refused to create {container}: {response}"),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("Azurite did not start on port {port} within 60 s: {e}"),
            }
        }
    }

    fn try_create_container(&self, container: &str) -> std::io::Result<String> {
        self.request("PUT", &format!("/{container}"), &[("restype", "container")])
    }

    /// The names of the blobs in `container` whose names start with `prefix` (one page of up to
    /// 5,000, more than any test here makes).
    pub fn list(&self, container: &str, prefix: &str) -> Vec<String> {
        let response = self
            .request(
                "GET",
                &format!("/{container}"),
                &[
                    ("comp", "list"),
                    ("prefix", prefix),
                    ("restype", "container"),
                ],
            )
            .unwrap_or_else(|e| panic!("Azurite on port {}: {e}", self.port));
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "Azurite refused to list {container}: {response}"
        );
        response
            .split("<Name>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Name>").map(|(name, _)| name.to_string()))
            .collect()
    }

    /// Replaces the blob `name` in `container` with `bytes` behind the store's back (Put Blob),
    /// as damage or a careless operator would; panics if Azurite refuses.
    pub fn overwrite(&self, container: &str, name: &str, bytes: &[u8]) {
        let response = self
            .request_with(
                "PUT",
                &format!("/{container}/{name}"),
                &[],
                &[("x-ms-blob-type", "BlockBlob")],
                bytes,
            )
            .unwrap_or_else(|e| panic!("Azurite on port {}: {e}", self.port));
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "Azurite refused to write {container}/{name}: {response}"
        );
    }

    /// Sends one request with no body; see [`Azurite::request_with`].
    fn request(&self, verb: &str, path: &str, query: &[(&str, &str)]) -> std::io::Result<String> {
        self.request_with(verb, path, query, &[], &[])
    }

    /// Sends one request signed with the account's key (Shared Key) and returns the whole
    /// answer. `query` and `headers` (x-ms- headers beside the date and version) are in the
    /// order the signature wants them: sorted by name.
    fn request_with(
        &self,
        verb: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<String> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let mut ms_headers: Vec<(&str, &str)> = headers.to_vec();
        ms_headers.extend([("x-ms-date", date.as_str()), ("x-ms-version", VERSION)]);
        ms_headers.sort();
        // learn.microsoft.com, "Authorize with Shared Key": the verb, eleven standard headers
        // (only Content-Length is sent, and it is empty when 0), the x-ms- headers, then the
        // account, the path as sent (path-style, so the account appears twice) and each query
        // parameter on a line of its own.
        let mut to_sign = format!("{verb}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
        for (name, value) in &ms_headers {
            to_sign.push_str(&format!("{name}:{value}\n"));
        }
        to_sign.push_str(&format!("/{ACCOUNT}/{ACCOUNT}{path}"));
        for (name, value) in query {
            to_sign.push_str(&format!("\n{name}:{value}"));
        }
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("the emulator key is base64");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let query: String = query
            .iter()
            .enumerate()
            .map(|(i, (n, v))| format!("{}{n}={v}", if i == 0 { '?' } else { '&' }))
            .collect();
        let mut head = format!(
            "{verb} /{ACCOUNT}{path}{query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        for (name, value) in &ms_headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Authorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// The object store options that reach this server with the emulator's account and key
    /// (object_store's Azure configuration keys, as `--storage-option` takes them).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", ACCOUNT.to_string()),
            ("azure_storage_account_key", KEY.to_string()),
            (
                "azure_storage_endpoint",
                format!("http://127.0.0.1:{}/{ACCOUNT}", self.port),
            ),
            ("azure_allow_http", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
