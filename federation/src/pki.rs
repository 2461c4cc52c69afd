//! The federation's PKI: one CA, one server certificate for the loopback names, and one client
//! identity per registered client. ECDSA P-256 everywhere, so generating it is fast.
//!
//! The one CA issues the client certificates and, by default, the server certificate too (as in a
//! directory that issues both). [`Pki::generate_with_server_ca`] gives the server certificate a CA
//! of its own instead, so that a test can hold clients to trusting servers through that CA alone
//! (checklist TLS-06: the CA that issues client certificates is no server anchor).

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::identity::{ClientIdentity, ClientSpec, ServerIdentity, subject_dn};
use crate::{Error, tls};

/// Subject O of every certificate the federation issues.
pub(crate) const ORGANIZATION: &str = "fapi-host dev";
const CA_NAME: &str = "fapi-host dev CA";
const SERVER_CA_NAME: &str = "fapi-host dev server CA";
const SERVER_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// The registered clients: (short name, client id, scopes the AS grants).
pub(crate) const REGISTERED: [(&str, &str, &str); 4] = [
    (
        "consumer",
        "fapi-dev-consumer",
        "directory:software consumption:read",
    ),
    (
        "consumer-b",
        "fapi-dev-consumer-b",
        "directory:software consumption:read",
    ),
    ("limited", "fapi-dev-limited", "directory:software"),
    ("provider", "fapi-dev-provider", "introspection"),
];

/// The subject DN registered for a client id (RFC 8705 `tls_client_auth_subject_dn`).
pub(crate) fn registered_dn(client_id: &str) -> String {
    format!("CN={client_id},O={ORGANIZATION}")
}

/// The federation's CA, its server certificate and the registered clients' identities.
///
/// `Debug` never prints keys.
#[derive(Clone)]
pub struct Pki {
    ca_pem: String,
    ca_key_pem: String,
    /// The CA of the server certificate when it is not `ca_pem`
    /// ([`Pki::generate_with_server_ca`]).
    server_ca_pem: Option<String>,
    server_cert_pem: String,
    server_key_pem: String,
    clients: Vec<ClientIdentity>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

fn base_params(cn: &str, organization: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    // O first, then CN: the RFC 4514 string (last RDN first) reads `CN=...,O=...`.
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(86_400)).into();
    p.not_after = (now + Duration::from_secs(825 * 86_400)).into();
    p
}

fn generate_ca(cn: &str) -> Result<(String, KeyPair), Error> {
    let key = KeyPair::generate()?;
    let mut p = base_params(cn, Some(ORGANIZATION));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_after = (SystemTime::now() + Duration::from_secs(3650 * 86_400)).into();
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key))
}

fn server_params(names: &[&str]) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
    let base = base_params("fapi-host dev server", Some(ORGANIZATION));
    p.distinguished_name = base.distinguished_name;
    p.serial_number = base.serial_number;
    p.not_before = base.not_before;
    p.not_after = base.not_after;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

impl Pki {
    /// Generate a fresh PKI (ECDSA P-256 everywhere): a CA "fapi-host dev CA", a server certificate
    /// for 127.0.0.1, ::1 and localhost, and one client identity per registered client
    /// ("consumer", "consumer-b", "limited", "provider").
    pub fn generate() -> Result<Pki, Error> {
        Self::generate_inner(false)
    }

    /// [`Pki::generate`], but the server certificate is issued by a second CA, "fapi-host dev
    /// server CA" ([`Pki::server_ca_pem`]), and the client certificates alone by "fapi-host dev
    /// CA" ([`Pki::ca_pem`]). The federation's written client configurations then trust the
    /// server CA alone.
    pub fn generate_with_server_ca() -> Result<Pki, Error> {
        Self::generate_inner(true)
    }

