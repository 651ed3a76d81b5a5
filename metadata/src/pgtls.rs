//! TLS to PostgreSQL, as libpq users know it: `sslmode`, `sslrootcert`, `sslcert` and `sslkey`
//! (URL parameters, else `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`), over rustls.
//!
//! The modes keep libpq's meanings: `disable` (clear text), `prefer` (TLS when the server
//! offers it, certificate not checked), `require` (TLS, certificate not checked unless a root
//! certificate is given or `~/.postgresql/root.crt` exists, then as `verify-ca`), `verify-ca`
//! (the certificate chains to a trusted CA), `verify-full` (that, and it names the host).
//!
//! The default differs from libpq's `prefer`, which a man in the middle defeats by answering
//! "no TLS": `verify-full` for a network host, `disable` when every host is a Unix socket or a
//! loopback address (the traffic never leaves the machine). As in libpq, a Unix socket never
//! uses TLS whatever the mode.
//!
//! Trusted CAs: `sslrootcert=PATH` (a PEM bundle), `sslrootcert=system` (the system's), else
//! `~/.postgresql/root.crt` when it exists, else the system's (only for `verify-full`:
//! `verify-ca` against public CAs would accept a certificate issued to anyone).

use crate::MetaError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const ALLOWED: &'static str = "disable, prefer, require, verify-ca or verify-full";

    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask the server for TLS, and whether to give up
    /// when it has none.
    fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// The TLS parameters of a metadata URL (`None`: not in the URL; the environment or the
/// default decides).
#[derive(Debug, Clone, Default)]
pub struct TlsParams {
    pub mode: Option<SslMode>,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// How certificates are checked, once resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Ca,
    CaAndHost,
}

