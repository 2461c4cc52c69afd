//! Ecosystem profiles: a named table of defaults for how the client authenticates, how its tokens
//! are sender-constrained and which TLS it speaks, each key overridable in the configuration.
//!
//! | key | `open-energy` | `fapi2` | `uk-open-banking` | `cdr` | `ib1` |
//! |---|---|---|---|---|---|
//! | `token_endpoint_auth_method` | `tls_client_auth` | `private_key_jwt` | `private_key_jwt` | `private_key_jwt` | `tls_client_auth` |
//! | `sender_constraint` | `mtls` | `mtls` | `mtls` | `mtls` | `mtls` |
//! | `client_assertion_audience` | `issuer` | `issuer` | `token_endpoint` | `token_endpoint` | `issuer` (unused) |
//! | `tls_cipher_suites` | `bcp195` | `bcp195` | `fapi1` | `bcp195` | `bcp195` (unused) |
//! | `[client] tls13_only` | false | false | false | false | true |
//! | `trust.system_roots` | true | true | true | false | true |
//!
//! `fapi2` allows DPoP (`sender_constraint = "dpop"`) and `tls_client_auth` as well; the others
//! name what their ecosystem requires. `ib1` (the Icebreaker One Trust Framework) grants tokens
//! only after a household's consent (`fapi-host grant add`): its requests use a grant's tokens, and
//! its `client_id` is the Directory URL in the certificate's URI SAN.
//!
//! [`requirements`] holds the chosen settings against the authorization server's discovery
//! document, one [`Finding`] per requirement: what `fapi-host check` reports after the profile.
//! docs/profiles.md has the table with the reasons and the specifications.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::config::AuthSettings;
use crate::error::{Error, Result};

/// An ecosystem's name for its table of defaults (`profile = "..."`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// Open Energy: `tls_client_auth`, mTLS-bound tokens (the default).
    #[default]
    OpenEnergy,
    /// FAPI 2.0 Security Profile: `private_key_jwt` (or mTLS), mTLS- or DPoP-bound tokens.
    Fapi2,
    /// UK Open Banking (FAPI 1.0 Advanced): `private_key_jwt` with `aud` the token endpoint,
    /// TLS 1.2 limited to FAPI 1.0 Final's suites.
    UkOpenBanking,
    /// Australia's Consumer Data Right: `private_key_jwt` (mTLS is not a client authentication
    /// method there), mTLS-bound tokens, servers only from the ecosystem's CA.
    Cdr,
    /// The Icebreaker One Trust Framework: `tls_client_auth`, mTLS-bound tokens, TLS 1.3 only;
    /// tokens come from a household's consent (PAR, PKCE, refresh tokens: `fapi-host grant`).
    Ib1,
}

/// How the client authenticates at the token endpoint (`token_endpoint_auth_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// RFC 8705 section 2.1: the client certificate alone.
    TlsClientAuth,
    /// RFC 7523 / OIDC Core section 9: a signed `client_assertion` per token request.
    PrivateKeyJwt,
}

/// How access tokens are bound to the client (`sender_constraint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderConstraint {
    /// RFC 8705: bound to the client certificate's thumbprint (`cnf.x5t#S256`).
    Mtls,
    /// RFC 9449: bound to a DPoP key's thumbprint (`cnf.jkt`), a proof with every request.
    Dpop,
}

/// The `aud` of a client assertion (`client_assertion_audience`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The issuer identifier as a plain string (FAPI 2.0 section 5.3.3.1).
    Issuer,
    /// The token endpoint's URL (FAPI 1.0 ecosystems: UK Open Banking, CDR).
    TokenEndpoint,
}

/// The TLS 1.2 cipher suites offered (`tls_cipher_suites`); TLS 1.3 is always offered unless
/// `tls13_only` leaves TLS 1.2 out altogether.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsSuites {
    /// BCP 195's recommendation as FAPI 2.0 section 5.2.2 takes it: ECDHE with RSA or ECDSA,
    /// AES-GCM.
    Bcp195,
    /// FAPI 1.0 Final part 2 section 8.5: `TLS_ECDHE_RSA_WITH_AES_{128,256}_GCM_*` (its two DHE
    /// suites are not in rustls).
    Fapi1,
}

