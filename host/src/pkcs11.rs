//! Keys in a PKCS#11 token (HSM, smart card, SoftHSM): `private_key = "pkcs11:token=T;object=K"`.
//!
//! The key never leaves the token: the TLS handshake signs through the module (a rustls
//! [`SigningKey`] over the `cryptoki` crate). RSA signs with CKM_RSA_PKCS_PSS (salt = hash length,
//! MGF1 with the same hash) or CKM_RSA_PKCS over a DigestInfo, as TLS negotiates; ECDSA P-256 and
//! P-384 with CKM_ECDSA over the hash, the token's raw `r || s` turned into the DER that TLS carries.
//!
//! Sessions: the module is initialised once per process; each key keeps one logged-in session
//! (login is per application and token in PKCS#11, so every session of the process shares it) and
//! a small pool of sessions for concurrent handshakes. A signature that fails because the token was
//! removed or the session lost drops them all, and the same signature is tried once on a fresh
//! login; when the token is still away the handshake fails with an error that says so, and the
//! next handshake tries again, so the host recovers without a restart when the token returns. The
//! PIN is kept (zeroed on drop) for that re-login; it is never logged or put in a message.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::Digest as _;
use x509_parser::prelude::*;

use crate::config::Settings;
use crate::credentials::{Identity, KeyCheck};
use crate::error::{Error, Result, Warning};

/// The environment variable read for the token's PIN when `pkcs11_pin_file` is not set.
pub const PIN_ENV: &str = "FAPI_PKCS11_PIN";

/// Idle sessions kept per key, beyond the logged-in one.
const POOL_SIZE: usize = 8;

// ---------------------------------------------------------------------------------------------
// RFC 7512 URIs

/// A parsed RFC 7512 PKCS#11 URI naming a private key: `pkcs11:token=T;object=K` (path
/// attributes separated by `;`, query attributes by `&`, values percent-decoded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token's label.
    pub token: Option<String>,
    /// `serial`: the token's serial number.
    pub serial: Option<String>,
    /// `manufacturer`: the token's manufacturer id.
    pub manufacturer: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `slot-id`: the slot's number.
    pub slot_id: Option<u64>,
    /// `object`: the key's label (CKA_LABEL).
    pub object: Option<String>,
    /// `id`: the key's CKA_ID (bytes).
    pub id: Option<Vec<u8>>,
    /// `?module-path=`: the module (shared library).
    pub module_path: Option<PathBuf>,
    /// `?pin-source=`: a file holding the PIN (`file:` prefix allowed).
    pub pin_source: Option<PathBuf>,
}

