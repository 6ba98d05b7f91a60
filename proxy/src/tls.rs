//! rustls configurations: the client-facing server config and the upstream client configs. Exactly one
//! crypto provider (ring) is used, passed explicitly so no process-wide default is needed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{Config, TlsConfig, UpstreamTlsMode};
use crate::error::ConfigError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(file: &Path, reason: impl Into<String>) -> ConfigError {
    ConfigError::Tls {
        file: file.display().to_string(),
        reason: reason.into(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let data = std::fs::read(path).map_err(|e| tls_err(path, format!("cannot read: {e}")))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| tls_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(
            path,
            "contains no PEM certificate; give a file with -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let data = std::fs::read(path).map_err(|e| tls_err(path, format!("cannot read: {e}")))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| tls_err(path, format!("not a PEM private key file: {e}")))?
        .ok_or_else(|| tls_err(path, "contains no PEM private key (PKCS#8, PKCS#1 or SEC1)"))
}

/// The server config for client-facing TLS, and the DER of the certificate it presents (compared with the
/// upstream's to decide whether SCRAM channel binding can pass through).
pub fn server_config(tls: &TlsConfig) -> Result<(Arc<ServerConfig>, Vec<u8>), ConfigError> {
    let certs = load_certs(&tls.cert)?;
    let leaf = certs[0].to_vec();
    let key = load_key(&tls.key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls_err(
                &tls.key,
                format!("certificate and key do not fit together: {e}"),
            )
        })?;
    // libpq 17+ with sslnegotiation=direct requires this ALPN; older clients send none.
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((Arc::new(cfg), leaf))
}

/// The upstream client config, or `None` for `disable`.
pub fn upstream_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let t = &config.upstream_tls;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&config.source, e.to_string()))?;
    let cfg = match t.mode {
        UpstreamTlsMode::Disable => return Ok(None),
        // libpq's prefer/require encrypt without authenticating the server.
        UpstreamTlsMode::Prefer | UpstreamTlsMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerAuth(provider())))
            .with_no_client_auth(),
        UpstreamTlsMode::VerifyFull => {
            let ca = t.ca.as_deref().unwrap_or(Path::new(""));
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| tls_err(ca, format!("not a usable CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    ServerName::try_from(t.server_name.clone()).map_err(|_| {
        tls_err(
            &config.source,
            format!(
                "`{}` is not a valid TLS server name; set upstream_tls.server_name",
                t.server_name
            ),
        )
    })?;
    Ok(Some(Arc::new(cfg)))
}

/// Encrypts without checking who the server is (libpq `sslmode=require`); signatures are still checked
/// so the handshake itself is sound.
#[derive(Debug)]
struct NoServerAuth(Arc<CryptoProvider>);

impl ServerCertVerifier for NoServerAuth {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
