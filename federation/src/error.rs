//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while building or running the local federation.
///
/// None of the variants carries key material or tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// rcgen refused to generate a key or sign a certificate (for example an RSA [`crate::ClientSpec`]
    /// without a key pair: ring cannot generate RSA keys, so pass one in `key_pair`).
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),

    /// A PEM file or string could not be parsed. Fix: regenerate the PKI directory (delete it).
    #[error("invalid PEM in {what}: {detail}")]
    Pem {
        /// Which object was being parsed.
        what: String,
        /// The parser's complaint.
        detail: String,
    },

    /// Reading or writing a file failed; the path says which one.
    #[error("{op} {path}: {source}")]
    Io {
        /// "read", "write" or "create directory".
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Binding a listener on 127.0.0.1 failed, usually because the requested port is in use.
    /// Fix: pick another port, or 0 for a free one.
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Bind {
        /// The requested port (0 = any).
        port: u16,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Building a rustls configuration failed (a key that does not match its certificate, or an
    /// unusable CA certificate).
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// Building the internal HTTP client (used by the data provider to introspect) failed.
    #[error("HTTP client: {0}")]
    HttpClient(String),

    /// The authorization server used by the data provider could not be discovered or reached.
    #[error("discovery of {issuer} failed: {detail}")]
    Discovery {
        /// The issuer URL whose metadata was requested.
        issuer: String,
        /// What went wrong.
        detail: String,
    },

    /// A client name that the PKI does not know (known: consumer, consumer-b, limited, provider).
    #[error("unknown client {0:?} (known: consumer, consumer-b, limited, provider)")]
    UnknownClient(String),

    /// An outside tool (SoftHSM2's `softhsm2-util`, OpenSC's `pkcs11-tool`) is missing or
    /// failed; the message has what it printed.
    #[error("{0}")]
    Tool(String),

    /// Installing a signal handler failed in `fapi-host dev`.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

impl Error {
    pub(crate) fn pem(what: impl Into<String>, detail: impl ToString) -> Self {
        Error::Pem {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
