//! What a membership change may name: node ids, addresses, ports and the
//! size of the cluster, as the operator allows them in the node's
//! `[membership]` settings. A pure decision over plain data, made on the
//! node that receives `add-node` (before anything is forwarded or dialled),
//! again on the leader that carries it out, and against a node's own id and
//! address when it starts. A refusal names the setting that refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// The largest node id by default: the largest integer a JSON number (and
/// so every JSON client of `cluster status --json`) holds exactly.
const NODE_ID_MAX_DEFAULT: NodeId = (1 << 53) - 1;
/// The most members (voters and learners) by default. Raft's writes wait
/// for a majority, so past seven voters a cluster only gets slower; two
/// more leave room for learners catching up.
const MEMBERS_MAX_DEFAULT: u64 = 9;
/// The most members any setting allows: every member is sent every entry
/// by the leader.
const MEMBERS_MAX_LIMIT: u64 = 99;

/// The node ids, addresses and cluster sizes membership changes may use.
/// The defaults accept any sane LAN or cloud layout and refuse what is
/// never a node: link-local addresses (where a cloud's metadata service
/// answers, 169.254.169.254), unspecified, multicast and broadcast ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipRules {
    /// The smallest node id accepted (0 is Raft's "no node": at least 1).
    pub node_id_min: NodeId,
    /// The largest node id accepted.
    pub node_id_max: NodeId,
    /// The lowest port a member may listen on (e.g. 1024: no privileged ports).
    pub port_min: u16,
    /// The highest port a member may listen on.
    pub port_max: u16,
    /// The most members, voters and learners, the cluster may have.
    pub members_max: u64,
    /// Members on the loopback network (127.0.0.0/8, ::1): one machine.
    pub allow_loopback: bool,
    /// Members on private networks (10/8, 172.16/12, 192.168/16, the
    /// carrier-grade 100.64/10, IPv6 unique-local fc00::/7).
    pub allow_private: bool,
    /// Members on public addresses (every other unicast address).
    pub allow_public: bool,
    /// Members on link-local addresses (169.254/16, fe80::/10). Off by
    /// default: a cloud's metadata service answers there.
    pub allow_link_local: bool,
    /// Members named by a host name, which DNS resolves when dialled (and
    /// may resolve anywhere, whatever the address rules above say).
    pub allow_hostnames: bool,
}

impl Default for MembershipRules {
    fn default() -> Self {
        Self {
            node_id_min: 1,
            node_id_max: NODE_ID_MAX_DEFAULT,
            port_min: 1,
            port_max: u16::MAX,
            members_max: MEMBERS_MAX_DEFAULT,
            allow_loopback: true,
            allow_private: true,
            allow_public: true,
            allow_link_local: false,
            allow_hostnames: true,
        }
    }
}