/// The connector handed to tokio-postgres, with what `spoolfs status` says about it.
#[derive(Clone)]
pub(crate) struct PgTls {
    /// `None`: no TLS (`disable`, or only Unix sockets).
    config: Option<Arc<rustls::ClientConfig>>,
    mode: SslMode,
    check: Check,
    unix_only: bool,
    /// Where the trusted CAs came from, for messages.
    roots_from: String,
    /// A connection of this store completed a TLS handshake (tells `prefer`'s outcome).
    handshaken: Arc<AtomicBool>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

fn is_loopback(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(h) => {
            let bare = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

impl PgTls {
    /// Resolves `params` (then the `PGSSL*` variables, then the defaults) for `config`'s hosts
    /// and sets `config`'s TLS request to match. `bad` makes the error for a bad parameter.
    pub(crate) fn new(
        params: &TlsParams,
        config: &mut tokio_postgres::Config,
        bad: &dyn Fn(String) -> MetaError,
    ) -> Result<PgTls, MetaError> {
        let hosts = config.get_hosts();
        let unix_only = !hosts.is_empty()
            && hosts
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        let local_only = hosts.iter().all(is_loopback);
        let mode = match (params.mode, env("PGSSLMODE")) {
            (Some(m), _) => m,
            (None, Some(text)) => SslMode::parse(&text).ok_or_else(|| {
                bad(format!(
                    "PGSSLMODE={text:?} is not an sslmode: use {}",
                    SslMode::ALLOWED
                ))
            })?,
            (None, None) if local_only => SslMode::Disable,
            (None, None) => SslMode::VerifyFull,
        };
        let root_cert = params.root_cert.clone().or_else(|| env("PGSSLROOTCERT"));
        let home_root = home_file("root.crt").filter(|p| p.is_file());
        let check = match mode {
            SslMode::Disable | SslMode::Prefer => Check::Nothing,
            SslMode::Require if root_cert.is_some() || home_root.is_some() => Check::Ca,
            SslMode::Require => Check::Nothing,
            SslMode::VerifyCa => Check::Ca,
            SslMode::VerifyFull => Check::CaAndHost,
        };
        let mut tls = PgTls {
            config: None,
            mode,
            check,
            unix_only,
            roots_from: String::new(),
            handshaken: Arc::new(AtomicBool::new(false)),
        };
        if mode == SslMode::Disable || unix_only {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            return Ok(tls);
        }
        config.ssl_mode(mode.wire());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS setup: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if check == Check::Nothing {
            Arc::new(AnyCertificate(provider))
        } else {
            let (roots, from) = match (root_cert.as_deref(), home_root) {
                (Some("system"), _) | (None, None) => (system_roots(&bad)?, None),
                (Some(path), _) => (pem_roots(Path::new(path), &bad)?, Some(path.to_string())),
                (None, Some(path)) => {
                    let text = path.display().to_string();
                    (pem_roots(&path, &bad)?, Some(text))
                }
            };
            if check == Check::Ca && from.is_none() {
                return Err(bad(format!(
                    "sslmode={} with the system's CAs would accept a certificate they issued \
                     to anyone: give sslrootcert=PATH (your CA) or use sslmode=verify-full",
                    mode.name()
                )));
            }
            tls.roots_from = match from {
                Some(path) => format!("sslrootcert={path}"),
                None => "the system's CAs".into(),
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(format!("TLS setup: {e}")))?;
            match check {
                Check::Ca => Arc::new(AnyHostName(webpki)),
                _ => webpki,
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let client_config = match client_identity(params, &bad)? {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad(format!("sslcert/sslkey: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        tls.config = Some(Arc::new(client_config));
        Ok(tls)
    }

    /// For `spoolfs status` and messages: whether connections use TLS and what is checked.
    pub(crate) fn describe(&self) -> String {
        if self.unix_only {
            return "Unix socket, no TLS".into();
        }
        let mode = self.mode.name();
        match (self.mode, self.check) {
            (SslMode::Disable, _) => "no TLS, sslmode=disable".into(),
            (SslMode::Prefer, _) if !self.handshaken.load(Ordering::Relaxed) => {
                "no TLS, sslmode=prefer: the server offers none".into()
            }
            (_, Check::Nothing) => format!("TLS, sslmode={mode}: certificate not checked"),
            (_, Check::Ca) => format!(
                "TLS, sslmode={mode}: certificate checked against {}",
                self.roots_from
            ),
            (_, Check::CaAndHost) => format!(
                "TLS, sslmode={mode}: certificate and host name checked against {}",
                self.roots_from
            ),
        }
    }

    /// The mode in force (`disable` for Unix sockets), for error messages.
    pub(crate) fn mode(&self) -> SslMode {
        if self.unix_only {
            SslMode::Disable
        } else {
            self.mode
        }
    }
}

fn system_roots(bad: &dyn Fn(String) -> MetaError) -> Result<RootCertStore, MetaError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(bad(format!(
            "no system CA certificates found{why}: give sslrootcert=PATH"
        )));
    }
    Ok(roots)
}

fn pem_certs(
    path: &Path,
    what: &str,
    bad: &dyn Fn(String) -> MetaError,
) -> Result<Vec<CertificateDer<'static>>, MetaError> {
    let text = std::fs::read(path).map_err(|e| bad(format!("{what}={}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{what}={}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{what}={}: no PEM certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn pem_roots(path: &Path, bad: &dyn Fn(String) -> MetaError) -> Result<RootCertStore, MetaError> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(path, "sslrootcert", bad)? {
        roots
            .add(cert)
            .map_err(|e| bad(format!("sslrootcert={}: {e}", path.display())))?;
    }
    Ok(roots)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key: `sslcert`/`sslkey`, else `PGSSLCERT`/`PGSSLKEY`, else
/// `~/.postgresql/postgresql.crt` and `.key` when the certificate exists (as libpq).
fn client_identity(
    params: &TlsParams,
    bad: &dyn Fn(String) -> MetaError,
) -> Result<Option<Identity>, MetaError> {
    let cert = params
        .cert
        .clone()
        .or_else(|| env("PGSSLCERT"))
        .map(PathBuf::from);
    let key = params
        .key
        .clone()
        .or_else(|| env("PGSSLKEY"))
        .map(PathBuf::from);
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(c), None) => match home_file("postgresql.key") {
            Some(k) => (c, k),
            None => return Err(bad("sslcert without sslkey".into())),
        },
        (None, key) => match home_file("postgresql.crt").filter(|c| c.is_file()) {
            Some(c) => match key.or_else(|| home_file("postgresql.key")) {
                Some(k) => (c, k),
                None => return Ok(None),
            },
            None if key.is_some() => return Err(bad("sslkey without sslcert".into())),
            None => return Ok(None),
        },
    };
    let certs = pem_certs(&cert, "sslcert", bad)?;
    check_key_private(&key, bad)?;
    let der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| bad(format!("sslkey={}: {e}", key.display())))?;
    Ok(Some((certs, der)))
}

/// Like libpq, a key file others may read is refused (root's may be group-readable).
fn check_key_private(path: &Path, bad: &dyn Fn(String) -> MetaError) -> Result<(), MetaError> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| bad(format!("sslkey={}: {e}", path.display())))?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(bad(format!(
            "sslkey={}: others may read the key (mode {:o}); chmod it to {allowed:o} or less",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// `prefer`, and `require` without a root certificate: libpq checks no certificate; the
/// handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// `verify-ca`: the chain must lead to a trusted CA (the web PKI verifier checks it before
/// the name); the name in the certificate is not compared with the host.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One connection's handshake: the host name it verifies and sends (SNI).
pub(crate) struct Handshake {
    config: Option<Arc<rustls::ClientConfig>>,
    name: Option<ServerName<'static>>,
    check: Check,
    handshaken: Arc<AtomicBool>,
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = Handshake;
    type Error = io::Error;

    /// Called for every connection, also without TLS and for a Unix socket (`domain` empty).
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Handshake> {
        let bare = domain.trim_start_matches('[').trim_end_matches(']');
        Ok(Handshake {
            config: self.config.clone(),
            name: ServerName::try_from(bare.to_string()).ok(),
            check: self.check,
            handshaken: self.handshaken.clone(),
        })
    }
}

impl TlsConnect<Socket> for Handshake {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let (Some(config), Some(name)) = (self.config, self.name) else {
                return Err(io::Error::other("no TLS for this host (no host name)"));
            };
            let connector = tokio_rustls::TlsConnector::from(config);
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| explain_handshake_error(e, self.check))?;
            self.handshaken.store(true, Ordering::Relaxed);
            Ok(PgTlsStream(stream))
        })
    }
}

/// rustls's reason, with what it means for the user.
fn explain_handshake_error(e: io::Error, check: Check) -> io::Error {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(c) => Some(c.clone()),
            _ => None,
        });
    let hint = match certificate {
        Some(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host in the URL",
        Some(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the server's certificate is not signed by a trusted CA (see sslrootcert)"
        }
        Some(_) if check != Check::Nothing => "the server's certificate is refused",
        _ => return e,
    };
    io::Error::new(e.kind(), format!("{hint}: {e}"))
}

/// A TLS session to the server.
pub(crate) struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    /// No `tls-server-end-point` binding: SCRAM runs without channel binding (the certificate
    /// checks above are what authenticate the server).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        use tokio_postgres::config::Host;
        assert!(is_loopback(&Host::Tcp("localhost".into())));
        assert!(is_loopback(&Host::Tcp("127.0.0.1".into())));
        assert!(is_loopback(&Host::Tcp("::1".into())));
        assert!(is_loopback(&Host::Unix("/run/postgresql".into())));
        assert!(!is_loopback(&Host::Tcp("db.example".into())));
        assert!(!is_loopback(&Host::Tcp("10.0.0.5".into())));
    }

    #[test]
    fn every_mode_name_parses_back() {
        for m in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(m.name()), Some(m));
        }
        assert_eq!(SslMode::parse("allow"), None);
    }
}
