//! Where a request comes from: the client's IP address, for keys restricted to networks
//! ([`KeyRecord::allowed_networks`](crate::store::KeyRecord::allowed_networks)).
//!
//! The address is the connection's peer, read from the request's extensions where the server put
//! it: axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`, `axum` feature), tonic's
//! `TcpConnectInfo` (`tonic` feature), or a plain [`SocketAddr`] any server may insert. With no
//! peer address, a key restricted to networks is refused: the layer fails closed.
//!
//! Behind a reverse proxy the peer is the proxy. Name the proxies with
//! [`TrustedProxies`]: when the peer is one of them, the address is read from the forwarding
//! header it writes, from the right, past every hop that is itself a trusted proxy. A hop that
//! is not trusted is the client, whatever it claims further left; a value that is not an address
//! (`unknown`, an obfuscated `_name`, garbage) means the client is unknown, and a restricted key
//! is refused. Only the one header you name is read: a proxy that appends to `X-Forwarded-For`
//! passes a `Forwarded` header from the client untouched, so reading both would let the client
//! choose.
//!
//! ```
//! use tower_api_key::{ApiKeyLayer, MemoryStore, network::TrustedProxies};
//!
//! // A load balancer in 10.0.0.0/8 that appends to X-Forwarded-For.
//! let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
//!     .trusted_proxies(TrustedProxies::x_forwarded_for(["10.0.0.0/8".parse()?]))
//!     .build()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::{IpAddr, SocketAddr};

use http::{Extensions, HeaderMap, HeaderName};
pub use ipnet::IpNet;

/// The reverse proxies whose forwarding header is believed, and which header that is.
///
/// ```
/// use tower_api_key::network::{parse_network, TrustedProxies};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// // nginx on this host and in 10.1.0.0/16, writing RFC 7239 `Forwarded`.
/// let proxies = TrustedProxies::forwarded([parse_network("127.0.0.1")?, parse_network("10.1.0.0/16")?]);
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .trusted_proxies(proxies)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies {
    header: ForwardingHeader,
    networks: Vec<IpNet>,
}

/// Which forwarding header the trusted proxies write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl TrustedProxies {
    /// Proxies in `networks` that append the address they received from to `X-Forwarded-For`
    /// (nginx's `$proxy_add_x_forwarded_for`, most load balancers).
    pub fn x_forwarded_for(networks: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies {
            header: ForwardingHeader::XForwardedFor,
            networks: networks.into_iter().collect(),
        }
    }

    /// Proxies in `networks` that append a `for=` element to the RFC 7239 `Forwarded` header.
    pub fn forwarded(networks: impl IntoIterator<Item = IpNet>) -> Self {
        TrustedProxies {
            header: ForwardingHeader::Forwarded,
            networks: networks.into_iter().collect(),
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }

    /// The client's address, given the connection's `peer` and the request's `headers`; `None`
    /// when it cannot be known.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use tower_api_key::network::TrustedProxies;
    ///
    /// let proxies = TrustedProxies::x_forwarded_for(["10.0.0.0/8".parse()?]);
    /// let mut headers = HeaderMap::new();
    /// headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.1.1".parse()?);
    /// let through_proxy = proxies.client_address(Some("10.0.0.2".parse()?), &headers);
    /// // 10.1.1.1 is a trusted proxy too; 203.0.113.9 is the first hop that is not.
    /// assert_eq!(through_proxy, Some("203.0.113.9".parse()?));
    /// // From a peer that is not a trusted proxy, the header is not believed.
    /// let direct = proxies.client_address(Some("192.0.2.7".parse()?), &headers);
    /// assert_eq!(direct, Some("192.0.2.7".parse()?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let mut address = peer?;
        if !self.trusts(address) {
            return Some(address);
        }
        let name = match self.header {
            ForwardingHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ForwardingHeader::Forwarded => http::header::FORWARDED,
        };
        // Every line of the header, in order, is one list: read it from the right.
        let lines: Vec<&[u8]> = headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
        let hops = lines
            .iter()
            .rev()
            .flat_map(|line| line.split(|&b| b == b',').rev());
        for hop in hops {
            if !self.trusts(address) {
                return Some(address);
            }
            address = match self.header {
                ForwardingHeader::XForwardedFor => parse_address(hop)?,
                ForwardingHeader::Forwarded => forwarded_for(hop)?,
            };
        }
        Some(address)
    }
}