/// The defaults a profile gives; each is overridable by its own key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// `token_endpoint_auth_method`.
    pub client_auth: ClientAuth,
    /// `sender_constraint`.
    pub sender_constraint: SenderConstraint,
    /// `client_assertion_audience`.
    pub assertion_audience: AssertionAudience,
    /// `tls_cipher_suites`.
    pub tls_suites: TlsSuites,
    /// `[trust] system_roots`.
    pub system_roots: bool,
    /// `[client] tls13_only`.
    pub tls13_only: bool,
}

impl Profile {
    /// Every profile, in the order the README lists them.
    pub const ALL: [Profile; 5] = [
        Profile::OpenEnergy,
        Profile::Fapi2,
        Profile::UkOpenBanking,
        Profile::Cdr,
        Profile::Ib1,
    ];

    /// Whether tokens come only from a household's consent (a grant of the grant store), never
    /// from `client_credentials`: requests without a grant are refused.
    pub fn needs_grant(self) -> bool {
        self == Profile::Ib1
    }

    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Profile::OpenEnergy => "open-energy",
            Profile::Fapi2 => "fapi2",
            Profile::UkOpenBanking => "uk-open-banking",
            Profile::Cdr => "cdr",
            Profile::Ib1 => "ib1",
        }
    }

    /// Whether the ecosystem follows FAPI 1.0 Advanced rather than FAPI 2.0 (UK Open Banking,
    /// CDR): client signatures are then PS256 or ES256 only (FAPI 1.0 part 2 section 8.6).
    pub fn follows_fapi1(self) -> bool {
        matches!(self, Profile::UkOpenBanking | Profile::Cdr)
    }

    /// The profile's table of defaults.
    pub fn defaults(self) -> Defaults {
        use AssertionAudience::*;
        use ClientAuth::*;
        let mtls = SenderConstraint::Mtls;
        match self {
            Profile::OpenEnergy => Defaults {
                client_auth: TlsClientAuth,
                sender_constraint: mtls,
                assertion_audience: Issuer,
                tls_suites: TlsSuites::Bcp195,
                system_roots: true,
                tls13_only: false,
            },
            Profile::Fapi2 => Defaults {
                client_auth: PrivateKeyJwt,
                sender_constraint: mtls,
                assertion_audience: Issuer,
                tls_suites: TlsSuites::Bcp195,
                system_roots: true,
                tls13_only: false,
            },
            Profile::UkOpenBanking => Defaults {
                client_auth: PrivateKeyJwt,
                sender_constraint: mtls,
                assertion_audience: TokenEndpoint,
                tls_suites: TlsSuites::Fapi1,
                system_roots: true,
                tls13_only: false,
            },
            Profile::Cdr => Defaults {
                client_auth: PrivateKeyJwt,
                sender_constraint: mtls,
                assertion_audience: TokenEndpoint,
                tls_suites: TlsSuites::Bcp195,
                system_roots: false,
                tls13_only: false,
            },
            Profile::Ib1 => Defaults {
                client_auth: TlsClientAuth,
                sender_constraint: mtls,
                assertion_audience: Issuer,
                tls_suites: TlsSuites::Bcp195,
                system_roots: true,
                tls13_only: true,
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one requirement fares against the server's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Met.
    Ok,
    /// Not said, or worth a look; nothing fails because of it.
    Warn,
    /// Not met: requests will fail until the configuration (or the server) changes.
    Fail,
}

/// One line of `fapi-host check`'s profile report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How it fares.
    pub level: Level,
    /// The requirement, as the line's label.
    pub what: &'static str,
    /// What was found, with the fix when it is not met.
    pub detail: String,
}

impl Finding {
    fn new(level: Level, what: &'static str, detail: String) -> Finding {
        Finding {
            level,
            what,
            detail,
        }
    }
}

/// A string array of the document, if it has one.
fn strings(doc: &Value, key: &str) -> Option<Vec<String>> {
    doc.get(key)?.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    })
}