impl Pkcs11Uri {
    /// Parse `uri`. Errors name the attribute at fault and never repeat a `pin-value`.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri> {
        let bad = |what: String| Error::Config(format!("`private_key` PKCS#11 URI: {what}"));
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("it must start with `pkcs11:`".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut u = Pkcs11Uri::default();
        let mut seen = Vec::new();
        let attrs = path
            .split(';')
            .map(|a| (a, false))
            .chain(query.split('&').map(|a| (a, true)));
        for (attr, in_query) in attrs {
            if attr.is_empty() {
                continue;
            }
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("`{attr}` is not NAME=VALUE")))?;
            if name == "pin-value" {
                return Err(bad(
                    "`pin-value` would put the PIN in the configuration (and maybe in process \
                     listings): remove it and give the PIN in the file named by \
                     `pkcs11_pin_file` (mode 0600) or in $FAPI_PKCS11_PIN"
                        .into(),
                ));
            }
            if seen.contains(&name) {
                return Err(bad(format!("`{name}` is given twice")));
            }
            seen.push(name);
            let bytes = percent_decode(raw).ok_or_else(|| {
                bad(format!(
                    "the value of `{name}` has a `%` not followed by two hex digits"
                ))
            })?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| bad(format!("the value of `{name}` is not UTF-8")))
            };
            match (name, in_query) {
                ("token", false) => u.token = Some(text()?),
                ("serial", false) => u.serial = Some(text()?),
                ("manufacturer", false) => u.manufacturer = Some(text()?),
                ("model", false) => u.model = Some(text()?),
                ("object", false) => u.object = Some(text()?),
                ("id", false) => u.id = Some(bytes),
                ("slot-id", false) => {
                    u.slot_id = Some(text()?.parse().map_err(|_| {
                        bad(format!("`slot-id` {:?} is not a number", text().ok()))
                    })?);
                }
                ("type", false) => {
                    let t = text()?;
                    if t != "private" {
                        return Err(bad(format!(
                            "`type={t}`: `private_key` names a private key: use `type=private` or leave it out"
                        )));
                    }
                }
                ("module-path", true) => u.module_path = Some(PathBuf::from(text()?)),
                ("pin-source", true) => {
                    let t = text()?;
                    let file = t.strip_prefix("file:").unwrap_or(&t);
                    u.pin_source = Some(PathBuf::from(file));
                }
                // Attributes that select the library or slot by description, and vendor ones:
                // allowed by RFC 7512, not needed to find a key.
                (
                    "library-manufacturer"
                    | "library-description"
                    | "library-version"
                    | "slot-description"
                    | "slot-manufacturer"
                    | "module-name",
                    _,
                ) => {}
                (n, _) if n.starts_with("x-") => {}
                (n, _) => {
                    return Err(bad(format!(
                        "unknown attribute `{n}`{}; use token=, object= or id= (and \
                         ?module-path=), e.g. pkcs11:token=fapi;object=client-key",
                        if in_query { " in the query" } else { "" }
                    )));
                }
            }
        }
        if u.object.is_none() && u.id.is_none() {
            return Err(bad(
                "it names no key: add `object=LABEL` (the key's label) or `id=%01...`".into(),
            ));
        }
        Ok(u)
    }

    /// The key as people read it: `object "K" (id 01)`.
    fn key_name(&self) -> String {
        let mut s = String::new();
        if let Some(o) = &self.object {
            s.push_str(&format!("labelled {o:?}"));
        }
        if let Some(id) = &self.id {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&format!("with id {}", hex(id)));
        }
        s
    }

    /// The token as people read it.
    fn token_name(&self) -> String {
        match (&self.token, &self.serial, self.slot_id) {
            (Some(t), _, _) => format!("token {t:?}"),
            (None, Some(s), _) => format!("the token with serial {s:?}"),
            (None, None, Some(id)) => format!("the token in slot {id}"),
            _ => "the token".into(),
        }
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Loading, step by step (what `fapi-host check` reports)

/// The steps of opening a key in a token, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The `private_key` URI parses.
    Uri,
    /// The certificate file is read and parsed.
    Certificate,
    /// The module (shared library) loads and initialises.
    Module,
    /// The token named by the URI is present.
    Token,
    /// The PIN is accepted.
    Pin,
    /// The private key is found.
    Key,
    /// The token's public key is the certificate's.
    PublicKey,
    /// A test signature by the token verifies with the certificate's public key.
    Signature,
}

impl Step {
    /// The step's name in `fapi-host check`.
    pub fn label(self) -> &'static str {
        match self {
            Step::Uri => "private_key",
            Step::Certificate => "certificate",
            Step::Module => "PKCS#11 module",
            Step::Token => "PKCS#11 token",
            Step::Pin => "PKCS#11 PIN",
            Step::Key => "PKCS#11 key",
            Step::PublicKey => "public key",
            Step::Signature => "test signature",
        }
    }
}

/// How loading goes: a step starts (`None`) or passed (`Some(detail)`, for a reader).
pub(crate) type Progress<'a> = &'a mut dyn FnMut(Step, Option<&str>);

