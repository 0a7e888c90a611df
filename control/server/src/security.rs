//! Who may talk to the gRPC API: TLS (optionally mutual), bearer tokens, and the rule
//! that a non-loopback bind needs one of them.
//!
//! The API defaults to loopback, where the host's users are the trust boundary. Any other
//! bind address exposes supervision (listening to live calls) to the network, so
//! [`validate_bind`] refuses it unless TLS or a token is configured, or the operator said
//! `--insecure` explicitly. The token is checked by [`AuthLayer`] on every request except
//! `grpc.health.v1.Health` (load balancers and orchestrators probe it without
//! credentials; it reveals only "serving") and server reflection (it reveals only the
//! schema, which is the public `docs/api.md`).
//!
//! ## What it deliberately does not do
//! No per-user authorisation: the token identifies the orchestrator, and the supervision
//! rules (permissions, presence) are applied by `earshot-rules` on the user ids the
//! orchestrator names. No certificate reloading: restart to rotate (the sidecar restarts
//! without touching media).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;

use crate::ServerConfig;

/// Request paths served without a token (see the module docs for why).
pub const OPEN_PATH_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Server certificate, key and optional client CA, as PEM bytes.
#[derive(Clone)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert_pem: Vec<u8>,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for TlsConfig {
    // The key is a secret: never printed, not even in a config dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Reads the PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> anyhow::Result<TlsConfig> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(TlsConfig {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: client_ca.map(read).transpose()?,
        })
    }

    /// The tonic server configuration.
    pub fn to_tonic(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_pem {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        tls
    }
}

/// A bearer token clients must send as `authorization: Bearer <token>`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// A token from its text. Refuses an empty token or one that cannot travel in an
    /// HTTP header (it must be visible ASCII: 0x21..=0x7e).
    pub fn new(token: &str) -> Result<AuthToken, SecurityError> {
        if token.is_empty() || !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(SecurityError::BadToken);
        }
        Ok(AuthToken(token.to_owned()))
    }

    /// Reads a token file: its content with surrounding whitespace removed.
    pub fn from_file(path: &Path) -> anyhow::Result<AuthToken> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        AuthToken::new(text.trim()).with_context(|| format!("token file {}", path.display()))
    }

    /// Whether an `authorization` header value carries this token. The comparison takes
    /// the same time wherever the first difference is, so timing reveals no prefix.
    pub fn matches_header(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else {
            return false;
        };
        let Some(presented) = value.strip_prefix(b"Bearer ") else {
            return false;
        };
        let expected = self.0.as_bytes();
        let mut diff = u8::from(presented.len() != expected.len());
        for (i, &e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// Refusals of a server configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    /// A non-loopback bind with neither TLS nor a token, without `--insecure`.
    #[error(
        "refusing to serve the gRPC API on {addr} without TLS or a token: anyone who can \
         reach it could listen to live calls. Configure --tls-cert/--tls-key and/or \
         --token-file, bind a loopback address, or pass --insecure to accept the risk"
    )]
    InsecureBind {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The token is empty or not visible ASCII.
    #[error("the token must be non-empty visible ASCII (no spaces or control characters)")]
    BadToken,
    /// Only one of certificate and key given.
    #[error("--tls-cert and --tls-key go together")]
    HalfTls,
    /// A client CA without a server certificate.
    #[error("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")]
    ClientCaWithoutTls,
}

/// Checks that `config` may serve on `config.grpc_addr`: loopback always may; any other
/// address needs TLS or a token, or `insecure`.
pub fn validate_bind(config: &ServerConfig) -> Result<(), SecurityError> {
    let addr = config.grpc_addr;
    if addr.ip().is_loopback() || config.insecure {
        return Ok(());
    }
    if config.tls.is_none() && config.auth_token.is_none() {
        return Err(SecurityError::InsecureBind { addr });
    }
    if config.tls.is_none() {
        // Allowed (the issue asks for one of them), but the token crosses the network
        // in clear: say so once at start-up.
        tracing::warn!(%addr, "bearer token without TLS: the token is sent in clear");
    }
    Ok(())
}

/// The security flags shared by `earshot` and `earshot-control`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Server certificate chain (PEM). Enables TLS; needs --tls-key.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: enables mutual TLS.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the bearer token clients must send (`authorization: Bearer ...`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Allow a non-loopback gRPC address without TLS or a token.
    #[arg(long)]
    pub insecure: bool,
}

impl SecurityArgs {
    /// Reads the files and sets the security fields of `config`, then validates the bind
    /// address with [`validate_bind`].
    pub fn apply(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig::from_files(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(SecurityError::ClientCaWithoutTls.into());
            }
            (None, None) => None,
            _ => return Err(SecurityError::HalfTls.into()),
        };
        config.auth_token = self
            .token_file
            .as_deref()
            .map(AuthToken::from_file)
            .transpose()?;
        config.insecure = self.insecure;
        validate_bind(config)?;
        Ok(())
    }
}

/// Tower layer that refuses requests without the right bearer token (UNAUTHENTICATED),
/// except on [`OPEN_PATH_PREFIXES`]. With no token configured it passes everything.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    token: Option<Arc<AuthToken>>,
}

impl AuthLayer {
    /// A layer checking `token`, or passing everything when `None`.
    pub fn new(token: Option<AuthToken>) -> AuthLayer {
        AuthLayer {
            token: token.map(Arc::new),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    token: Option<Arc<AuthToken>>,
}

type BoxFut<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(token) = &self.token {
            let path = request.uri().path();
            let open = OPEN_PATH_PREFIXES.iter().any(|p| path.starts_with(p));
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if !open && !token.matches_header(header) {
                let status = tonic::Status::unauthenticated(
                    "missing or wrong bearer token (send `authorization: Bearer <token>`)",
                );
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_the_exact_bearer_value() {
        let t = AuthToken::new("s3cret").unwrap();
        assert!(t.matches_header(Some(b"Bearer s3cret")));
        assert!(!t.matches_header(Some(b"Bearer s3cre")));
        assert!(!t.matches_header(Some(b"Bearer s3cretX")));
        assert!(!t.matches_header(Some(b"bearer s3cret")));
        assert!(!t.matches_header(Some(b"s3cret")));
        assert!(!t.matches_header(None));
    }

    #[test]
    fn empty_or_spaced_tokens_are_refused() {
        assert_eq!(AuthToken::new(""), Err(SecurityError::BadToken));
        assert_eq!(AuthToken::new("a b"), Err(SecurityError::BadToken));
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let t = AuthToken::new("s3cret").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        let tls = TlsConfig {
            cert_pem: b"CERT".to_vec(),
            key_pem: b"PRIVATEKEY".to_vec(),
            client_ca_pem: None,
        };
        assert!(!format!("{tls:?}").contains("PRIVATEKEY"));
    }
}