/// The requirements of the chosen settings (`auth`), one by one, against the authorization
/// server's discovery document (`doc`, RFC 8414 / OIDD metadata): the client authentication
/// method, the assertion's signing algorithm (with `private_key_jwt`), DPoP's algorithm or
/// certificate-bound tokens, and the mTLS endpoint aliases. `key` is the algorithm of the key
/// that signs client assertions (used with `private_key_jwt` only; the client refuses at start a
/// key FAPI does not sign with, and an Ed25519 one under a profile that follows FAPI 1.0).
pub fn requirements(
    auth: &AuthSettings,
    key: Option<crate::jws::Alg>,
    doc: &Value,
) -> Vec<Finding> {
    use Level::*;
    let mut out = Vec::new();

    let method = auth.client_auth.name();
    const METHODS: &str = "token_endpoint_auth_methods_supported";
    out.push(match strings(doc, METHODS) {
        None => Finding::new(
            Warn,
            "auth method",
            format!(
                "the discovery document omits {METHODS}: whether the server accepts {method} is \
                 not said (the token request will tell)"
            ),
        ),
        Some(list) if list.iter().any(|m| m == method) => Finding::new(
            Ok,
            "auth method",
            format!("{method} is supported ({})", list.join(", ")),
        ),
        Some(list) => Finding::new(
            Fail,
            "auth method",
            format!(
                "`token_endpoint_auth_method` = \"{method}\" is not in the server's {METHODS} \
                 ({}): set it to one the server lists, or choose the `profile` of this server's \
                 ecosystem",
                list.join(", ")
            ),
        ),
    });

    if auth.client_auth == ClientAuth::PrivateKeyJwt {
        const ALGS: &str = "token_endpoint_auth_signing_alg_values_supported";
        let what = "assertion signing";
        out.push(match (key, strings(doc, ALGS)) {
            (None, _) => Finding::new(
                Warn,
                what,
                "the signing key's algorithm is not known (no assertion signer was built)".into(),
            ),
            (Some(alg), None) => Finding::new(
                Warn,
                what,
                format!(
                    "the key signs {alg}; the discovery document omits {ALGS}, so whether the \
                     server accepts it is not said (the token request will tell)"
                ),
            ),
            (Some(alg), Some(list)) if list.iter().any(|a| a == alg.name()) => Finding::new(
                Ok,
                what,
                format!(
                    "{alg} (the signing key's) is supported ({})",
                    list.join(", ")
                ),
            ),
            (Some(alg), Some(list)) => Finding::new(
                Fail,
                what,
                format!(
                    "the key signs {alg}, which is not in the server's {ALGS} ({}): give \
                     `signing_key` a key of an algorithm both FAPI (PS256, ES256, EdDSA; never \
                     RS256 or none) and the server allow",
                    list.join(", ")
                ),
            ),
        });
    }

    match auth.sender_constraint {
        SenderConstraint::Dpop => {
            const DPOP: &str = "dpop_signing_alg_values_supported";
            out.push(match strings(doc, DPOP) {
                Some(list) if list.iter().any(|a| a == "ES256") => Finding::new(
                    Ok,
                    "DPoP",
                    format!("ES256 proofs are supported ({})", list.join(", ")),
                ),
                Some(list) => Finding::new(
                    Fail,
                    "DPoP",
                    format!(
                        "the server's {DPOP} ({}) lacks ES256, the algorithm of this client's \
                         DPoP proofs: set `sender_constraint = \"mtls\"`",
                        list.join(", ")
                    ),
                ),
                None => Finding::new(
                    Fail,
                    "DPoP",
                    format!(
                        "the discovery document has no {DPOP} (RFC 9449 section 5.1): the server \
                         does not say it accepts DPoP; set `sender_constraint = \"mtls\"`"
                    ),
                ),
            });
        }
        SenderConstraint::Mtls => {
            const BOUND: &str = "tls_client_certificate_bound_access_tokens";
            out.push(match doc.get(BOUND).and_then(Value::as_bool) {
                Some(true) => Finding::new(
                    Ok,
                    "bound tokens",
                    format!("{BOUND} is true (RFC 8705 section 3.3)"),
                ),
                Some(false) => Finding::new(
                    Fail,
                    "bound tokens",
                    format!(
                        "{BOUND} is false: the server does not bind its tokens to the client \
                         certificate, which FAPI requires (RFC 8705 section 3); if it binds them \
                         to DPoP keys, set `sender_constraint = \"dpop\"`"
                    ),
                ),
                None => Finding::new(
                    Warn,
                    "bound tokens",
                    format!(
                        "the discovery document omits {BOUND}, which then means false (RFC 8705 \
                         section 3.3): the introspection of the token will say whether it is \
                         bound (`fapi-host introspect`, `cnf`)"
                    ),
                ),
            });
        }
    }

    let mtls_used = auth.client_auth == ClientAuth::TlsClientAuth
        || auth.sender_constraint == SenderConstraint::Mtls;
    if mtls_used {
        let aliases = doc.get("mtls_endpoint_aliases").and_then(Value::as_object);
        out.push(match aliases {
            Some(a) => {
                let names: Vec<&str> = a.keys().map(String::as_str).collect();
                Finding::new(
                    Ok,
                    "mTLS aliases",
                    format!("mtls_endpoint_aliases names {}", names.join(", ")),
                )
            }
            None => Finding::new(
                Warn,
                "mTLS aliases",
                "the discovery document has no mtls_endpoint_aliases: the token endpoint is \
                 called at its own address, which must then ask for the client certificate \
                 (RFC 8705 section 5)"
                    .into(),
            ),
        });
    }
    out
}

