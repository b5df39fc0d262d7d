//! S3 Object Lock legal holds on stored blobs, beside the ledger's hold.
//!
//! `object_store` has no call for Object Lock, so these are raw S3 requests (`PUT` and `GET
//! /{key}?legal-hold`, `GET /?object-lock`) signed here with AWS Signature Version 4 (header
//! form, signed payload). The signer is checked against the examples AWS publishes for S3
//! (see the tests); the requests against `moto` on loopback in the end-to-end suite.
//!
//! The endpoint, region and static credentials are resolved the way the store's own S3 client
//! resolves them: `AmazonS3Builder::from_env()` with the same URL and options.

use std::time::SystemTime;

use async_trait::async_trait;
use custodian_core::Digest;
use custodian_storage::{NativeHolds, Result, StorageError};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use sha2::{Digest as _, Sha256};

const BACKEND: &str = "s3";

/// Static credentials, as the environment or the store options give them.
#[derive(Clone)]
struct Credentials {
    access_key: String,
    secret_key: String,
    token: Option<String>,
}

/// Sets and reads S3 Object Lock legal holds on the objects of one store.
pub struct S3LegalHolds {
    client: reqwest::Client,
    /// The bucket's base URL, path-style (`http://127.0.0.1:9000/bucket`) or virtual-hosted.
    bucket_url: url::Url,
    region: String,
    credentials: Credentials,
    /// Maps a blob's SHA-256 to its object key (the store's own layout).
    key_of: Box<dyn Fn(&Digest) -> Path + Send + Sync>,
}

impl S3LegalHolds {
    /// Resolves the endpoint and credentials for `url` (an `s3://bucket/prefix` URL) and
    /// `options` exactly as the store's S3 client does; `key_of` names a blob's object.
    pub fn new(
        url: &str,
        options: &[(String, String)],
        key_of: Box<dyn Fn(&Digest) -> Path + Send + Sync>,
    ) -> Result<Self> {
        let err = |m: String| StorageError::backend(BACKEND, m);
        let parsed = url::Url::parse(url).map_err(|e| err(format!("{url}: {e}")))?;
        if !matches!(parsed.scheme(), "s3" | "s3a") {
            return Err(err(format!(
                "native legal holds need an s3://bucket/prefix store, not {url}"
            )));
        }
        let bucket = parsed
            .host_str()
            .ok_or_else(|| err(format!("{url} names no bucket")))?
            .to_string();
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key.parse().map_err(|e| err(format!("{e}")))?;
            builder = builder.with_config(key, value);
        }
        let get = |key: AmazonS3ConfigKey| builder.get_config_value(&key);
        let region = get(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".to_string());
        let virtual_hosted =
            get(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref() == Some("true");
        // The same rule the store's client uses to place the bucket in the URL.
        let base = match (get(AmazonS3ConfigKey::Endpoint), virtual_hosted) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let bucket_url = url::Url::parse(&base).map_err(|e| err(format!("{base}: {e}")))?;
        let allow_http = get(AmazonS3ConfigKey::Client(
            object_store::ClientConfigKey::AllowHttp,
        ))
        .is_some_and(|v| v == "true");
        if bucket_url.scheme() == "http" && !allow_http {
            return Err(err(format!(
                "the S3 endpoint {base} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it"
            )));
        }
        let (Some(access_key), Some(secret_key)) = (
            get(AmazonS3ConfigKey::AccessKeyId),
            get(AmazonS3ConfigKey::SecretAccessKey),
        ) else {
            return Err(err(
                "native legal holds need static S3 credentials: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if temporary)"
                    .to_string(),
            ));
        };
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| err(format!("HTTP client: {e}")))?;
        Ok(S3LegalHolds {
            client,
            bucket_url,
            region,
            credentials: Credentials {
                access_key,
                secret_key,
                token: get(AmazonS3ConfigKey::Token),
            },
            key_of,
        })
    }

    /// The URL of an object key (or of the bucket itself for `None`), with `query`.
    fn url(&self, key: Option<&Path>, query: &str) -> url::Url {
        let mut url = self.bucket_url.clone();
        let mut path = url.path().trim_end_matches('/').to_string();
        if let Some(key) = key {
            for part in key.parts() {
                path.push('/');
                path.push_str(&uri_encode(part.as_ref(), true));
            }
        } else {
            path.push('/');
        }
        url.set_path(&path);
        url.set_query(Some(query));
        url
    }

