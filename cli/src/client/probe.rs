//! Asking a coordinator that hung up right after the TLS handshake whether it refused this
//! client's certificate. With TLS 1.3 the server judges the client certificate after the
//! client's side of the handshake is over, so the first request may break on the closed socket
//! (broken pipe, reset) before the server's alert is read. A second handshake that sends
//! nothing and reads once gets that alert; a coordinator that accepts the certificate sends its
//! first HTTP/2 frame (or nothing) instead.

use std::sync::Arc;
use std::time::Duration;

use rollgate_proto::tls::TlsFiles;
use rustls::AlertDescription;
use tokio::io::AsyncReadExt;
use tonic::codegen::http::Uri;

use super::error::refused_certificate;

/// How long the probe waits for the coordinator's verdict on the certificate.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The alert the coordinator at `url` refuses `files`' certificate with, if it does.
pub(crate) async fn refusal(url: &str, files: &TlsFiles) -> Option<AlertDescription> {
    let uri: Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(443);
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).ok()?;
    let config = rollgate_proto::tls::coordinator_client(files).ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = connector.connect(name, tcp).await?;
        let mut first = [0u8; 64];
        tls.read(&mut first).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Err(e)) => refused_certificate(&e),
        Ok(Ok(_)) | Err(_) => None,
    }
}