/// One configuration value's parse: the names it takes, each mapped to its variant; an unknown
/// name is an error that lists them.
fn choose<T: Copy>(key: &str, value: &str, table: &[(&str, T)]) -> Result<T> {
    table
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<String> = table.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            Error::Config(format!(
                "`{key}` = {value:?} is not one of {}",
                names.join(", ")
            ))
        })
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Profile> {
        let table: Vec<(&str, Profile)> = Profile::ALL.iter().map(|p| (p.name(), *p)).collect();
        choose("profile", s, &table)
    }
}

impl FromStr for ClientAuth {
    type Err = Error;
    fn from_str(s: &str) -> Result<ClientAuth> {
        choose(
            "token_endpoint_auth_method",
            s,
            &[
                ("tls_client_auth", ClientAuth::TlsClientAuth),
                ("private_key_jwt", ClientAuth::PrivateKeyJwt),
            ],
        )
    }
}

impl ClientAuth {
    /// The RFC 8414 / RFC 7591 name.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::TlsClientAuth => "tls_client_auth",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

impl FromStr for SenderConstraint {
    type Err = Error;
    fn from_str(s: &str) -> Result<SenderConstraint> {
        choose(
            "sender_constraint",
            s,
            &[
                ("mtls", SenderConstraint::Mtls),
                ("dpop", SenderConstraint::Dpop),
            ],
        )
    }
}

impl SenderConstraint {
    /// The configuration's name.
    pub fn name(self) -> &'static str {
        match self {
            SenderConstraint::Mtls => "mtls",
            SenderConstraint::Dpop => "dpop",
        }
    }
}

impl FromStr for AssertionAudience {
    type Err = Error;
    fn from_str(s: &str) -> Result<AssertionAudience> {
        choose(
            "client_assertion_audience",
            s,
            &[
                ("issuer", AssertionAudience::Issuer),
                ("token_endpoint", AssertionAudience::TokenEndpoint),
            ],
        )
    }
}

impl AssertionAudience {
    /// The configuration's name.
    pub fn name(self) -> &'static str {
        match self {
            AssertionAudience::Issuer => "issuer",
            AssertionAudience::TokenEndpoint => "token_endpoint",
        }
    }
}

impl FromStr for TlsSuites {
    type Err = Error;
    fn from_str(s: &str) -> Result<TlsSuites> {
        choose(
            "tls_cipher_suites",
            s,
            &[("bcp195", TlsSuites::Bcp195), ("fapi1", TlsSuites::Fapi1)],
        )
    }
}

impl TlsSuites {
    /// The configuration's name.
    pub fn name(self) -> &'static str {
        match self {
            TlsSuites::Bcp195 => "bcp195",
            TlsSuites::Fapi1 => "fapi1",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        let e = "open_energy".parse::<Profile>().unwrap_err().to_string();
        assert!(
            e.contains("\"open-energy\"") && e.contains("\"cdr\""),
            "{e}"
        );
        let e = "DPoP".parse::<SenderConstraint>().unwrap_err().to_string();
        assert!(
            e.contains("sender_constraint") && e.contains("\"dpop\""),
            "{e}"
        );
    }

    #[test]
    fn cdr_never_authenticates_with_mtls_and_uk_open_banking_aims_at_the_token_endpoint() {
        assert_eq!(
            Profile::Cdr.defaults().client_auth,
            ClientAuth::PrivateKeyJwt
        );
        assert!(!Profile::Cdr.defaults().system_roots);
        let ob = Profile::UkOpenBanking.defaults();
        assert_eq!(ob.assertion_audience, AssertionAudience::TokenEndpoint);
        assert_eq!(ob.tls_suites, TlsSuites::Fapi1);
        assert_eq!(Profile::default(), Profile::OpenEnergy);
        assert_eq!(
            Profile::OpenEnergy.defaults().client_auth,
            ClientAuth::TlsClientAuth
        );
    }