    /// Sends one signed request; returns the status and body.
    async fn send(
        &self,
        method: reqwest::Method,
        url: url::Url,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, String)> {
        let err = |m: String| StorageError::backend(BACKEND, m);
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let payload = hex::encode(Sha256::digest(&body));
        let mut headers = vec![
            ("host".to_string(), host),
            ("x-amz-content-sha256".to_string(), payload.clone()),
            ("x-amz-date".to_string(), amz_date(SystemTime::now())),
        ];
        if !body.is_empty() {
            // S3 requires Content-MD5 (or a checksum header) on every Object Lock request.
            use base64::Engine as _;
            let md5 = base64::engine::general_purpose::STANDARD
                .encode(<md5::Md5 as md5::Digest>::digest(&body));
            headers.push(("content-md5".to_string(), md5));
        }
        if let Some(token) = &self.credentials.token {
            headers.push(("x-amz-security-token".to_string(), token.clone()));
        }
        let request = Signing {
            method: method.as_str(),
            path: url.path(),
            query: url.query().unwrap_or_default(),
            headers: &headers,
            payload_sha256: &payload,
            region: &self.region,
            access_key: &self.credentials.access_key,
            secret_key: &self.credentials.secret_key,
        };
        let authorization = request.authorization();
        let mut builder = self.client.request(method.clone(), url.clone());
        for (name, value) in &headers {
            if name != "host" {
                builder = builder.header(name, value);
            }
        }
        let response = builder
            .header("authorization", authorization)
            .body(body)
            .send()
            .await
            .map_err(|e| err(format!("{method} {url}: {e}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| err(format!("{method} {url}: reading the answer: {e}")))?;
        Ok((status, text))
    }
}

/// The text between `<tag>` and `</tag>` in an S3 XML answer, if present.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// An S3 error answer in one line: its code and message.
fn s3_error(status: reqwest::StatusCode, body: &str) -> String {
    match (xml_text(body, "Code"), xml_text(body, "Message")) {
        (Some(code), Some(message)) => format!("{status} {code}: {message}"),
        (Some(code), None) => format!("{status} {code}"),
        _ => format!("{status}"),
    }
}

#[async_trait]
impl NativeHolds for S3LegalHolds {
    fn describe(&self) -> &'static str {
        "S3 Object Lock legal hold"
    }

    async fn check(&self) -> Result<()> {
        let url = self.url(None, "object-lock=");
        let (status, body) = self
            .send(reqwest::Method::GET, url.clone(), Vec::new())
            .await?;
        let enabled = status.is_success()
            && xml_text(&body, "ObjectLockEnabled").is_some_and(|v| v == "Enabled");
        if enabled {
            Ok(())
        } else {
            Err(StorageError::backend(
                BACKEND,
                format!(
                    "native legal holds need a bucket created with S3 Object Lock enabled; \
                     GET {url} answered {}",
                    if status.is_success() {
                        "without ObjectLockEnabled=Enabled".to_string()
                    } else {
                        s3_error(status, &body)
                    }
                ),
            ))
        }
    }

    async fn set(&self, sha256: &Digest, on: bool) -> Result<()> {
        let key = (self.key_of)(sha256);
        let body = format!(
            "<LegalHold xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>{}</Status></LegalHold>",
            if on { "ON" } else { "OFF" }
        );
        let url = self.url(Some(&key), "legal-hold=");
        let (status, answer) = self
            .send(reqwest::Method::PUT, url, body.into_bytes())
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(StorageError::backend(
                BACKEND,
                format!(
                    "setting the legal hold {} on {key} (blob {sha256}): {}",
                    if on { "ON" } else { "OFF" },
                    s3_error(status, &answer)
                ),
            ))
        }
    }

    async fn get(&self, sha256: &Digest) -> Result<bool> {
        let key = (self.key_of)(sha256);
        let url = self.url(Some(&key), "legal-hold=");
        let (status, answer) = self.send(reqwest::Method::GET, url, Vec::new()).await?;
        if status.is_success() {
            return Ok(xml_text(&answer, "Status") == Some("ON"));
        }
        // An object that never had a hold has no legal-hold configuration: that is "off".
        if xml_text(&answer, "Code") == Some("NoSuchObjectLockConfiguration") {
            return Ok(false);
        }
        Err(StorageError::backend(
            BACKEND,
            format!(
                "reading the legal hold on {key} (blob {sha256}): {}",
                s3_error(status, &answer)
            ),
        ))
    }
}

/// `YYYYMMDDTHHMMSSZ`, the form SigV4 signs.
fn amz_date(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

/// URI-encodes as SigV4 requires: every byte but `A-Za-z0-9-._~` (and `/` in paths when
/// `keep_slash`) as `%XX` with upper-case hex.
fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// One request to sign with AWS Signature Version 4 for S3 (header form).
struct Signing<'a> {
    method: &'a str,
    /// The URL path, already URI-encoded as sent.
    path: &'a str,
    /// The URL query as sent (`legal-hold=`, `max-keys=2&prefix=J`).
    query: &'a str,
    /// Lower-case names and values of the headers to sign, `host` and `x-amz-date` among them.
    headers: &'a [(String, String)],
    payload_sha256: &'a str,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
}

impl Signing<'_> {
    /// The query with its parameters sorted, each name and value URI-encoded.
    fn canonical_query(&self) -> String {
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
            .collect();
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The `Authorization` header value.
    fn authorization(&self) -> String {
        let mut headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        headers.sort();
        let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let signed = signed.join(";");
        let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let canonical = format!(
            "{}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
            self.method,
            if self.path.is_empty() { "/" } else { self.path },
            self.canonical_query(),
            self.payload_sha256
        );
        let date_time = headers
            .iter()
            .find(|(n, _)| *n == "x-amz-date")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let date = &date_time[..8.min(date_time.len())];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac_sha256(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region, "s3", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed},Signature={signature}",
            self.access_key
        )
    }
}

