//! Optional TLS (rustls with aws-lc-rs) for both ports: the gRPC port through tonic, the REST
//! port through [`crate::net::conn::serve_rest`], which completes each handshake on the connection's
//! own task within the header timeout, so a slow or silent client never holds up the others.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// A PEM certificate chain and private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), ServerError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| ServerError::Tls(format!("{}: {e}", path.display())))
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// tonic's identity for the gRPC port.
    pub fn grpc_identity(&self) -> Result<tonic::transport::Identity, ServerError> {
        // Parse here first so that a bad file is reported by name at start-up.
        self.rustls_config()?;
        let (cert, key) = self.read()?;
        Ok(tonic::transport::Identity::from_pem(cert, key))
    }

    /// The rustls configuration for the REST port (HTTP/2 and HTTP/1.1 by ALPN).
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, ServerError> {
        let (cert, key) = self.read()?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Tls(format!("{}: {e}", self.cert.display())))?;
        if chain.is_empty() {
            return Err(ServerError::Tls(format!(
                "{}: no PEM certificate in the file",
                self.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| ServerError::Tls(format!("{}: {e}", self.key.display())))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                ServerError::Tls(format!(
                    "{} and {} do not make a usable identity: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
