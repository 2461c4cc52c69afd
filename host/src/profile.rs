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

use std::fmt;
use std::str::FromStr;

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
