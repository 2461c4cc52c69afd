//! Name resolution for the client, and the guard that keeps guests off the authorization server
//! at the address level.
//!
//! A guest's URL names a host; what it reaches is an address and a port. The egress policy
//! compares names (and IP addresses written in URLs); this module makes the same promise hold
//! for the address a connection really goes to:
//!
//! - At start, the host resolves the issuer's and every discovered endpoint's host into
//!   [`AuthorizationServerAddresses`]. An address that is this machine's own (loopback,
//!   unspecified `0.0.0.0` / `::`, an interface address) stands for all of them: a server bound
//!   to `0.0.0.0` answers on each.
//! - Guest requests go out through clients whose [`Resolver`] knows the port they connect to and
//!   refuses a name that resolves to one of those (address, port) pairs, when the connection is
//!   made: a name that resolved elsewhere at start (DNS rebinding, a changed record) is checked
//!   again each time. IP addresses in URLs skip resolution; the policy compares them.
//! - `[client.resolve]` (a hosts-file style table of names and addresses) is consulted before
//!   the system resolver, by every client of the host.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::error::{Error, Result};

/// Names and the addresses they resolve to, before the system resolver is asked
/// (`[client.resolve]`): a hosts-file style table, shared by every client made from the same
/// options and read at each lookup, so that a program may change it while the host runs. A name
/// listed with no address has none (the system resolver is not asked).
#[derive(Clone, Debug, Default)]
pub struct ResolveOverrides(Arc<RwLock<BTreeMap<String, Vec<IpAddr>>>>);

impl ResolveOverrides {
    /// An empty table.
    pub fn new() -> ResolveOverrides {
        ResolveOverrides::default()
    }

    /// Resolve `name` (any case, a trailing dot or not) to `addresses` from now on.
    pub fn insert(&self, name: &str, addresses: Vec<IpAddr>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(normal_name(name), addresses);
    }

    /// The addresses listed for `name`, if it is listed.
    pub fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&normal_name(name))
            .cloned()
    }

    /// Whether no name is listed.
    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

impl PartialEq for ResolveOverrides {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || *self.0.read().unwrap_or_else(|p| p.into_inner())
                == *other.0.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Eq for ResolveOverrides {}

/// A name normalised as the policy normalises hosts: lower case, no trailing dot.
fn normal_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether `name` is `localhost` or under it, which resolves to loopback (RFC 6761 section 6.3).
fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// The authorization server's addresses and ports, resolved once at start.
#[derive(Clone, Debug, Default)]
pub struct AuthorizationServerAddresses {
    /// (address, port, the URL it came from).
    exact: Vec<(IpAddr, u16, String)>,
    /// Ports on which the authorization server listens at one of this machine's addresses, with
    /// the URL: every local address is refused on them.
    local_ports: Vec<(u16, String)>,
    /// This machine's interface addresses (besides loopback and unspecified).
    local: Vec<IpAddr>,
    /// The `[client.resolve]` table, for answers that need no lookup.
    overrides: ResolveOverrides,
}

impl AuthorizationServerAddresses {
    /// Resolve every authorization server URL's host (with `resolver`'s table first). A host that
    /// cannot be resolved is returned by name in the second list: its name is still refused by
    /// the policy, and the caller says so.
    pub async fn resolve(
        urls: &[url::Url],
        resolver: &Resolver,
    ) -> (AuthorizationServerAddresses, Vec<String>) {
        let mut out = AuthorizationServerAddresses {
            local: interface_addresses(),
            overrides: resolver.overrides.clone(),
            ..AuthorizationServerAddresses::default()
        };
        let mut unresolved = Vec::new();
        for url in urls {
            let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
                continue;
            };
            let ips = match host {
                url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
                url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
                url::Host::Domain(name) => match resolver.lookup(name).await {
                    Ok(ips) => ips,
                    Err(e) => {
                        unresolved.push(format!("{name} ({e})"));
                        continue;
                    }
                },
            };
            for ip in ips {
                out.add(ip, port, url.as_str());
            }
        }
        (out, unresolved)
    }

    /// Record one address of the authorization server.
    pub fn add(&mut self, ip: IpAddr, port: u16, source: &str) {
        let ip = ip.to_canonical();
        if self.is_local(ip) {
            if !self.local_ports.iter().any(|(p, _)| *p == port) {
                self.local_ports.push((port, source.to_owned()));
            }
        } else if !self.exact.iter().any(|(i, p, _)| *i == ip && *p == port) {
            self.exact.push((ip, port, source.to_owned()));
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.local.contains(&ip)
    }

    /// The authorization server URL whose address and port `ip:port` is, if it is one.
    pub fn blocks(&self, ip: IpAddr, port: u16) -> Option<&str> {
        let ip = ip.to_canonical();
        if self.is_local(ip) {
            return self
                .local_ports
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, s)| s.as_str());
        }
        self.exact
            .iter()
            .find(|(i, p, _)| *i == ip && *p == port)
            .map(|(_, _, s)| s.as_str())
    }

    /// Whether the authorization server listens on `port` at any of its addresses.
    pub fn has_port(&self, port: u16) -> bool {
        self.local_ports.iter().any(|(p, _)| *p == port)
            || self.exact.iter().any(|(_, p, _)| *p == port)
    }

    /// Where `name` goes, when that is known without asking a resolver: `[client.resolve]`,
    /// or loopback for `localhost` names.
    pub fn known_without_lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        if let Some(ips) = self.overrides.get(name) {
            return Some(ips);
        }
        is_localhost(&normal_name(name)).then(|| vec![IpAddr::from([127, 0, 0, 1])])
    }
}

