//! Where a log's tlog-tiles are read from: a daemon's REST port or a CDN (http/https), a local
//! mirror (file://), or the bucket `serve --tiles-to` writes (s3://…, read with credentials).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// Where the log's tiles are: `http(s)://…/log` (a daemon's REST port, a CDN), `file:///…`, or
/// an object store bucket (`s3://bucket/prefix`, what `serve --tiles-to` writes), read with its
/// credentials.
pub(super) enum Source {
    Http(String),
    Dir(PathBuf),
    Store(
        std::sync::Arc<dyn object_store::ObjectStore>,
        object_store::path::Path,
    ),
}

impl Source {
    /// Reads `--log`/`--from`: http(s), file://, or an object store URL with its options.
    pub(super) fn parse(url: &str, options: &[(String, String)]) -> anyhow::Result<Source> {
        let url = url.trim_end_matches('/');
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(Source::Http(url.to_string()))
        } else if let Some(path) = url.strip_prefix("file://") {
            Ok(Source::Dir(PathBuf::from(path)))
        } else if url.contains("://") {
            let (store, prefix, _) = custodian_object::build_store(url, options)
                .with_context(|| format!("--log {url:?}"))?;
            Ok(Source::Store(store, prefix))
        } else {
            bail!(
                "--log {url:?}: give the log's tile prefix as http(s)://HOST:PORT/log (a daemon's REST port), file:///DIR or s3://BUCKET/PREFIX"
            )
        }
    }

    /// Reads one file of the log (`checkpoint`, `tile/…`); run on a blocking thread.
    pub(super) fn read(
        &self,
        path: &str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Vec<u8>, String> {
        match self {
            Source::Http(base) => {
                let url = format!("{base}/{path}");
                runtime.block_on(async {
                    let response = reqwest::get(&url)
                        .await
                        .map_err(|e| format!("GET {url}: {e}"))?;
                    let status = response.status();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| format!("GET {url}: {e}"))?;
                    if !status.is_success() {
                        return Err(format!(
                            "GET {url}: {status}: {}",
                            String::from_utf8_lossy(&body).trim()
                        ));
                    }
                    Ok(body.to_vec())
                })
            }
            Source::Dir(dir) => {
                let file = dir.join(path);
                std::fs::read(&file).map_err(|e| format!("reading {}: {e}", file.display()))
            }
            Source::Store(store, prefix) => {
                use object_store::ObjectStoreExt as _;
                let key: object_store::path::Path = prefix
                    .parts()
                    .chain(object_store::path::Path::from(path).parts())
                    .collect();
                runtime.block_on(async {
                    let found = store.get(&key).await.map_err(|e| format!("{key}: {e}"))?;
                    found
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .map_err(|e| format!("{key}: {e}"))
                })
            }
        }
    }
}