/// Load the identity of `settings` whose `private_key` is a PKCS#11 URI; `report` is told when
/// each step starts and when it passed. On failure, the error is that of the last step started.
pub(crate) fn identity(
    settings: &Settings,
    report: Progress<'_>,
) -> Result<(Identity, Vec<Warning>)> {
    report(Step::Uri, None);
    let uri_text = settings
        .pkcs11_uri()
        .ok_or_else(|| Error::Config("`private_key` is not a pkcs11: URI".into()))?;
    let uri = Pkcs11Uri::parse(uri_text)?;
    let cert_name = &settings.certificate;
    // `certificate` from the token (read once logged in), or from its PEM file (read now).
    let cert_uri = cert_name
        .to_str()
        .filter(|c| c.starts_with("pkcs11:"))
        .map(Pkcs11Uri::parse)
        .transpose()?;
    let file_chain = match &cert_uri {
        Some(c) => {
            if c.token.is_some() && c.token != uri.token {
                return Err(Error::Config(
                    "`certificate` names a certificate in another token than the key's: give \
                     the key's token (or no token=) in its URI"
                        .into(),
                ));
            }
            None
        }
        None => {
            report(Step::Certificate, None);
            let cert_pem = std::fs::read(cert_name).map_err(|e| {
                Error::Credentials(format!(
                    "cannot read `certificate` file {}: {e}",
                    cert_name.display()
                ))
            })?;
            Some(crate::credentials::parse_chain(&cert_pem, cert_name)?)
        }
    };

    report(Step::Module, None);
    let module = match (&uri.module_path, &settings.pkcs11_module) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => {
            return Err(Error::Config(format!(
                "`private_key` is a PKCS#11 URI but no module is named: set `pkcs11_module` to the \
                 token's PKCS#11 library (SoftHSM: /usr/lib/softhsm/libsofthsm2.so) or add \
                 ?module-path=... to the URI {uri_text}"
            )));
        }
    };
    let ctx = module_context(&module)?;
    report(Step::Module, Some(&format!("{} loaded", module.display())));

    report(Step::Pin, None);

    let pin_file = uri
        .pin_source
        .as_deref()
        .or(settings.pkcs11_pin_file.as_deref());
    let pin = crate::credentials::read_secret(pin_file, "pkcs11_pin_file", PIN_ENV)?.ok_or_else(
        || {
            Error::Credentials(format!(
                "no PIN for {}: put the user PIN in a file named by `pkcs11_pin_file` (mode 0600) \
                 or in ${PIN_ENV} (never on the command line)",
                uri.token_name()
            ))
        },
    )?;
    let pin = String::from_utf8(pin.to_vec()).map_err(|_| {
        Error::Credentials(format!(
            "the PIN for {} is not UTF-8 text: give it as text",
            uri.token_name()
        ))
    })?;
    let inner = Arc::new(TokenKey {
        ctx,
        module,
        uri,
        pin: AuthPin::from(pin),
        state: Mutex::new(None),
        pss: AtomicBool::new(false),
        lost: AtomicBool::new(false),
    });

    // Token, PIN, key: the first connection.
    inner.connect_reporting(report)?;

    report(Step::Certificate, None);
    let chain = match (file_chain, &cert_uri) {
        (Some(chain), _) => chain,
        (None, Some(c)) => {
            let cert = inner.read_certificate(c)?;
            report(
                Step::Certificate,
                Some(&format!("read from the token ({})", c.key_name())),
            );
            vec![cert]
        }
        (None, None) => unreachable!("a chain or a certificate URI"),
    };
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).map_err(|e| {
        Error::Credentials(format!(
            "{}: the first certificate is not valid X.509 ({e})",
            cert_name.display()
        ))
    })?;
    let kind = KeyKind::of(&leaf, cert_name)?;
    // The public key object, when there is one, against the certificate's.
    report(Step::PublicKey, None);
    report(Step::PublicKey, Some(&inner.public_key_matches(&leaf)?));

    let key = Arc::new(TokenSigningKey { inner, kind });
    // A test signature, verified with the certificate's public key.
    report(Step::Signature, None);
    verify_test_signature(&key, &leaf, cert_name)?;
    report(
        Step::Signature,
        Some(&format!(
            "{} signature by the token verifies with the certificate's public key",
            kind.describe(key.inner.pss.load(Ordering::Relaxed))
        )),
    );
    drop(leaf);
    Identity::from_signing_key(
        chain,
        || Ok(key),
        KeyCheck::Verified,
        cert_name,
        Path::new(uri_text),
    )
}

