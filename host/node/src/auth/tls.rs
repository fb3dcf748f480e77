//! TLS for the node's port, with rustls through tonic: the node's
//! certificate and key (`--tls-cert`, `--tls-key`) serve clients and peers;
//! with `--tls-client-ca`, a client may present a certificate signed by that
//! authority instead of a token, and its common name (CN) is its subject.
//! A node with TLS dials its peers over TLS too, checking their
//! certificates against `--tls-peer-ca` (by default the client CA) and
//! presenting its own; peers still prove membership with the cluster secret.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Where a node's TLS material lives. All PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This node's certificate chain: served to clients and peers, and
    /// presented to peers it dials.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The authority whose certificates identify clients (mTLS): a client
    /// presenting one is the subject its CN names, without a token.
    pub client_ca_file: Option<PathBuf>,
    /// The authority the peers' certificates chain to; by default
    /// `client_ca_file`.
    pub peer_ca_file: Option<PathBuf>,
}

/// The TLS configurations a node serves and dials with.
#[derive(Debug, Clone)]
pub struct Tls {
    pub server: ServerTlsConfig,
    pub peers: ClientTlsConfig,
}

impl TlsSettings {
    /// Whether TLS is on (a certificate is given).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Why these settings cannot be used, naming the option; checked when
    /// the configuration is.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key, the key of the certificate".to_owned());
            }
            (None, Some(_)) => {
                return Err("--tls-key needs --tls-cert, the certificate of the key".to_owned());
            }
            _ => {}
        }
        if !self.enabled() {
            if self.client_ca_file.is_some() || self.peer_ca_file.is_some() {
                return Err("--tls-client-ca and --tls-peer-ca need --tls-cert and --tls-key: TLS is off without a certificate".to_owned());
            }
            return Ok(());
        }
        if self.client_ca_file.is_none() && self.peer_ca_file.is_none() {
            return Err("with TLS on, give --tls-peer-ca (or --tls-client-ca): the authority the other nodes' certificates are checked against".to_owned());
        }
        Ok(())
    }

    /// Reads the files; `None` when TLS is off.
    pub fn load(&self) -> Result<Option<Tls>, String> {
        self.validate()?;
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        let identity =
            Identity::from_pem(read(cert_file, "--tls-cert")?, read(key_file, "--tls-key")?);
        let mut server = ServerTlsConfig::new().identity(identity.clone());
        if let Some(client_ca) = &self.client_ca_file {
            // Optional: callers without a certificate authenticate with a
            // token, as peers do with the cluster secret.
            server = server
                .client_ca_root(Certificate::from_pem(read(client_ca, "--tls-client-ca")?))
                .client_auth_optional(true);
        }
        let peer_ca = match (&self.peer_ca_file, &self.client_ca_file) {
            (Some(file), _) => read(file, "--tls-peer-ca")?,
            (None, Some(file)) => read(file, "--tls-client-ca")?,
            (None, None) => unreachable!("validate asks for one"),
        };
        let peers = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(peer_ca))
            .identity(identity);
        Ok(Some(Tls { server, peers }))
    }
}

fn read(path: &Path, option: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("cannot read {option} {}: {error}", path.display()))?;
    if !bytes.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(format!(
            "{option} {} is not PEM (no `-----BEGIN` line)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The subject a client certificate names: its first common name, if the
/// certificate parses and has one. The TLS layer has checked it against
/// the client CA already.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}