    fn generate_inner(separate_server_ca: bool) -> Result<Pki, Error> {
        let (ca_pem, ca_key) = generate_ca(CA_NAME)?;
        let (server_ca_pem, server_ca_key) = if separate_server_ca {
            let (pem, key) = generate_ca(SERVER_CA_NAME)?;
            (Some(pem), Some(key))
        } else {
            (None, None)
        };
        let issuer = Issuer::from_ca_cert_pem(
            server_ca_pem.as_deref().unwrap_or(&ca_pem),
            server_ca_key.as_ref().unwrap_or(&ca_key),
        )?;
        let server_key = KeyPair::generate()?;
        let server = server_params(&SERVER_NAMES)?.signed_by(&server_key, &issuer)?;
        let mut pki = Pki {
            ca_pem,
            ca_key_pem: ca_key.serialize_pem(),
            server_ca_pem,
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            clients: Vec::new(),
        };
        for (name, client_id, _) in REGISTERED {
            let mut spec = ClientSpec::new(client_id);
            spec.name = name.to_owned();
            spec.not_after = SystemTime::now() + Duration::from_secs(825 * 86_400);
            // Every registered client carries its Directory URL (the `ib1` profile's client id).
            spec.uri_san = Some(crate::consent::directory_url(client_id));
            let identity = pki.issue_client(spec)?;
            pki.clients.push(identity);
        }
        Ok(pki)
    }

    /// Load the PKI from `dir` if it holds one (all files present, the CA parses and the server
    /// certificate is still valid), else generate one and write it there.
    pub fn load_or_generate(dir: &Path) -> Result<Pki, Error> {
        if let Some(pki) = Self::load(dir) {
            return Ok(pki);
        }
        let pki = Self::generate()?;
        pki.write_to(dir)?;
        Ok(pki)
    }