#[cfg(test)]
mod tests {
    //! Known answers from AWS's own worked examples of header-signed S3 requests ("Signature
    //! Calculations for the Authorization Header: Transferring Payload in a Single Chunk",
    //! Amazon S3 API Reference, sig-v4-header-based-auth): access key AKIAIOSFODNN7EXAMPLE,
    //! secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, bucket examplebucket, us-east-1,
    //! 20130524T000000Z.

    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn sign(
        method: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        payload: &str,
    ) -> String {
        let mut headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("x-amz-content-sha256".to_string(), payload.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Signing {
            method,
            path,
            query,
            headers: &headers,
            payload_sha256: payload,
            region: "us-east-1",
            access_key: "AKIAIOSFODNN7EXAMPLE",
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        }
        .authorization()
    }

    fn signature(authorization: &str) -> &str {
        authorization
            .rsplit("Signature=")
            .next()
            .expect("a signature")
    }

    #[test]
    fn get_object_matches_the_aws_example() {
        let auth = sign("GET", "/test.txt", "", &[("range", "bytes=0-9")], EMPTY);
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn a_subresource_query_matches_the_aws_example() {
        // GET /?lifecycle: a sub-resource with no value signs as `lifecycle=`, as `legal-hold=`.
        let auth = sign("GET", "/", "lifecycle", &[], EMPTY);
        assert_eq!(
            signature(&auth),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn a_sorted_query_matches_the_aws_example() {
        // GET /?max-keys=2&prefix=J: the parameters are signed sorted by name.
        let auth = sign("GET", "/", "prefix=J&max-keys=2", &[], EMPTY);
        assert_eq!(
            signature(&auth),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn put_object_matches_the_aws_example() {
        // PUT test$file.text with the body "Welcome to Amazon S3.": `$` is encoded in the path.
        let payload = hex::encode(Sha256::digest(b"Welcome to Amazon S3."));
        let path = format!("/{}", uri_encode("test$file.text", true));
        let auth = sign(
            "PUT",
            &path,
            "",
            &[
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &payload,
        );
        assert_eq!(
            signature(&auth),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn a_changed_byte_changes_the_signature() {
        let good = sign("GET", "/test.txt", "", &[("range", "bytes=0-9")], EMPTY);
        let bad = sign("GET", "/test.txt", "", &[("range", "bytes=0-8")], EMPTY);
        assert_ne!(signature(&good), signature(&bad));
    }

    #[test]
    fn dates_are_in_the_signed_form() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_369_353_600);
        assert_eq!(amz_date(t), "20130524T000000Z");
    }
}