/// This machine's interface addresses; none when they cannot be listed (loopback and the
/// unspecified addresses are local whatever this returns).
fn interface_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| i.ip().to_canonical()).collect(),
        Err(e) => {
            tracing::debug!("cannot list this machine's interface addresses: {e}");
            Vec::new()
        }
    }
}

/// A connection refused because its name resolved to an address and port of the authorization
/// server. Found in a failed request's error chain, it becomes [`Error::Denied`].
#[derive(Debug)]
pub struct AddressDenied(pub String);

impl fmt::Display for AddressDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressDenied {}

/// What a guest client checks when it resolves a name: the port it connects to, the
/// authorization server's addresses, and the names declared as sharing one with it.
#[derive(Clone, Debug)]
struct PortGuard {
    port: u16,
    addresses: Arc<AuthorizationServerAddresses>,
    shared: Arc<Vec<String>>,
}

/// The resolver of the host's HTTP clients: `[client.resolve]` first, then the system's
/// resolver; for guest clients, the authorization server's addresses refused on their port.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    overrides: ResolveOverrides,
    guard: Option<PortGuard>,
}

impl Resolver {
    /// A resolver with this table of names (shared, not copied).
    pub fn new(overrides: ResolveOverrides) -> Resolver {
        Resolver {
            overrides,
            guard: None,
        }
    }

    /// This resolver for connections to `port` made for guests: a name that resolves to one of
    /// `addresses` on that port is refused, unless it is one of `shared`.
    pub fn guarding(
        &self,
        port: u16,
        addresses: Arc<AuthorizationServerAddresses>,
        shared: Arc<Vec<String>>,
    ) -> Resolver {
        Resolver {
            overrides: self.overrides.clone(),
            guard: Some(PortGuard {
                port,
                addresses,
                shared,
            }),
        }
    }

    /// The addresses of `name`: the table's, else the system resolver's.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>> {
        let name = normal_name(name);
        if let Some(ips) = self.overrides.get(&name) {
            if ips.is_empty() {
                return Err(Error::Network(format!(
                    "{name} has no address ([client.resolve] lists none)"
                )));
            }
            return Ok(ips);
        }
        // Localhost names are loopback without asking anyone (RFC 6761 section 6.3), as the
        // policy takes them to be.
        if is_localhost(&name) {
            return Ok(vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ]);
        }
        let found = tokio::net::lookup_host((name.as_str(), 0))
            .await
            .map_err(|e| Error::Network(format!("cannot resolve {name}: {e}")))?;
        let ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        if ips.is_empty() {
            return Err(Error::Network(format!("{name} has no address")));
        }
        Ok(ips)
    }

    /// The first of `ips` that is the authorization server's on the guarded port, with the URL
    /// it belongs to.
    fn refused(&self, name: &str, ips: &[IpAddr]) -> Option<String> {
        let guard = self.guard.as_ref()?;
        if guard.shared.iter().any(|s| s == name) {
            return None;
        }
        ips.iter().find_map(|ip| {
            guard.addresses.blocks(*ip, guard.port).map(|url| {
                format!(
                    "{name}:{port} resolves to {}, an address of the authorization server ({}); \
                     guests may never reach it, under any name",
                    SocketAddr::new(*ip, guard.port),
                    crate::policy::shown_url(url),
                    port = guard.port,
                )
            })
        })
    }
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let name = normal_name(name.as_str());
        Box::pin(async move {
            let ips = this.lookup(&name).await.map_err(Box::new)?;
            if let Some(why) = this.refused(&name, &ips) {
                return Err(
                    Box::new(AddressDenied(why)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn name(s: &str) -> Name {
        s.parse().expect("a name")
    }

    #[test]
    fn local_addresses_stand_for_each_other() {
        let mut a = AuthorizationServerAddresses::default();
        a.add(ip("127.0.0.1"), 9443, "https://127.0.0.1:9443/");
        a.add(ip("203.0.113.7"), 443, "https://as.example/");
        for (addr, port) in [
            ("127.0.0.1", 9443),
            ("127.0.0.2", 9443),
            ("0.0.0.0", 9443),
            ("::1", 9443),
            ("::", 9443),
            ("::ffff:127.0.0.1", 9443),
            ("203.0.113.7", 443),
            ("::ffff:203.0.113.7", 443),
        ] {
            assert!(a.blocks(ip(addr), port).is_some(), "{addr}:{port}");
        }
        for (addr, port) in [
            ("127.0.0.1", 8443),
            ("203.0.113.7", 8443),
            ("203.0.113.8", 443),
        ] {
            assert!(a.blocks(ip(addr), port).is_none(), "{addr}:{port}");
        }
        assert!(a.has_port(9443) && a.has_port(443) && !a.has_port(8443));
    }

    #[tokio::test]
    async fn a_guarded_resolver_refuses_the_authorization_server_on_its_port() {
        let table = ResolveOverrides::new();
        table.insert("AS-Alias.test.", vec![ip("127.0.0.1")]);
        table.insert("data.test", vec![ip("127.0.0.1")]);
        let resolver = Resolver::new(table);
        let mut a = AuthorizationServerAddresses::default();
        a.add(ip("127.0.0.1"), 9443, "https://127.0.0.1:9443/");
        let a = Arc::new(a);
        let on_as_port = resolver.guarding(9443, a.clone(), Arc::new(vec!["data.test".into()]));
        let err = on_as_port
            .resolve(name("as-alias.test"))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("127.0.0.1:9443"), "{err}");
        assert!(err.downcast_ref::<AddressDenied>().is_some());
        // A name declared as sharing the address, and another port, go through.
        assert!(on_as_port.resolve(name("data.test")).await.is_ok());
        let other_port = resolver.guarding(8443, a, Arc::new(Vec::new()));
        assert!(other_port.resolve(name("as-alias.test")).await.is_ok());
    }
}
