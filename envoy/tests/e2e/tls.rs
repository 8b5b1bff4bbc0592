//! Certificates made in the test (rcgen) and an HTTPS/1.1 client that presents a client
//! certificate (rustls on ring): what the mTLS listener of `consentry-mtls.yaml` needs.
//!
//! Every certificate is ECDSA P-256, signed by one CA made per test run. The server
//! certificate names `localhost` and `127.0.0.1`; a client certificate carries the URI
//! SANs it is given (its SPIFFE IDs), in that order.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use consentry_envoy::HttpResponse;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::{Digest, Sha256};

/// A certificate and its private key.
pub struct Identity {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Identity {
    /// The RFC 8705 thumbprint a bound token carries in `cnf.x5t#S256`:
    /// base64url(SHA-256(DER)), unpadded.
    pub fn x5t_s256(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&self.cert_der))
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert_der.clone())]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A CA and the server certificate it signed; client certificates come from
/// [`Pki::client`].
pub struct Pki {
    pub ca: Identity,
    pub server: Identity,
    issuer: Issuer<'static, KeyPair>,
}

fn identity(cert: &rcgen::Certificate, key: &KeyPair) -> Identity {
    Identity {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

/// The CA's certificate parameters: the same name gives the same subject, so a CA can
/// be rebuilt from its name and key to sign more client certificates.
fn ca_params(ca_name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// The common name of the development CA in `envoy/configs/dev-tls/`.
pub const DEV_CA_NAME: &str = "Consentry DEVELOPMENT CA - do not trust";

/// Writes a fresh development set into `dir`: `ca.crt`, `ca.key` (so that tests and
/// demos can make client certificates), `server.crt`, `server.key`.
pub fn write_dev_tls(dir: &Path) -> Result<()> {
    let pki = Pki::generate(DEV_CA_NAME)?;
    pki.write_server_files(dir)?;
    std::fs::write(dir.join("ca.key"), &pki.ca.key_pem)?;
    Ok(())
}

/// The development set of `dir`, able to sign client certificates.
pub fn load_dev_tls(dir: &Path) -> Result<Pki> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let load = |cert: &str, key: &str| -> Result<Identity> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key_der = KeyPair::from_pem(&key_pem)?.serialize_der();
        Ok(Identity {
            cert_der: pem_der(&cert_pem)?,
            cert_pem,
            key_pem,
            key_der,
        })
    };
    let ca = load("ca.crt", "ca.key")?;
    let server = load("server.crt", "server.key")?;
    let issuer = Issuer::new(ca_params(DEV_CA_NAME)?, KeyPair::from_pem(&ca.key_pem)?);
    Ok(Pki { ca, server, issuer })
}

/// The DER of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Result<Vec<u8>> {
    let body = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .ok_or_else(|| anyhow!("no certificate in the PEM text"))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}

impl Pki {
    /// A fresh CA named `ca_name` and a server certificate for `localhost` and
    /// `127.0.0.1`.
    pub fn generate(ca_name: &str) -> Result<Self> {
        let params = ca_params(ca_name)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = identity(&cert, &key);
        let issuer = Issuer::new(params, key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let server = identity(&cert, &key);
        Ok(Self { ca, server, issuer })
    }

    /// A client certificate with common name `name` and these URI SANs, in this order.
    pub fn client(&self, name: &str, uri_sans: &[&str]) -> Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        for uri in uri_sans {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into()?));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(identity(&cert, &key))
    }

    /// Writes `ca.crt`, `server.crt` and `server.key` into `dir`: the files the mTLS
    /// template's `TLS_DIR` names.
    pub fn write_server_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.crt"), &self.ca.cert_pem)?;
        std::fs::write(dir.join("server.crt"), &self.server.cert_pem)?;
        std::fs::write(dir.join("server.key"), &self.server.key_pem)?;
        Ok(())
    }
}

/// An HTTPS client for one listener: trusts `ca`, presents `client` (or no certificate).
pub struct HttpsClient {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
}

impl HttpsClient {
    pub fn new(addr: SocketAddr, ca: &Identity, client: Option<&Identity>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der.clone()))?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut config = match client {
            Some(id) => builder.with_client_auth_cert(id.chain(), id.key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            addr,
        })
    }

    /// `GET path` with these headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        self.send("GET", path, headers, None, Duration::from_secs(10))
    }

    /// One request over a fresh TLS connection, read until the response is whole by its
    /// framing (then the connection is dropped) or the server closes; bounded by
    /// `timeout` overall.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<HttpResponse> {
        let deadline = Instant::now() + timeout;
        let tcp = TcpStream::connect_timeout(&self.addr, timeout)
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true).ok();
        tcp.set_write_timeout(Some(timeout))?;
        let name = ServerName::try_from("localhost")?;
        let connection = rustls::ClientConnection::new(self.config.clone(), name)?;
        let mut tls = rustls::StreamOwned::new(connection, tcp);

        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost:{}\r\n",
            self.addr.port()
        )
        .into_bytes();
        for (n, v) in headers {
            request.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if let Some(b) = body {
            request.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            request.extend_from_slice(b);
        }
        tls.write_all(&request)
            .and_then(|()| tls.flush())
            .context("TLS handshake or request write")?;

        let head = method.eq_ignore_ascii_case("HEAD");
        let mut bytes = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Ok(response) = consentry_envoy::http::parse_response(&bytes, false, head) {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return Ok(response);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {timeout:?}; received {} bytes: {:?}",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                );
            }
            tls.sock.set_read_timeout(Some(left))?;
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof && !bytes.is_empty() => break,
                Err(e) => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!("reading the response ({} bytes so far)", bytes.len())
                    });
                }
            }
        }
        consentry_envoy::http::parse_response(&bytes, true, head)
    }
}