    #[test]
    fn ib1_is_tls_client_auth_over_tls13_only_and_needs_a_grant() {
        let d = Profile::Ib1.defaults();
        assert_eq!("ib1".parse::<Profile>().unwrap(), Profile::Ib1);
        assert_eq!(d.client_auth, ClientAuth::TlsClientAuth);
        assert_eq!(d.sender_constraint, SenderConstraint::Mtls);
        assert!(d.tls13_only);
        assert!(Profile::Ib1.needs_grant());
        for p in Profile::ALL.into_iter().filter(|p| *p != Profile::Ib1) {
            assert!(!p.defaults().tls13_only && !p.needs_grant(), "{p}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod requirement_tests {
    use super::*;
    use serde_json::json;

    fn auth(profile: Profile) -> AuthSettings {
        let d = profile.defaults();
        AuthSettings {
            client_auth: d.client_auth,
            assertion_audience: d.assertion_audience,
            signing_key: None,
            signing_certificate: None,
            signing_kid: None,
            sender_constraint: d.sender_constraint,
            dpop_key: None,
        }
    }

    fn levels(f: &[Finding]) -> Vec<(&'static str, Level)> {
        f.iter().map(|f| (f.what, f.level)).collect()
    }

    /// What the local federation's discovery document says.
    fn federation_like() -> Value {
        json!({
            "token_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["PS256", "ES256"],
            "tls_client_certificate_bound_access_tokens": true,
            "mtls_endpoint_aliases": {"token_endpoint": "https://as/token"},
        })
    }

    #[test]
    fn each_profile_is_held_against_the_metadata_line_by_line() {
        use Level::*;
        let es256 = Some(crate::jws::Alg::Es256);
        let doc = federation_like();
        let f = requirements(&auth(Profile::OpenEnergy), es256, &doc);
        assert_eq!(
            levels(&f),
            [
                ("auth method", Ok),
                ("bound tokens", Ok),
                ("mTLS aliases", Ok)
            ]
        );
        let f = requirements(&auth(Profile::UkOpenBanking), es256, &doc);
        assert_eq!(
            levels(&f),
            [
                ("auth method", Ok),
                ("assertion signing", Ok),
                ("bound tokens", Ok),
                ("mTLS aliases", Ok)
            ]
        );
        assert_eq!(
            f[1].detail,
            "ES256 (the signing key's) is supported (PS256, ES256)"
        );

        // An Ed25519 key against a server that takes PS256 and ES256: fails, with the fix.
        let ed = Some(crate::jws::Alg::EdDsa);
        let f = requirements(&auth(Profile::Fapi2), ed, &doc);
        assert_eq!(f[1].level, Fail);
        assert!(f[1].detail.contains("`signing_key`"), "{}", f[1].detail);
        let mut eddsa_too = doc.clone();
        eddsa_too["token_endpoint_auth_signing_alg_values_supported"] = json!(["EdDSA"]);
        let f = requirements(&auth(Profile::Fapi2), ed, &eddsa_too);
        assert_eq!(f[1].level, Ok);

        // A server without private_key_jwt, without bound tokens, without aliases.
        let bare = json!({
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": false,
        });
        let f = requirements(&auth(Profile::Fapi2), es256, &bare);
        assert_eq!(
            levels(&f),
            [
                ("auth method", Fail),
                ("assertion signing", Warn),
                ("bound tokens", Fail),
                ("mTLS aliases", Warn)
            ]
        );
        assert!(
            f[0].detail
                .contains("`token_endpoint_auth_method` = \"private_key_jwt\"")
        );

        // DPoP: ES256 among the server's algorithms, or a failure that says what to set.
        let mut dpop = auth(Profile::Fapi2);
        dpop.sender_constraint = SenderConstraint::Dpop;
        let f = requirements(&dpop, es256, &doc);
        assert_eq!(levels(&f)[2], ("DPoP", Fail));
        assert!(f[2].detail.contains("`sender_constraint = \"mtls\"`"));
        let mut with_dpop = doc.clone();
        with_dpop["dpop_signing_alg_values_supported"] = json!(["ES256", "PS256"]);
        let f = requirements(&dpop, es256, &with_dpop);
        assert_eq!(levels(&f)[2], ("DPoP", Ok));
        // No mTLS at all: no aliases line.
        assert_eq!(f.len(), 3, "{f:?}");
    }
}
