//! How the client commands (`loadgen`, `health`) reach a running service:
//! the endpoint, the TLS trust and the API key ([`ClientConfig`]), with the
//! endpoint or file in every error. The same form as the service's own
//! listeners: `http://host:port` for plain text, `https://host:port` for a
//! `--tls-cert` listener.

use std::{path::PathBuf, time::Duration};

use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::config::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "endpoint {0:?} is not a URL: write http://host:port, or https://host:port for a TLS listener"
    )]
    BadEndpoint(String),
    #[error("--ca-file and --tls-server-name are for an https endpoint; {0} is http (plain text)")]
    TlsOnPlainText(String),
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS settings for {endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("cannot reach {endpoint}: {}", chain(.source))]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("the API key cannot be sent as a header: it holds characters a header cannot")]
    BadKey,
}

/// tonic's transport error says "transport error" and keeps the reason (a
/// refused connection, a certificate the CA did not sign) in its sources.
fn chain(e: &tonic::transport::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // Some sources repeat their own source in their text.
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A channel to the service, TLS where the endpoint says https.
pub async fn connect(cfg: &ClientConfig, timeout: Duration) -> Result<Channel, ClientError> {
    let endpoint = &cfg.endpoint;
    let mut ep = Endpoint::from_shared(endpoint.clone())
        .map_err(|_| ClientError::BadEndpoint(endpoint.clone()))?
        .connect_timeout(timeout);
    match ep.uri().scheme_str() {
        Some("https") => {
            // Without a CA file, the system's trust store (a certificate
            // from a public or a company CA).
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(path) = &cfg.ca_file {
                let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(name) = &cfg.tls_server_name {
                tls = tls.domain_name(name.clone());
            }
            ep = ep.tls_config(tls).map_err(|source| ClientError::Tls {
                endpoint: endpoint.clone(),
                source,
            })?;
        }
        Some("http") => {
            if cfg.ca_file.is_some() || cfg.tls_server_name.is_some() {
                return Err(ClientError::TlsOnPlainText(endpoint.clone()));
            }
        }
        _ => return Err(ClientError::BadEndpoint(endpoint.clone())),
    }
    ep.connect().await.map_err(|source| ClientError::Connect {
        endpoint: endpoint.clone(),
        source,
    })
}

/// The `authorization` header's value for the configured key, if any.
pub fn bearer(
    cfg: &ClientConfig,
) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, ClientError> {
    cfg.api_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(|k| {
            format!("Bearer {k}")
                .parse()
                .map_err(|_| ClientError::BadKey)
        })
        .transpose()
}

/// `request` with the API key, if one is configured.
pub fn authorized<T>(
    key: &Option<MetadataValue<tonic::metadata::Ascii>>,
    message: T,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", key.clone());
    }
    request
}