/// The module's context, loaded and initialised once per process (C_Initialize may be called
/// once per module and process).
fn module_context(module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let not_module = |why: String| {
        Error::Credentials(format!(
            "`pkcs11_module` {} is not a usable PKCS#11 module ({why}); give the path of the \
             token's PKCS#11 library (SoftHSM: /usr/lib/softhsm/libsofthsm2.so, OpenSC: \
             /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so)",
            module.display()
        ))
    };
    if !module.is_file() {
        return Err(not_module("no such file".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| not_module(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(not_module(format!("C_Initialize failed: {e}"))),
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// What a key is, from its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    fn of(leaf: &X509Certificate<'_>, cert_name: &Path) -> Result<KeyKind> {
        let description = crate::credentials::check_key_strength(leaf, cert_name)?;
        match description.as_str() {
            d if d.starts_with("RSA") => Ok(KeyKind::Rsa),
            "ECDSA P-256" => Ok(KeyKind::P256),
            "ECDSA P-384" => Ok(KeyKind::P384),
            other => Err(Error::Credentials(format!(
                "{}: a {other} key in a PKCS#11 token is not supported; use RSA (2048+), ECDSA \
                 P-256 or P-384",
                cert_name.display()
            ))),
        }
    }

    fn describe(self, pss: bool) -> &'static str {
        match (self, pss) {
            (KeyKind::Rsa, true) => "RSA-PSS",
            (KeyKind::Rsa, false) => "RSA PKCS#1 v1.5",
            (KeyKind::P256, _) => "ECDSA P-256",
            (KeyKind::P384, _) => "ECDSA P-384",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// Held while a key connects to its token (see [`TokenKey::connect`]).
static MODULES: Mutex<()> = Mutex::new(());

/// One key in one token: the module, how to find the token and key again, the PIN, and the
/// sessions.
struct TokenKey {
    ctx: Pkcs11,
    module: PathBuf,
    uri: Pkcs11Uri,
    pin: AuthPin,
    /// None until connected, and again after the token was lost.
    state: Mutex<Option<Connected>>,
    /// The token has CKM_RSA_PKCS_PSS (known once connected).
    pss: AtomicBool,
    /// The token or session was lost, and no connection has succeeded since.
    lost: AtomicBool,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("module", &self.module)
            .field("uri", &self.uri)
            .field("pin", &"[redacted]")
            .finish_non_exhaustive()
    }
}

struct Connected {
    slot: Slot,
    key: ObjectHandle,
    /// The session that logged in; kept open so that the login lasts.
    _login: Session,
    idle: Vec<Session>,
}

/// A failure of a token operation, already in words, and whether a fresh login may cure it.
struct OpError {
    message: String,
    lost: bool,
}

fn is_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceError
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

impl TokenKey {
    fn fail(&self, message: String, lost: bool) -> OpError {
        OpError { message, lost }
    }

    /// Initialise the module after it was finalised (by this key or another of the module).
    fn initialize_again(&self) -> std::result::Result<(), OpError> {
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(self.fail(
                format!(
                    "{}: initialising the module again failed: {e}",
                    self.module.display()
                ),
                true,
            )),
        }
    }

    /// The slot of the token the URI names (the first that matches), and the labels of the
    /// tokens present.
    fn find_slot(&self) -> std::result::Result<(Option<Slot>, Vec<String>), OpError> {
        let module = self.module.display();
        let slots = match self.ctx.get_slots_with_token() {
            // Another key of this module finalised it to find a returned token (the module's
            // state is the process's): initialise it again.
            Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {
                self.initialize_again()?;
                self.ctx.get_slots_with_token()
            }
            other => other,
        }
        .map_err(|e| self.fail(format!("{module}: listing the slots failed: {e}"), true))?;
        let mut present = Vec::new();
        let mut found = None;
        for slot in slots {
            let Ok(info) = self.ctx.get_token_info(slot) else {
                continue;
            };
            let label = info.label().trim_end().to_owned();
            let matches = self.uri.token.as_ref().is_none_or(|t| *t == label)
                && self
                    .uri
                    .serial
                    .as_ref()
                    .is_none_or(|s| s == info.serial_number().trim_end())
                && self
                    .uri
                    .manufacturer
                    .as_ref()
                    .is_none_or(|m| m == info.manufacturer_id().trim_end())
                && self
                    .uri
                    .model
                    .as_ref()
                    .is_none_or(|m| m == info.model().trim_end())
                && self.uri.slot_id.is_none_or(|id| id == slot.id());
            if matches && found.is_none() {
                found = Some(slot);
            }
            // SoftHSM's free slot holds an uninitialised token without a label.
            if !label.is_empty() {
                present.push(format!("{label:?}"));
            }
        }
        Ok((found, present))
    }

    /// Find the slot, open and log in a session, find the key: a new [`Connected`].
    fn connect(&self, report: Progress<'_>) -> std::result::Result<Connected, OpError> {
        let module = self.module.display();
        let token = self.uri.token_name();
        report(Step::Token, None);
        // One connection at a time in the process: finalising a module (below) ends the sessions
        // of every key of it, and must not happen while another key looks for its token.
        let _module = MODULES.lock().unwrap_or_else(|p| p.into_inner());
        let (mut found, mut present) = self.find_slot()?;
        if found.is_none() && self.lost.load(Ordering::Relaxed) {
            // The token was lost while in use. Some modules (SoftHSM) see a token that comes back
            // only when initialised again: finalise and initialise the module, then look again.
            // Other keys of the module lose their sessions and log in again the same way.
            let _ = self.ctx.clone().finalize();
            self.initialize_again()?;
            (found, present) = self.find_slot()?;
        }
        let slot = found.ok_or_else(|| {
            let there = if present.is_empty() {
                "none is present".to_owned()
            } else {
                format!("tokens present: {}", present.join(", "))
            };
            self.fail(
                format!(
                    "{token} is not present in {module} ({there}); check `token=` in the URI, \
                     or insert the token (a running host retries at its next connection)"
                ),
                true,
            )
        })?;
        report(
            Step::Token,
            Some(&format!("{token} is present (slot {})", slot.id())),
        );
        report(Step::Pin, None);

        let login = self.ctx.open_ro_session(slot).map_err(|e| {
            self.fail(
                format!("{token}: opening a session failed: {e}"),
                is_lost(&e),
            )
        })?;
        match login.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(self.fail(
                    format!(
                        "{token} refused the PIN: put the right user PIN in `pkcs11_pin_file` or \
                         ${PIN_ENV} (each wrong attempt counts towards locking the token)"
                    ),
                    false,
                ));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(self.fail(
                    format!(
                        "{token}'s user PIN is locked (too many wrong attempts): have its security \
                         officer unlock it"
                    ),
                    false,
                ));
            }
            Err(CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _)) => {
                return Err(self.fail(
                    format!(
                        "{token} refused the PIN as malformed (length or characters): check \
                         `pkcs11_pin_file` or ${PIN_ENV}"
                    ),
                    false,
                ));
            }
            Err(e) => {
                return Err(self.fail(format!("{token}: login failed: {e}"), is_lost(&e)));
            }
        }
        report(Step::Pin, Some("accepted"));
        report(Step::Key, None);

        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(o) = &self.uri.object {
            template.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &self.uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let keys = login.find_objects(&template).map_err(|e| {
            self.fail(
                format!("{token}: searching for the key failed: {e}"),
                is_lost(&e),
            )
        })?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                let labels = login
                    .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|h| label_of(&login, h))
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>();
                let there = if labels.is_empty() {
                    "it holds no private key".to_owned()
                } else {
                    format!("private keys there: {}", labels.join(", "))
                };
                return Err(self.fail(
                    format!(
                        "{token} has no private key {} ({there}); fix `object=` (or `id=`) in the \
                         URI",
                        self.uri.key_name()
                    ),
                    false,
                ));
            }
            many => {
                return Err(self.fail(
                    format!(
                        "{token} has {} private keys {}: add `id=` to the URI to name one",
                        many.len(),
                        self.uri.key_name()
                    ),
                    false,
                ));
            }
        };
        let key_type = login
            .get_attributes(key, &[AttributeType::KeyType])
            .ok()
            .and_then(|a| {
                a.into_iter().find_map(|a| match a {
                    Attribute::KeyType(t) => Some(t),
                    _ => None,
                })
            });
        let kind = match key_type {
            Some(t) if t == KeyType::RSA => "RSA",
            Some(t) if t == KeyType::EC => "EC",
            _ => "unknown",
        };
        report(
            Step::Key,
            Some(&format!("{kind} private key {} found", self.uri.key_name())),
        );
        self.lost.store(false, Ordering::Relaxed);
        Ok(Connected {
            slot,
            key,
            _login: login,
            idle: Vec::new(),
        })
    }

    /// The first connection, with its steps reported; learns whether the token does RSA-PSS.
    fn connect_reporting(&self, report: Progress<'_>) -> Result<()> {
        let c = self
            .connect(report)
            .map_err(|e| Error::Credentials(e.message))?;
        // Asked for this one mechanism: listing them all makes cryptoki log an error for each
        // mechanism it has no name for.
        let pss = self
            .ctx
            .get_mechanism_info(c.slot, MechanismType::RSA_PKCS_PSS)
            .is_ok();
        self.pss.store(pss, Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        Ok(())
    }

    /// A session and the key's handle: an idle session, else a new one (connecting first when
    /// needed).
    fn take(&self) -> std::result::Result<(Session, ObjectHandle), OpError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_none() {
            *state = Some(self.connect(&mut |_, _| {})?);
        }
        let c = state
            .as_mut()
            .ok_or_else(|| self.fail("not connected".into(), true))?;
        if let Some(s) = c.idle.pop() {
            return Ok((s, c.key));
        }
        let (slot, key) = (c.slot, c.key);
        match self.ctx.open_ro_session(slot) {
            Ok(s) => Ok((s, key)),
            Err(e) => Err(self.fail(
                format!("{}: opening a session failed: {e}", self.uri.token_name()),
                is_lost(&e),
            )),
        }
    }

    fn put(&self, session: Session) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = state.as_mut()
            && c.idle.len() < POOL_SIZE
        {
            c.idle.push(session);
        }
    }

    /// Forget every session (the token was removed or the sessions lost).
    fn reset(&self) {
        let old = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }

    fn sign_once(
        &self,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> std::result::Result<Vec<u8>, OpError> {
        let (session, key) = self.take()?;
        match session.sign(mechanism, key, data) {
            Ok(sig) => {
                self.put(session);
                Ok(sig)
            }
            Err(e) => Err(self.fail(
                format!("{}: signing failed: {e}", self.uri.token_name()),
                is_lost(&e),
            )),
        }
    }

    /// Sign `data` with `mechanism`; on a lost token or session, once more on a fresh login.
    fn sign(&self, mechanism: &Mechanism<'_>, data: &[u8]) -> std::result::Result<Vec<u8>, String> {
        match self.sign_once(mechanism, data) {
            Ok(sig) => Ok(sig),
            Err(e) if e.lost => {
                self.lost.store(true, Ordering::Relaxed);
                tracing::warn!("PKCS#11: {}; logging in to the token again", e.message);
                self.reset();
                self.sign_once(mechanism, data).map_err(|e| {
                    if e.lost {
                        self.reset();
                    }
                    e.message
                })
            }
            Err(e) => Err(e.message),
        }
    }

    /// The certificate object `uri` names (CKA_VALUE, DER), from the key's token.
    fn read_certificate(
        &self,
        uri: &Pkcs11Uri,
    ) -> Result<rustls_pki_types::CertificateDer<'static>> {
        let (session, _) = self.take().map_err(|e| Error::Credentials(e.message))?;
        let mut template = vec![Attribute::Class(ObjectClass::CERTIFICATE)];
        if let Some(o) = &uri.object {
            template.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let token = self.uri.token_name();
        let found = session.find_objects(&template).map_err(|e| {
            Error::Credentials(format!(
                "{token}: searching for the certificate failed: {e}"
            ))
        })?;
        let one = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::Credentials(format!(
                    "{token} has no certificate {}: fix `object=` (or `id=`) in `certificate`, \
                     or give the certificate's PEM file",
                    uri.key_name()
                )));
            }
            many => {
                return Err(Error::Credentials(format!(
                    "{token} has {} certificates {}: add `id=` to the `certificate` URI",
                    many.len(),
                    uri.key_name()
                )));
            }
        };
        let value = session
            .get_attributes(one, &[AttributeType::Value])
            .map_err(|e| {
                Error::Credentials(format!("{token}: reading the certificate failed: {e}"))
            })?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| Error::Credentials(format!("{token}: the certificate has no value")))?;
        self.put(session);
        Ok(rustls_pki_types::CertificateDer::from(value))
    }

    /// Whether the token's public key object (if any) is the certificate's key.
    fn public_key_matches(&self, leaf: &X509Certificate<'_>) -> Result<String> {
        let (session, _) = self.take().map_err(|e| Error::Credentials(e.message))?;
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        if let Some(o) = &self.uri.object {
            template.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &self.uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let found = session.find_objects(&template).unwrap_or_default();
        let Some(&public) = found.first() else {
            self.put(session);
            return Ok(
                "the token holds no public key object for this key: the test signature decides"
                    .into(),
            );
        };
        let attrs = session
            .get_attributes(
                public,
                &[
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcPoint,
                ],
            )
            .unwrap_or_default();
        self.put(session);
        let spki = leaf.public_key();
        let matches = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let modulus = attrs.iter().find_map(|a| match a {
                    Attribute::Modulus(m) => Some(m.as_slice()),
                    _ => None,
                });
                let exponent = attrs.iter().find_map(|a| match a {
                    Attribute::PublicExponent(e) => Some(e.as_slice()),
                    _ => None,
                });
                match (modulus, exponent) {
                    (Some(m), Some(e)) => Some(
                        strip_zeros(m) == strip_zeros(rsa.modulus)
                            && strip_zeros(e) == strip_zeros(rsa.exponent),
                    ),
                    _ => None,
                }
            }
            Ok(x509_parser::public_key::PublicKey::EC(point)) => attrs
                .iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p.as_slice()),
                    _ => None,
                })
                .map(|p| unwrap_octet_string(p) == point.data()),
            _ => None,
        };
        match matches {
            Some(true) => Ok("the token's public key is the certificate's".into()),
            Some(false) => Err(Error::Credentials(format!(
                "the key {} in {} does not match the certificate ({}): point `certificate` at the \
                 certificate issued for this key, or `object=` at the key it was issued for",
                self.uri.key_name(),
                self.uri.token_name(),
                leaf.subject()
            ))),
            None => Ok(
                "the token's public key object could not be compared: the test signature decides"
                    .into(),
            ),
        }
    }
}

