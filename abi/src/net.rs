//! Networking settings that cross from host to guest: the listening sockets an app gets as
//! preopened descriptors ([`Listen`], recorded at `pack` time or given at run time) and the
//! guest's static IPv4 configuration ([`NetConfig`]) when the VMM attached a network card.
//!
//! Both backends give the guest the same addresses (QEMU's user-mode network and passt are
//! configured alike), so an app sees one network wherever it runs: it is [`GUEST_ADDR`] on
//! a /24, the host is reachable at [`GATEWAY`] and names resolve through [`DNS`].

use crate::DecodeError;

/// The guest's IPv4 address on the built-in user-mode network.
pub const GUEST_ADDR: [u8; 4] = [10, 0, 2, 15];
/// The gateway, which also answers for the host's loopback services.
pub const GATEWAY: [u8; 4] = [10, 0, 2, 2];
/// The DNS forwarder.
pub const DNS: [u8; 4] = [10, 0, 2, 3];
/// The network's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The guest network card's MAC address (locally administered, QEMU's default).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The Ethernet MTU when the card reports none.
pub const DEFAULT_MTU: u16 = 1500;

/// A listening TCP socket handed to the app as a preopened descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// The guest address to listen on; `0.0.0.0` for every address.
    pub addr: [u8; 4],
    pub port: u16,
}

/// Encoded length of a [`Listen`].
pub const LISTEN_LEN: usize = 6;

impl Listen {
    /// Parses `[ADDR:]PORT` (IPv4 only; the port must not be 0).
    pub fn parse(spec: &str) -> Result<Listen, &'static str> {
        let (addr, port) = match spec.rsplit_once(':') {
            Some((addr, port)) => {
                let ip: core::net::Ipv4Addr = addr
                    .parse()
                    .map_err(|_| "the address is not an IPv4 address like 0.0.0.0")?;
                (ip.octets(), port)
            }
            None => ([0; 4], spec),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| "the port is not a number from 1 to 65535")?;
        if port == 0 {
            return Err("the port is not a number from 1 to 65535");
        }
        Ok(Listen { addr, port })
    }

    pub fn encode(&self) -> [u8; LISTEN_LEN] {
        let mut b = [0; LISTEN_LEN];
        b[..4].copy_from_slice(&self.addr);
        b[4..].copy_from_slice(&self.port.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Listen, DecodeError> {
        let b: &[u8; LISTEN_LEN] = b
            .try_into()
            .map_err(|_| DecodeError::Malformed("listen record length"))?;
        let port = u16::from_le_bytes([b[4], b[5]]);
        if port == 0 {
            return Err(DecodeError::Malformed("listen port 0"));
        }
        Ok(Listen {
            addr: [b[0], b[1], b[2], b[3]],
            port,
        })
    }
}

impl core::fmt::Display for Listen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

/// The guest's static IPv4 configuration. Without one, a guest with a network card asks
/// DHCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
    pub dns: [u8; 4],
    /// The link's MTU (the largest IP packet; frames add 14 bytes of Ethernet header).
    pub mtu: u16,
}

/// Encoded length of a [`NetConfig`].
pub const NET_CONFIG_LEN: usize = 15;

/// The smallest MTU IPv4 allows a link.
pub const MIN_MTU: u16 = 576;
/// The largest MTU a guest accepts (passt's default: 65535 minus headers, in 4-byte words).
pub const MAX_MTU: u16 = 65520;

impl NetConfig {
    /// The user-mode network both backends set up, with link MTU `mtu`.
    pub const fn user(mtu: u16) -> NetConfig {
        NetConfig {
            addr: GUEST_ADDR,
            prefix_len: PREFIX_LEN,
            gateway: GATEWAY,
            dns: DNS,
            mtu,
        }
    }

    pub fn encode(&self) -> [u8; NET_CONFIG_LEN] {
        let mut b = [0; NET_CONFIG_LEN];
        b[..4].copy_from_slice(&self.addr);
        b[4] = self.prefix_len;
        b[5..9].copy_from_slice(&self.gateway);
        b[9..13].copy_from_slice(&self.dns);
        b[13..].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<NetConfig, DecodeError> {
        let b: &[u8; NET_CONFIG_LEN] = b
            .try_into()
            .map_err(|_| DecodeError::Malformed("network record length"))?;
        if b[4] > 32 {
            return Err(DecodeError::Malformed("network prefix length"));
        }
        let mtu = u16::from_le_bytes([b[13], b[14]]);
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(DecodeError::Malformed("network MTU"));
        }
        let quad = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        Ok(NetConfig {
            addr: quad(0),
            prefix_len: b[4],
            gateway: quad(5),
            dns: quad(9),
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs_parse_and_round_trip() {
        let any = Listen::parse("8080").unwrap();
        assert_eq!(
            any,
            Listen {
                addr: [0; 4],
                port: 8080
            }
        );
        let one = Listen::parse("127.0.0.1:80").unwrap();
        assert_eq!(one.addr, [127, 0, 0, 1]);
        assert_eq!(Listen::decode(&one.encode()), Ok(one));
        for bad in [
            "0", "65536", "x", "1.2.3:80", "::1:80", "", ":80", "1.2.3.4:",
        ] {
            assert!(Listen::parse(bad).is_err(), "{bad}");
        }
        assert!(Listen::decode(&[0; 5]).is_err());
        assert!(Listen::decode(&[0; 6]).is_err());
    }

    #[test]
    fn net_config_round_trips_and_rejects_bad_prefixes() {
        let c = NetConfig::user(MAX_MTU);
        assert_eq!(NetConfig::decode(&c.encode()), Ok(c));
        let mut bad = c.encode();
        bad[4] = 33;
        assert!(NetConfig::decode(&bad).is_err());
        assert!(NetConfig::decode(&c.encode()[..14]).is_err());
        let tiny = NetConfig::user(100);
        assert!(NetConfig::decode(&tiny.encode()).is_err());
    }
}
