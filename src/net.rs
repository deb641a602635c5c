//! Listening sockets and TLS for the service's servers (the native gRPC
//! API and the OTLP receivers), with the address or file in every error.

use std::{net::SocketAddr, path::PathBuf};

use tokio::net::TcpListener;

use crate::config::ServeConfig;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: cannot read {path}: {source}")]
    Tls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    TlsConfig(#[from] tonic::transport::Error),
    #[error("TLS for OTLP/HTTP: {cert} and {key}: {source}")]
    HttpTls {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
}

/// A listener on `addr`, and the address it got (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ListenError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| ListenError::Listen { addr, source })?;
    Ok((listener, local))
}

/// A PEM file of `--tls-cert` / `--tls-key`, its path in the error.
fn read_pem(path: &PathBuf) -> Result<Vec<u8>, ListenError> {
    std::fs::read(path).map_err(|source| ListenError::Tls {
        path: path.clone(),
        source,
    })
}

/// A tonic server builder with the TLS settings, if any.
pub fn grpc_builder(cfg: &ServeConfig) -> Result<tonic::transport::Server, ListenError> {
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&cfg.security.tls_cert, &cfg.security.tls_key) {
        let identity = tonic::transport::Identity::from_pem(read_pem(cert)?, read_pem(key)?);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        tracing::info!(cert = %cert.display(), "serving gRPC over TLS");
    }
    Ok(builder)
}

/// The OTLP/HTTP receiver's TLS settings, the same certificate and key as
/// gRPC's (`--tls-cert`, `--tls-key`); None without them.
pub async fn http_tls(
    cfg: &ServeConfig,
) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, ListenError> {
    let (Some(cert), Some(key)) = (&cfg.security.tls_cert, &cfg.security.tls_key) else {
        return Ok(None);
    };
    let (cert_pem, key_pem) = (read_pem(cert)?, read_pem(key)?);
    axum_server::tls_rustls::RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map(Some)
        .map_err(|source| ListenError::HttpTls {
            cert: cert.clone(),
            key: key.clone(),
            source,
        })
}