/// A network as an operator writes it: a CIDR (`203.0.113.0/24`, `2001:db8::/32`) or a single
/// address (`203.0.113.7`, taken as `/32`, or `/128` for IPv6).
///
/// ```
/// use tower_api_key::network::parse_network;
///
/// assert_eq!(parse_network("203.0.113.7")?, "203.0.113.7/32".parse()?);
/// assert_eq!(parse_network(" 2001:db8::/32 ")?, "2001:db8::/32".parse()?);
/// assert!(parse_network("10.0.0.0/33").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// When `text` is neither.
pub fn parse_network(text: &str) -> Result<IpNet, ipnet::AddrParseError> {
    let text = text.trim();
    match text.parse::<IpAddr>() {
        Ok(address) => Ok(IpNet::from(address)),
        Err(_) => text.parse(),
    }
}

/// The address a request came from, as [`TrustedProxies`] (if any) say: `None` when it cannot
/// be known.
pub(crate) fn client_address(
    extensions: &Extensions,
    headers: &HeaderMap,
    proxies: Option<&TrustedProxies>,
) -> Option<IpAddr> {
    let peer = peer_address(extensions);
    match proxies {
        Some(proxies) => proxies.client_address(peer, headers),
        None => peer,
    }
}

/// The connection's peer, from what the server put into the request's extensions.
fn peer_address(extensions: &Extensions) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<::axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
        if let Some(remote) = info.remote_addr() {
            return Some(remote.ip());
        }
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

