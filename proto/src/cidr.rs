//! Client networks written as CIDR blocks (`10.12.0.0/16`, `2001:db8::/32`), as
//! operators list them in configuration: regions on the coordinator, trusted
//! networks with larger shares on both daemons.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a CIDR block did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/` between address and prefix length.
    #[error("{0:?} is not ADDRESS/PREFIX")]
    NoPrefix(String),
    /// The address part is not an IP address.
    #[error("{0:?}: bad address")]
    BadAddress(String),
    /// The prefix length is not a number, or too long for the address family.
    #[error("{0:?}: bad prefix length (at most 32 for IPv4, 128 for IPv6)")]
    BadPrefix(String),
}

impl Cidr {
    /// The network of the first `v4_len` (IPv4) or `v6_len` (IPv6) bits of
    /// `ip`: a client's network, as the daemons count clients. IPv4-mapped IPv6
    /// addresses count as IPv4; lengths past the address's are clamped.
    pub fn enclosing(ip: IpAddr, v4_len: u8, v6_len: u8) -> Self {
        match unmapped(ip) {
            IpAddr::V4(v4) => {
                let prefix = v4_len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: IpAddr::V4((u32::from(v4) & mask).into()),
                    prefix,
                }
            }
            IpAddr::V6(v6) => {
                let prefix = v6_len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    network: IpAddr::V6((u128::from(v6) & mask).into()),
                    prefix,
                }
            }
        }
    }

    /// Whether `ip` is in this network; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        ip.is_ipv4() == self.network.is_ipv4()
            && Self::enclosing(ip, self.prefix, self.prefix).network
                == Self::enclosing(self.network, self.prefix, self.prefix).network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries; others unchanged.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let (ip, prefix) = text
            .split_once('/')
            .ok_or_else(|| CidrError::NoPrefix(text.to_owned()))?;
        let network: IpAddr = ip
            .parse()
            .ok()
            // An IPv4-mapped network would never match: clients count as IPv4.
            .filter(|ip| unmapped(*ip) == *ip)
            .ok_or_else(|| CidrError::BadAddress(text.to_owned()))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| CidrError::BadPrefix(text.to_owned()))?;
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net: Cidr = "10.12.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.12.200.1")));
        assert!(!net.contains(ip("10.13.0.1")));
        assert!(net.contains(ip("::ffff:10.12.0.9")), "IPv4-mapped counts");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(!v6.contains(ip("10.12.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
    }

    #[test]
    fn a_client_network_is_its_addresss_first_bits() {
        let v4 = Cidr::enclosing(ip("192.0.2.77"), 24, 56);
        assert_eq!(v4.to_string(), "192.0.2.0/24");
        assert_eq!(v4, Cidr::enclosing(ip("::ffff:192.0.2.1"), 24, 56));
        let v6 = Cidr::enclosing(ip("2001:db8:0:ab:1::9"), 24, 56);
        assert_eq!(v6.to_string(), "2001:db8::/56");
        assert!(v6.contains(ip("2001:db8:0:ff::1")));
        assert_eq!(Cidr::enclosing(ip("10.1.2.3"), 40, 200).prefix_len(), 32);
    }

    #[test]
    fn malformed_blocks_say_what_is_wrong() {
        assert!(matches!(
            "10.0.0.0".parse::<Cidr>(),
            Err(CidrError::NoPrefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
    }
}
