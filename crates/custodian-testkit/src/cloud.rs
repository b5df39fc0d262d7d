//! An object store served on loopback for one test, S3 or Azure, behind one face, so that a
//! test written once runs on both.

use crate::{Azurite, Moto};

/// A bucket on moto (S3) or a container on Azurite (Azure Blob Storage), stopped when dropped.
pub enum Cloud {
    /// S3, served by moto.
    S3 {
        /// The server.
        moto: Moto,
        /// The bucket, created at start.
        bucket: String,
    },
    /// Azure Blob Storage, served by Azurite.
    Azure {
        /// The server.
        azurite: Azurite,
        /// The container, created at start.
        container: String,
    },
}

impl Cloud {
    /// moto with `bucket` in it.
    pub fn s3(bucket: &str) -> Cloud {
        Cloud::S3 {
            moto: Moto::start(bucket),
            bucket: bucket.to_string(),
        }
    }

    /// Azurite with `container` in it.
    pub fn azure(container: &str) -> Cloud {
        Cloud::Azure {
            azurite: Azurite::start(container),
            container: container.to_string(),
        }
    }

    /// The `--storage` URL of `prefix` in the bucket or container.
    pub fn url(&self, prefix: &str) -> String {
        match self {
            Cloud::S3 { bucket, .. } => format!("s3://{bucket}/{prefix}"),
            Cloud::Azure { container, .. } => format!("az://{container}/{prefix}"),
        }
    }

    /// The object store options that reach the server.
    pub fn options(&self) -> Vec<(String, String)> {
        match self {
            Cloud::S3 { moto, .. } => moto.options(),
            Cloud::Azure { azurite, .. } => azurite.options(),
        }
    }

    /// The names of the objects whose names start with `prefix` (one page: up to 1,000 on S3,
    /// 5,000 on Azure, more than any test here makes).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        match self {
            Cloud::S3 { moto, bucket } => {
                let listing = moto
                    .http(&format!(
                        "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                        moto.port
                    ))
                    .unwrap_or_else(|e| panic!("moto on port {}: {e}", moto.port));
                assert!(listing.contains("<ListBucketResult"), "{listing}");
                listing
                    .split("<Key>")
                    .skip(1)
                    .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
                    .collect()
            }
            Cloud::Azure { azurite, container } => azurite.list(container, prefix),
        }
    }
}