fn label_of(session: &Session, h: ObjectHandle) -> Option<String> {
    session
        .get_attributes(h, &[AttributeType::Label])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(l) => String::from_utf8(l).ok(),
            _ => None,
        })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n..]
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point (some modules give the bare point).
fn unwrap_octet_string(p: &[u8]) -> &[u8] {
    match p {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest,
        _ => p,
    }
}

// ---------------------------------------------------------------------------------------------
// rustls

/// The rustls signing key of a key in a token.
#[derive(Debug)]
struct TokenSigningKey {
    inner: Arc<TokenKey>,
    kind: KeyKind,
}

const RSA_SCHEMES: [SignatureScheme; 6] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

impl TokenSigningKey {
    /// The schemes this key can sign with, best first.
    fn schemes(&self) -> Vec<SignatureScheme> {
        match self.kind {
            KeyKind::Rsa => RSA_SCHEMES
                .into_iter()
                .filter(|s| self.inner.pss.load(Ordering::Relaxed) || !is_pss(*s))
                .collect(),
            KeyKind::P256 => vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            KeyKind::P384 => vec![SignatureScheme::ECDSA_NISTP384_SHA384],
        }
    }
}

fn is_pss(s: SignatureScheme) -> bool {
    matches!(
        s,
        SignatureScheme::RSA_PSS_SHA256
            | SignatureScheme::RSA_PSS_SHA384
            | SignatureScheme::RSA_PSS_SHA512
    )
}