    fn load(dir: &Path) -> Option<Pki> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let ca_pem = read("ca.pem")?;
        let ca_key_pem = read("ca.key")?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
        x509_parser::parse_x509_certificate(&ca_der).ok()?;
        KeyPair::from_pem(&ca_key_pem).ok()?;
        let server_cert_pem = read("server.pem")?;
        let server_der = CertificateDer::from_pem_slice(server_cert_pem.as_bytes()).ok()?;
        let (_, server) = x509_parser::parse_x509_certificate(&server_der).ok()?;
        if !server.validity().is_valid() {
            return None;
        }
        let mut clients = Vec::new();
        for (name, client_id, _) in REGISTERED {
            // A PKI written before client certificates carried their Directory URL is made anew.
            let cert_pem = read(&format!("{name}.pem"))?;
            let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
            if crate::consent::uri_sans(&der) != [crate::consent::directory_url(client_id)] {
                return None;
            }
            clients.push(ClientIdentity {
                name: name.to_owned(),
                client_id: client_id.to_owned(),
                subject_dn: registered_dn(client_id),
                cert_pem,
                key_pem: read(&format!("{name}.key"))?,
            });
        }
        Some(Pki {
            ca_pem,
            ca_key_pem,
            server_ca_pem: read("server-ca.pem"),
            server_cert_pem,
            server_key_pem: read("server.key")?,
            clients,
        })
    }

    /// Write the PKI to `dir` (created if needed): `ca.pem ca.key server.pem server.key` (and
    /// `server-ca.pem` when the server certificate has a CA of its own), and
    /// `<name>.pem`/`<name>.key` per registered client. Key files are mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, false)?;
        write_file(&dir.join("ca.key"), &self.ca_key_pem, true)?;
        write_file(&dir.join("server.pem"), &self.server_cert_pem, false)?;
        write_file(&dir.join("server.key"), &self.server_key_pem, true)?;
        if let Some(pem) = &self.server_ca_pem {
            write_file(&dir.join("server-ca.pem"), pem, false)?;
        }
        for c in &self.clients {
            write_file(&dir.join(format!("{}.pem", c.name)), &c.cert_pem, false)?;
            write_file(&dir.join(format!("{}.key", c.name)), &c.key_pem, true)?;
        }
        Ok(())
    }

    /// The CA certificate, PEM: the issuer of every client certificate (and, unless the PKI was
    /// made by [`Pki::generate_with_server_ca`], of the server certificate).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate of the server certificate, PEM: [`Pki::ca_pem`], or the server CA of
    /// [`Pki::generate_with_server_ca`]. What clients of the federation trust servers through.
    pub fn server_ca_pem(&self) -> &str {
        self.server_ca_pem.as_deref().unwrap_or(&self.ca_pem)
    }

    /// [`Pki::server_ca_pem`], DER.
    pub fn server_ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.server_ca_pem().as_bytes())
            .expect("the server CA PEM was produced or validated when this Pki was built")
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .expect("the CA PEM was produced or validated when this Pki was built")
    }

    /// A registered client's identity by short name: "consumer", "consumer-b", "limited", "provider".
    pub fn client(&self, name: &str) -> Option<&ClientIdentity> {
        self.clients.iter().find(|c| c.name == name)
    }

    /// The server certificate (PEM) used by every federation listener.
    pub fn server_cert_pem(&self) -> &str {
        &self.server_cert_pem
    }

    /// Issue an extra client certificate from the federation CA (for tests). The identity's
    /// `client_id` is the CN; its `subject_dn` is the RFC 4514 form of the subject. See
    /// [`ClientSpec`] for the defaults and for RSA keys.
    pub fn issue_client(&self, spec: ClientSpec) -> Result<ClientIdentity, Error> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &ca_key)?;
        let key = match spec.key_pair {
            Some(k) => k,
            None => KeyPair::generate_for(spec.algorithm)?,
        };
        let mut p = base_params(&spec.common_name, spec.organization.as_deref());
        p.not_before = spec.not_before.into();
        p.not_after = spec.not_after.into();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        if let Some(uri) = spec.uri_san {
            let uri = uri
                .try_into()
                .map_err(|_| Error::pem("new client cert", "the URI SAN is not an IA5 string"))?;
            p.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        }
        let cert = p.signed_by(&key, &issuer)?;
        let subject =
            subject_dn(cert.der()).ok_or_else(|| Error::pem("new client cert", "unparseable"))?;
        Ok(ClientIdentity {
            name: spec.name,
            client_id: spec.common_name,
            subject_dn: subject,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for `names` (IP addresses or DNS names), issued by the federation CA
    /// ([`Pki::ca_pem`], the one that issues client certificates), or, when `from_untrusted_ca`,
    /// by a throw-away CA that nothing trusts. For TLS failure tests.
    pub fn issue_server(
        &self,
        names: &[&str],
        from_untrusted_ca: bool,
    ) -> Result<ServerIdentity, Error> {
        let (ca_pem, ca_key) = if from_untrusted_ca {
            generate_ca("untrusted test CA")?
        } else {
            (self.ca_pem.clone(), KeyPair::from_pem(&self.ca_key_pem)?)
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
        let key = KeyPair::generate()?;
        let cert = server_params(names)?.signed_by(&key, &issuer)?;
        Ok(ServerIdentity {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem,
        })
    }

    /// A rustls client configuration (ring provider, HTTP/1.1) that trusts only the CA of the
    /// federation's server certificate ([`Pki::server_ca_pem`]) and presents `identity` when
    /// given. For tests and tools.
    pub fn client_tls_config(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> Result<rustls::ClientConfig, Error> {
        tls::client_config(&[self.server_ca_der()], identity)
    }

    /// A reqwest client built on [`Pki::client_tls_config`], with redirects off and HTTPS only.
    pub fn http_client(&self, identity: Option<&ClientIdentity>) -> Result<reqwest::Client, Error> {
        tls::http_client(self.client_tls_config(identity)?)
    }

    pub(crate) fn server_chain(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        ),
        Error,
    > {
        let cert = CertificateDer::from_pem_slice(self.server_cert_pem.as_bytes())
            .map_err(|e| Error::pem("server certificate", e))?;
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| Error::pem("server key", e))?;
        Ok((vec![cert], key))
    }
}

/// Write `contents` to `path`; `secret` files get mode 0600 (on Unix) before any byte is written.
pub(crate) fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), Error> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::io("write", path, e))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("write", path, e))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_clients_have_expected_subjects() {
        let pki = Pki::generate().expect("generate");
        for (name, client_id, _) in REGISTERED {
            let c = pki.client(name).expect("registered client");
            assert_eq!(c.client_id, client_id);
            assert_eq!(c.subject_dn, registered_dn(client_id));
            let der = c.cert_der().expect("der");
            assert_eq!(subject_dn(&der).as_deref(), Some(c.subject_dn.as_str()));
            assert_eq!(c.thumbprint().len(), 43);
        }
        assert!(format!("{pki:?}").contains("[redacted]"));
        assert!(!format!("{pki:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn load_or_generate_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Pki::load_or_generate(dir.path()).expect("first");
        let t = std::time::Instant::now();
        let b = Pki::load_or_generate(dir.path()).expect("second");
        assert!(t.elapsed() < Duration::from_millis(500));
        assert_eq!(a.ca_pem(), b.ca_pem());
        assert_eq!(a.client("consumer"), b.client("consumer"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("consumer.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