/// An address as a hop of `X-Forwarded-For` or a `for=` value writes it: `192.0.2.1`,
/// `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:443`, with spaces around.
fn parse_address(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?.trim_matches([' ', '\t']);
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The address of one `Forwarded` element's `for=` parameter (RFC 7239): a token or a quoted
/// string; `None` for none, `unknown`, an obfuscated identifier, or anything malformed.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for pair in element.split(|&b| b == b';') {
        let pair = std::str::from_utf8(pair).ok()?.trim_matches([' ', '\t']);
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return None; // two `for=` in one element: malformed
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"')?,
            None => value,
        };
        found = Some(parse_address(value.as_bytes())?);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                line.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn addresses_in_every_written_form() {
        for (text, expected) in [
            ("192.0.2.1", Some("192.0.2.1")),
            (" 192.0.2.1 ", Some("192.0.2.1")),
            ("192.0.2.1:8080", Some("192.0.2.1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
            ("192.0.2.256", None),
            ("[192.0.2.1", None),
        ] {
            assert_eq!(parse_address(text.as_bytes()), expected.map(ip), "{text:?}");
        }
    }

    #[test]
    fn forwarded_elements() {
        for (element, expected) in [
            (
                "for=192.0.2.60;proto=http;by=203.0.113.43",
                Some("192.0.2.60"),
            ),
            (
                "For=\"[2001:db8:cafe::17]:4711\"",
                Some("2001:db8:cafe::17"),
            ),
            ("proto=https; for=198.51.100.17", Some("198.51.100.17")),
            ("for=unknown", None),
            ("for=_gazonk", None),
            ("proto=https", None),
            ("for=\"192.0.2.1", None),
            ("for=192.0.2.1;for=192.0.2.2", None),
        ] {
            assert_eq!(
                forwarded_for(element.as_bytes()),
                expected.map(ip),
                "{element:?}"
            );
        }
    }

    #[test]
    fn the_walk_stops_at_the_first_hop_that_is_not_a_trusted_proxy() {
        let proxies = TrustedProxies::x_forwarded_for([net("10.0.0.0/8"), net("fd00::/8")]);
        let peer = Some(ip("10.0.0.1"));
        let xff = |lines: &[&str]| headers("x-forwarded-for", lines);
        // One proxy: the client is the last hop.
        assert_eq!(
            proxies.client_address(peer, &xff(&["203.0.113.5"])),
            Some(ip("203.0.113.5"))
        );
        // A forged hop on the left is never reached.
        assert_eq!(
            proxies.client_address(peer, &xff(&["1.2.3.4, 203.0.113.5, 10.9.9.9"])),
            Some(ip("203.0.113.5"))
        );
        // Several lines are one list, in order.
        assert_eq!(
            proxies.client_address(peer, &xff(&["1.2.3.4", "203.0.113.5", "fd00::7"])),
            Some(ip("203.0.113.5"))
        );
        // The proxy wrote something that is not an address: unknown.
        assert_eq!(proxies.client_address(peer, &xff(&["unknown"])), None);
        assert_eq!(
            proxies.client_address(peer, &xff(&["203.0.113.5, garbage"])),
            None
        );
        // No header: the proxy itself is all there is.
        assert_eq!(proxies.client_address(peer, &HeaderMap::new()), peer);
        // Every hop trusted: the leftmost.
        assert_eq!(
            proxies.client_address(peer, &xff(&["10.2.2.2, 10.3.3.3"])),
            Some(ip("10.2.2.2"))
        );
        // No peer: unknown, whatever the header says.
        assert_eq!(proxies.client_address(None, &xff(&["203.0.113.5"])), None);
        // The `Forwarded` header is not read by an X-Forwarded-For configuration.
        assert_eq!(
            proxies.client_address(peer, &headers("forwarded", &["for=203.0.113.5"])),
            peer
        );
    }

    #[test]
    fn the_forwarded_header_is_walked_the_same_way() {
        let proxies = TrustedProxies::forwarded([net("10.0.0.0/8")]);
        let peer = Some(ip("10.0.0.1"));
        let forwarded = headers(
            "forwarded",
            &[
                "for=1.2.3.4, for=\"[2001:db8::9]:1234\";proto=https",
                "for=10.7.7.7",
            ],
        );
        assert_eq!(
            proxies.client_address(peer, &forwarded),
            Some(ip("2001:db8::9"))
        );
        let xff = headers("x-forwarded-for", &["203.0.113.5"]);
        assert_eq!(proxies.client_address(peer, &xff), peer);
    }

    /// The hops a test writes: trusted proxies (10.x), clients (203.0.113.x), junk.
    fn hop() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4).prop_map(|n| format!("10.0.0.{n}")),
            (0u8..4).prop_map(|n| format!("203.0.113.{n}")),
            Just("unknown".to_owned()),
            "[ -~]{0,12}",
        ]
    }

    proptest! {
        /// Whatever the header holds, no panic; from an untrusted peer the header is ignored; from
        /// a trusted one the answer is exactly the first hop from the right that is not a
        /// trusted proxy, or nothing if a hop up to it is not an address.
        #[test]
        fn an_untrusted_hop_never_chooses_the_address(
            hops in proptest::collection::vec(hop(), 0..6),
            peer_trusted in any::<bool>(),
        ) {
            let proxies = TrustedProxies::x_forwarded_for([net("10.0.0.0/8")]);
            let line = hops.join(",");
            let Ok(value) = http::HeaderValue::from_str(&line) else { return Ok(()) };
            let mut map = HeaderMap::new();
            map.insert("x-forwarded-for", value);
            let peer = ip(if peer_trusted { "10.0.0.9" } else { "198.51.100.1" });
            let got = proxies.client_address(Some(peer), &map);
            // The model: walk the split list from the right.
            let mut expected = Some(peer);
            for hop in line.split(',').rev() {
                match expected {
                    Some(address) if proxies.trusts(address) => {
                        expected = parse_address(hop.as_bytes());
                    }
                    _ => break,
                }
            }
            prop_assert_eq!(got, expected);
            if !peer_trusted {
                prop_assert_eq!(got, Some(peer));
            }
            if let Some(address) = got {
                // The answer is the peer or a hop that was written, never made up.
                prop_assert!(address == peer || line.contains(&address.to_string()));
            }
        }

        #[test]
        fn hostile_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                for proxies in [
                    TrustedProxies::x_forwarded_for([net("0.0.0.0/0"), net("::/0")]),
                    TrustedProxies::forwarded([net("0.0.0.0/0"), net("::/0")]),
                ] {
                    let mut map = HeaderMap::new();
                    map.insert("x-forwarded-for", value.clone());
                    map.insert("forwarded", value.clone());
                    let _ = proxies.client_address(Some(ip("10.0.0.1")), &map);
                }
            }
        }

        /// Any text parses or fails without a panic; what parses holds its own address and
        /// prints back to itself.
        #[test]
        fn networks_parse_or_fail_cleanly(text in "[0-9a-f:./ ]{0,45}") {
            if let Ok(network) = parse_network(&text) {
                prop_assert!(network.contains(&network.addr()));
                prop_assert_eq!(parse_network(&network.to_string()), Ok(network));
            }
        }

        #[test]
        fn an_address_is_a_network_of_one(address in any::<IpAddr>()) {
            let network = parse_network(&address.to_string()).unwrap();
            prop_assert!(network.contains(&address));
            prop_assert_eq!(network.hosts().count(), 1);
        }
    }
}