impl SigningKey for TokenSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.schemes().into_iter().find(|s| offered.contains(s))?;
        Some(Box::new(TokenSigner {
            inner: self.inner.clone(),
            scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self.kind {
            KeyKind::Rsa => SignatureAlgorithm::RSA,
            KeyKind::P256 | KeyKind::P384 => SignatureAlgorithm::ECDSA,
        }
    }
}

#[derive(Debug)]
struct TokenSigner {
    inner: Arc<TokenKey>,
    scheme: SignatureScheme,
}

/// DigestInfo prefixes (RFC 8017, section 9.2, note 1).
const DIGEST_INFO_SHA256: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const DIGEST_INFO_SHA384: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const DIGEST_INFO_SHA512: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, m: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => sha2::Sha256::digest(m).to_vec(),
            Hash::Sha384 => sha2::Sha384::digest(m).to_vec(),
            Hash::Sha512 => sha2::Sha512::digest(m).to_vec(),
        }
    }
    fn digest_info(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => DIGEST_INFO_SHA256,
            Hash::Sha384 => DIGEST_INFO_SHA384,
            Hash::Sha512 => DIGEST_INFO_SHA512,
        }
    }
    fn pss(self) -> PkcsPssParams {
        let (hash_alg, mgf, len) = match self {
            Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32u8),
            Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
            Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
        };
        PkcsPssParams {
            hash_alg,
            mgf,
            s_len: cryptoki::types::Ulong::from(std::os::raw::c_ulong::from(len)),
        }
    }
}

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        sign_with(&self.inner, self.scheme, message).map_err(|m| {
            tracing::warn!("PKCS#11 signature for the TLS handshake failed: {m}");
            rustls::Error::General(format!("PKCS#11: {m}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

fn sign_with(
    key: &TokenKey,
    scheme: SignatureScheme,
    message: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    use SignatureScheme as S;
    match scheme {
        S::RSA_PSS_SHA256 | S::RSA_PSS_SHA384 | S::RSA_PSS_SHA512 => {
            let h = match scheme {
                S::RSA_PSS_SHA256 => Hash::Sha256,
                S::RSA_PSS_SHA384 => Hash::Sha384,
                _ => Hash::Sha512,
            };
            key.sign(&Mechanism::RsaPkcsPss(h.pss()), &h.digest(message))
        }
        S::RSA_PKCS1_SHA256 | S::RSA_PKCS1_SHA384 | S::RSA_PKCS1_SHA512 => {
            let h = match scheme {
                S::RSA_PKCS1_SHA256 => Hash::Sha256,
                S::RSA_PKCS1_SHA384 => Hash::Sha384,
                _ => Hash::Sha512,
            };
            let mut input = h.digest_info().to_vec();
            input.extend_from_slice(&h.digest(message));
            key.sign(&Mechanism::RsaPkcs, &input)
        }
        S::ECDSA_NISTP256_SHA256 | S::ECDSA_NISTP384_SHA384 => {
            let h = if scheme == S::ECDSA_NISTP256_SHA256 {
                Hash::Sha256
            } else {
                Hash::Sha384
            };
            let raw = key.sign(&Mechanism::Ecdsa, &h.digest(message))?;
            ecdsa_der(&raw).ok_or_else(|| {
                format!(
                    "the token returned an ECDSA signature of {} bytes, not r || s",
                    raw.len()
                )
            })
        }
        other => Err(format!("signature scheme {other:?} is not supported")),
    }
}

/// The DER `ECDSA-Sig-Value` (SEQUENCE { r INTEGER, s INTEGER }) of a PKCS#11 `r || s`
/// signature, as TLS carries it. None when `raw` is not two halves of at most 66 bytes.
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let integer = |x: &[u8]| {
        let x = strip_zeros(x);
        let mut v = vec![0x02];
        let pad = x.first().is_none_or(|b| b & 0x80 != 0);
        let len = x.len() + usize::from(pad);
        push_len(&mut v, len);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    };
    let (r, s) = (integer(r), integer(s));
    let mut out = vec![0x30];
    push_len(&mut out, r.len() + s.len());
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Some(out)
}

fn push_len(v: &mut Vec<u8>, len: usize) {
    // At most 2 * (3 + 67) bytes: one or two length octets.
    if len < 0x80 {
        v.push(len as u8);
    } else {
        v.push(0x81);
        v.push(len as u8);
    }
}

/// Sign a random message with the token (the scheme TLS 1.3 would use) and verify the signature
/// with the certificate's public key (ring's verifiers, as rustls uses them).
fn verify_test_signature(
    key: &TokenSigningKey,
    leaf: &X509Certificate<'_>,
    cert_name: &Path,
) -> Result<()> {
    let scheme = key.schemes()[0];
    let message: [u8; 32] = rand::random();
    let signature = sign_with(&key.inner, scheme, &message)
        .map_err(|m| Error::Credentials(format!("test signature: {m}")))?;
    let provider = crate::tls::fapi_provider();
    let public = leaf.public_key().subject_public_key.data.as_ref();
    let verified = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| alg.verify_signature(public, &message, &signature).is_ok());
    if verified {
        Ok(())
    } else {
        Err(Error::Credentials(format!(
            "the key {} in {} does not match the certificate {} ({}): a signature by the key does \
             not verify with the certificate's public key; point `certificate` at the certificate \
             issued for this key, or `object=` at the key it was issued for",
            key.inner.uri.key_name(),
            key.inner.uri.token_name(),
            cert_name.display(),
            leaf.subject()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_parsed_and_percent_decoded() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=client%3Bkey;id=%01%ab;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("client;key"));
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xab][..]));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin_source.as_deref(), Some(Path::new("/etc/pin")));
        let u = Pkcs11Uri::parse("pkcs11:serial=42;slot-id=3;id=%02").unwrap();
        assert_eq!((u.serial.as_deref(), u.slot_id), (Some("42"), Some(3)));
    }

    #[test]
    fn bad_uris_say_what_is_wrong_and_never_repeat_a_pin() {
        for (uri, expect) in [
            ("token=a;object=b", "must start with `pkcs11:`"),
            ("pkcs11:token=a", "names no key"),
            ("pkcs11:token=a;object=b;object=c", "given twice"),
            ("pkcs11:token=a;object=b%2", "two hex digits"),
            ("pkcs11:token=a;objekt=b", "unknown attribute `objekt`"),
            ("pkcs11:token=a;object=b;type=cert", "type=private"),
            (
                "pkcs11:token=a;object=b?pin-value=S3cr3tPIN",
                "pkcs11_pin_file",
            ),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(err.contains(expect), "{uri}: {err}");
            assert!(!err.contains("S3cr3tPIN"), "{err}");
        }
    }

    #[test]
    fn ecdsa_signatures_become_der() {
        // r with its top bit set gets a 0 pad; s with leading zeros loses them.
        let mut raw = vec![0x80; 32];
        raw.extend([0u8; 31]);
        raw.push(0x05);
        let der = ecdsa_der(&raw).unwrap();
        let mut expect = vec![0x30, 2 + 33 + 3, 0x02, 33, 0x00];
        expect.extend([0x80; 32]);
        expect.extend([0x02, 1, 0x05]);
        assert_eq!(der, expect);
        // P-384 sizes stay under 128 bytes; odd lengths are refused.
        assert!(ecdsa_der(&[0xff; 96]).unwrap()[1] < 0x80);
        assert!(ecdsa_der(&[1; 63]).is_none());
    }

    #[test]
    fn ec_points_are_unwrapped_from_their_octet_string() {
        let point = [4u8; 65];
        let mut wrapped = vec![0x04, 65];
        wrapped.extend(point);
        assert_eq!(unwrap_octet_string(&wrapped), &point[..]);
        assert_eq!(unwrap_octet_string(&point), &point[..]);
    }
}
