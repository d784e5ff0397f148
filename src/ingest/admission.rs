//! Admission: the connection limits no single shard can enforce alone, kept by the ingest core.
//!
//! `connections_max`, `connections_per_ip_max`, `tenant_connections_max` and
//! `connections_per_user_max` count connections over every shard, and nothing but the queues is shared between cores, so a shard asks the
//! ingest core for a place before it answers an upgrade ([`crate::msg::ToIngest::Admit`]) and
//! gives it back when the connection ends (`Leave`). This table is the ingest core's side: pure
//! counting, no sockets, no waiting. A shard asks only when some limit applies to the
//! connection, so a server with none set pays nothing per connect; a tenant's connections
//! always ask, which keeps the per-tenant gauges of `/v1/stats` and `/metrics` whole.

use std::net::IpAddr;

use hashbrown::HashMap;

use crate::config::Config;
use crate::msg::{Peer, Refused};

/// The admitted connections, counted four ways (a user only under `connections_per_user_max`). Entries that reach zero are removed, so the
/// maps hold only addresses and tenants with live connections.
#[derive(Debug, Default)]
pub struct Admission {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    by_tenant: HashMap<Box<str>, usize>,
    by_user: HashMap<Box<str>, usize>,
}

impl Admission {
    /// Counts `peer` in, unless a limit of `config` refuses it.
    pub fn admit(&mut self, config: &Config, peer: &Peer) -> Result<(), Refused> {
        let over = |max: usize, count: usize| max > 0 && count >= max;
        if over(config.connections_max, self.total) {
            return Err(Refused::Total(config.connections_max));
        }
        if over(
            config.connections_per_ip_max,
            self.by_ip.get(&peer.ip).copied().unwrap_or(0),
        ) {
            return Err(Refused::Ip(config.connections_per_ip_max));
        }
        if let Some(tenant) = &peer.tenant {
            let held = self.by_tenant.get(tenant).copied().unwrap_or(0);
            if over(config.tenant_connections_max, held) {
                return Err(Refused::Tenant(config.tenant_connections_max));
            }
        }
        if let Some(user) = &peer.user {
            let held = self.by_user.get(user).copied().unwrap_or(0);
            if over(config.connections_per_user_max, held) {
                return Err(Refused::User(config.connections_per_user_max));
            }
            *self.by_user.entry(user.clone()).or_default() += 1;
        }
        if let Some(tenant) = &peer.tenant {
            *self.by_tenant.entry(tenant.clone()).or_default() += 1;
        }
        self.total += 1;
        *self.by_ip.entry(peer.ip).or_default() += 1;
        Ok(())
    }

    /// Counts an admitted `peer` out.
    pub fn leave(&mut self, peer: &Peer) {
        assert!(self.total > 0, "a leave follows its admit");
        self.total -= 1;
        decrement(&mut self.by_ip, &peer.ip);
        if let Some(tenant) = &peer.tenant {
            decrement(&mut self.by_tenant, tenant);
        }
        if let Some(user) = &peer.user {
            decrement(&mut self.by_user, user);
        }
    }

    /// Live connections per tenant, sorted by tenant.
    pub fn tenants(&self) -> Vec<(Box<str>, usize)> {
        let mut tenants: Vec<_> = self
            .by_tenant
            .iter()
            .map(|(tenant, count)| (tenant.clone(), *count))
            .collect();
        tenants.sort();
        tenants
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    let count = counts
        .get_mut(key)
        .expect("a leave follows its admit, for the same peer");
    *count -= 1;
    if *count == 0 {
        counts.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, tenant: Option<&str>) -> Peer {
        Peer::new(ip.parse().unwrap(), tenant.map(Box::from), None)
    }

    #[test]
    fn each_limit_refuses_at_its_count_and_a_leave_makes_room() {
        let config = Config {
            connections_max: 3,
            connections_per_ip_max: 2,
            tenant_connections_max: 1,
            ..Config::default()
        };
        let mut table = Admission::default();
        let a = peer("10.0.0.1", Some("acme"));
        table.admit(&config, &a).unwrap();
        assert_eq!(
            table.admit(&config, &peer("10.0.0.2", Some("acme"))),
            Err(Refused::Tenant(1))
        );
        let b = peer("10.0.0.1", None);
        table.admit(&config, &b).unwrap();
        assert_eq!(
            table.admit(&config, &peer("10.0.0.1", Some("globex"))),
            Err(Refused::Ip(2))
        );
        table.admit(&config, &peer("10.0.0.3", None)).unwrap();
        assert_eq!(
            table.admit(&config, &peer("10.0.0.4", None)),
            Err(Refused::Total(3))
        );
        assert_eq!(table.tenants(), vec![("acme".into(), 1)]);
        table.leave(&a);
        assert!(table.tenants().is_empty(), "empty entries are removed");
        table
            .admit(&config, &peer("10.0.0.5", Some("acme")))
            .unwrap();
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            peer("2001:db8:1:2:aaaa::1", None),
            peer("2001:db8:1:2:bbbb::9", None)
        );
        assert_ne!(peer("2001:db8:1:2::1", None), peer("2001:db8:1:3::1", None));
        assert_eq!(peer("::ffff:10.0.0.1", None), peer("10.0.0.1", None));
    }

    #[test]
    fn no_limit_set_admits_everyone() {
        let config = Config::default();
        let mut table = Admission::default();
        for _ in 0..1_000 {
            table
                .admit(&config, &peer("10.0.0.1", Some("acme")))
                .unwrap();
        }
        assert!(!config.admission_needed(None, true));
        assert!(config.admission_needed(Some("acme"), false));
    }

    #[test]
    fn a_user_past_its_limit_is_refused_and_its_leave_makes_room() {
        let config = Config {
            connections_per_user_max: 2,
            ..Config::default()
        };
        assert!(config.admission_needed(None, true) && !config.admission_needed(None, false));
        let mut table = Admission::default();
        let ada = |ip: &str| Peer::new(ip.parse().unwrap(), None, Some("$user.ada".into()));
        table.admit(&config, &ada("10.0.0.1")).unwrap();
        table.admit(&config, &ada("10.0.0.2")).unwrap();
        let refused = table.admit(&config, &ada("10.0.0.3")).unwrap_err();
        assert_eq!(refused, Refused::User(2));
        assert_eq!(refused.code(), "user_connection_limit");
        assert_eq!(refused.status(), http::StatusCode::TOO_MANY_REQUESTS);
        let bob = Peer::new("10.0.0.3".parse().unwrap(), None, Some("$user.bob".into()));
        table.admit(&config, &bob).unwrap();
        table.leave(&ada("10.0.0.1"));
        table.admit(&config, &ada("10.0.0.3")).unwrap();
        assert_eq!(table.total, 3);
    }
}