/// A refusal by one of the rules, named by its setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RuleRefusal {
    /// The field of [`MembershipRules`] that refused; `None` for what no
    /// setting allows (an address that is never a node's).
    pub setting: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for RuleRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.setting {
            Some(setting) => write!(f, "{} (setting `membership.{setting}`)", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn refuse(setting: &str, reason: impl Into<String>) -> RuleRefusal {
    RuleRefusal {
        setting: Some(setting.to_owned()),
        reason: reason.into(),
    }
}

/// The kinds of address the rules tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddressClass {
    Loopback,
    Private,
    LinkLocal,
    Public,
    Hostname,
    /// Never a node's address: unspecified, multicast, broadcast.
    Never(&'static str),
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    if ip.is_unspecified() {
        AddressClass::Never("the unspecified address (it names no machine to dial)")
    } else if ip.is_broadcast() {
        AddressClass::Never("the broadcast address")
    } else if ip.is_multicast() {
        AddressClass::Never("a multicast address")
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        AddressClass::Never("the unspecified address (it names no machine to dial)")
    } else if ip.is_multicast() {
        AddressClass::Never("a multicast address")
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else {
        AddressClass::Public
    }
}

fn classify(host: &str) -> AddressClass {
    let bare = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => classify_v4(ip),
        Ok(IpAddr::V6(ip)) => classify_v6(ip),
        Err(_) => AddressClass::Hostname,
    }
}

impl MembershipRules {
    /// Why these rules cannot be used, naming the field, or `Ok`.
    pub fn validate(&self) -> Result<(), RuleRefusal> {
        if self.node_id_min == 0 {
            return Err(refuse(
                "node_id_min",
                "0 is Raft's \"no node\" and cannot be an id; use 1 or more",
            ));
        }
        if self.node_id_min > self.node_id_max {
            return Err(refuse(
                "node_id_max",
                format!(
                    "{} is below node_id_min ({})",
                    self.node_id_max, self.node_id_min
                ),
            ));
        }
        if self.port_min == 0 {
            return Err(refuse(
                "port_min",
                "port 0 cannot be dialled; use 1 or more",
            ));
        }
        if self.port_min > self.port_max {
            return Err(refuse(
                "port_max",
                format!("{} is below port_min ({})", self.port_max, self.port_min),
            ));
        }
        if !(1..=MEMBERS_MAX_LIMIT).contains(&self.members_max) {
            return Err(refuse(
                "members_max",
                format!("{} is outside 1..={MEMBERS_MAX_LIMIT}", self.members_max),
            ));
        }
        if !(self.allow_loopback
            || self.allow_private
            || self.allow_public
            || self.allow_link_local
            || self.allow_hostnames)
        {
            return Err(refuse(
                "allow_public",
                "every kind of address is refused, so no node could ever be added; allow at least one",
            ));
        }
        Ok(())
    }

    /// Whether `id` may be a member's id.
    pub fn check_id(&self, id: NodeId) -> Result<(), RuleRefusal> {
        if id < self.node_id_min {
            return Err(refuse(
                "node_id_min",
                format!("node id {id} is below {}", self.node_id_min),
            ));
        }
        if id > self.node_id_max {
            return Err(refuse(
                "node_id_max",
                format!("node id {id} is above {}", self.node_id_max),
            ));
        }
        Ok(())
    }

    /// Whether a member may be dialled at `url`, an address as
    /// `parse_peer_address` writes it (`scheme://host:port`).
    pub fn check_address(&self, url: &str) -> Result<(), RuleRefusal> {
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err(refuse("port_min", format!("`{url}` has no port")));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| refuse("port_min", format!("`{port}` is not a port number")))?;
        if port < self.port_min {
            return Err(refuse(
                "port_min",
                format!("port {port} is below {}", self.port_min),
            ));
        }
        if port > self.port_max {
            return Err(refuse(
                "port_max",
                format!("port {port} is above {}", self.port_max),
            ));
        }
        let (allowed, setting, kind) = match classify(host) {
            AddressClass::Never(what) => {
                return Err(RuleRefusal {
                    setting: None,
                    reason: format!("{host} is {what}, never a node's address"),
                });
            }
            AddressClass::Loopback => (self.allow_loopback, "allow_loopback", "a loopback"),
            AddressClass::Private => (self.allow_private, "allow_private", "a private"),
            AddressClass::LinkLocal => (self.allow_link_local, "allow_link_local", "a link-local"),
            AddressClass::Public => (self.allow_public, "allow_public", "a public"),
            AddressClass::Hostname => (
                self.allow_hostnames,
                "allow_hostnames",
                "a host name, not an",
            ),
        };
        if !allowed {
            return Err(refuse(
                setting,
                format!(
                    "{host} is {kind} address, which this cluster does not accept for a member"
                ),
            ));
        }
        Ok(())
    }

    /// Whether a cluster of `members` members may take one more.
    pub fn check_growth(&self, members: usize) -> Result<(), RuleRefusal> {
        let members = u64::try_from(members).unwrap_or(u64::MAX);
        if members >= self.members_max {
            return Err(refuse(
                "members_max",
                format!(
                    "the cluster has {members} members, the most it may have is {}; remove one first",
                    self.members_max
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        MembershipRules::default().validate().unwrap();
    }

    #[test]
    fn bad_rules_name_their_field() {
        let rows: Vec<(MembershipRules, &str)> = vec![
            (
                MembershipRules {
                    node_id_min: 0,
                    ..Default::default()
                },
                "node_id_min",
            ),
            (
                MembershipRules {
                    node_id_min: 10,
                    node_id_max: 5,
                    ..Default::default()
                },
                "node_id_max",
            ),
            (
                MembershipRules {
                    port_min: 0,
                    ..Default::default()
                },
                "port_min",
            ),
            (
                MembershipRules {
                    port_min: 9000,
                    port_max: 8000,
                    ..Default::default()
                },
                "port_max",
            ),
            (
                MembershipRules {
                    members_max: 0,
                    ..Default::default()
                },
                "members_max",
            ),
            (
                MembershipRules {
                    allow_loopback: false,
                    allow_private: false,
                    allow_public: false,
                    allow_hostnames: false,
                    ..Default::default()
                },
                "allow_public",
            ),
        ];
        for (rules, field) in rows {
            let refusal = rules.validate().unwrap_err();
            assert_eq!(refusal.setting.as_deref(), Some(field), "{rules:?}");
        }
    }

    /// Each address against the defaults and against strict rules (private
    /// networks only, ports 7000-7999), with the setting that refuses it.
    #[test]
    fn addresses_are_checked_by_their_kind() {
        let strict = MembershipRules {
            port_min: 7000,
            port_max: 7999,
            allow_loopback: false,
            allow_public: false,
            allow_hostnames: false,
            ..Default::default()
        };
        let rows: &[(&str, Option<&str>, Option<&str>)] = &[
            ("http://127.0.0.1:7000", None, Some("allow_loopback")),
            ("http://[::1]:7000", None, Some("allow_loopback")),
            ("http://10.1.2.3:7000", None, None),
            ("http://172.20.0.1:7000", None, None),
            ("http://192.168.1.9:7999", None, None),
            ("http://100.64.0.1:7000", None, None),
            ("http://[fd00::1]:7000", None, None),
            ("http://8.8.8.8:7000", None, Some("allow_public")),
            ("http://[2001:db8::1]:7000", None, Some("allow_public")),
            ("http://172.32.0.1:7000", None, Some("allow_public")),
            ("http://node-1.internal:7000", None, Some("allow_hostnames")),
            (
                "http://169.254.169.254:80",
                Some("allow_link_local"),
                Some("port_min"),
            ),
            (
                "http://169.254.169.254:7000",
                Some("allow_link_local"),
                Some("allow_link_local"),
            ),
            (
                "http://[fe80::1]:7000",
                Some("allow_link_local"),
                Some("allow_link_local"),
            ),
            (
                "http://[::ffff:169.254.1.1]:7000",
                Some("allow_link_local"),
                Some("allow_link_local"),
            ),
            ("http://0.0.0.0:7000", Some("-"), Some("-")),
            ("http://[::]:7000", Some("-"), Some("-")),
            ("http://224.0.0.1:7000", Some("-"), Some("-")),
            ("http://255.255.255.255:7000", Some("-"), Some("-")),
            ("http://10.0.0.1:8000", None, Some("port_max")),
            ("https://10.0.0.1:443", None, Some("port_min")),
        ];
        for &(url, by_default, by_strict) in rows {
            for (rules, expected) in [
                (&MembershipRules::default(), by_default),
                (&strict, by_strict),
            ] {
                // "-": refused by no setting, whatever the rules say.
                let got = rules
                    .check_address(url)
                    .err()
                    .map(|refusal| refusal.setting.unwrap_or_else(|| "-".to_owned()));
                assert_eq!(got.as_deref(), expected, "{url} under {rules:?}");
            }
        }
        let refusal = strict.check_address("http://8.8.8.8:7000").unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "8.8.8.8 is a public address, which this cluster does not accept for a member (setting `membership.allow_public`)"
        );
    }

    #[test]
    fn ids_and_sizes_are_bounded() {
        let rules = MembershipRules {
            node_id_min: 10,
            node_id_max: 20,
            members_max: 3,
            ..Default::default()
        };
        let setting = |id| rules.check_id(id).unwrap_err().setting.unwrap();
        assert_eq!(setting(9), "node_id_min");
        assert_eq!(setting(21), "node_id_max");
        rules.check_id(10).unwrap();
        rules.check_id(20).unwrap();
        rules.check_growth(2).unwrap();
        let refusal = rules.check_growth(3).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "the cluster has 3 members, the most it may have is 3; remove one first (setting `membership.members_max`)"
        );
        assert_eq!(
            MembershipRules::default()
                .check_id(1 << 53)
                .unwrap_err()
                .to_string(),
            "node id 9007199254740992 is above 9007199254740991 (setting `membership.node_id_max`)"
        );
    }
}
