//! IPv4 networks in CIDR notation: the cluster's container range and each board's subnet.

use std::net::Ipv4Addr;

/// An IPv4 network such as `198.19.1.0/24` (the address is masked to the network).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

/// Why a CIDR is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: expected an IPv4 CIDR such as 198.19.1.0/24 (prefix 8 to 30)")]
pub struct CidrError(pub String);

impl Cidr {
    /// Parses `198.19.1.7/24` (masking host bits: `198.19.1.0/24`).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(text.to_string());
        let (ip, len) = text.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(ip) & Self::mask(prefix_len)),
            prefix_len,
        })
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX << (32 - u32::from(prefix_len))
    }

    /// The first host address: a board's bridge (the containers' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Host addresses after the gateway, before broadcast: the containers' addresses.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - u32::from(self.prefix_len));
        (2..size - 1).map(move |i| Ipv4Addr::from(base + i))
    }

    /// True when `ip` is inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix_len) == u32::from(self.network)
    }

    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let m = Self::mask(shorter);
        u32::from(self.network) & m == u32::from(other.network) & m
    }

    /// The sub-networks of length `prefix_len` inside this one, in order.
    pub fn subnets(&self, prefix_len: u8) -> impl Iterator<Item = Cidr> {
        let base = u32::from(self.network);
        let count = if prefix_len >= self.prefix_len && prefix_len <= 30 {
            1u32 << (prefix_len - self.prefix_len)
        } else {
            0
        };
        let step = 1u32 << (32 - u32::from(prefix_len.min(30)));
        (0..count).map(move |i| Cidr {
            network: Ipv4Addr::from(base + i * step),
            prefix_len,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masks_and_iterates() {
        let c = Cidr::parse("198.19.1.7/24").unwrap();
        assert_eq!(c.to_string(), "198.19.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(198, 19, 1, 1));
        assert_eq!(c.hosts().next(), Some(Ipv4Addr::new(198, 19, 1, 2)));
        assert_eq!(c.hosts().last(), Some(Ipv4Addr::new(198, 19, 1, 254)));
        assert!(c.contains(Ipv4Addr::new(198, 19, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(198, 19, 2, 1)));
        assert!(Cidr::parse("198.19.1.0").is_err());
        assert!(Cidr::parse("198.19.1.0/31").is_err());
        assert!(Cidr::parse("nope/24").is_err());
    }

    #[test]
    fn subnets_and_overlaps() {
        let cluster = Cidr::parse("198.19.0.0/16").unwrap();
        let subs: Vec<String> = cluster.subnets(24).take(2).map(|c| c.to_string()).collect();
        assert_eq!(subs, ["198.19.0.0/24", "198.19.1.0/24"]);
        assert_eq!(cluster.subnets(24).count(), 256);
        assert!(cluster.overlaps(&Cidr::parse("198.19.5.0/24").unwrap()));
        assert!(!cluster.overlaps(&Cidr::parse("198.18.0.0/24").unwrap()));
    }
}
