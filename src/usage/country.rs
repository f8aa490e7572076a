//! The client's country, for usage by country: a [`CountryResolver`] on the layer
//! ([`ApiKeyLayerBuilder::country_resolver`](crate::ApiKeyLayerBuilder::country_resolver)).
//! None by default; [`CountryHeader`] reads a header a trusted proxy or CDN sets, such as
//! Cloudflare's `CF-IPCountry`; with the `geoip` feature, [`GeoIpCountry`] looks the client's
//! address up in a MaxMind-format database.

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderName, InvalidHeaderName};
use http::HeaderMap;
use serde::{Serialize, Serializer};

/// An ISO 3166-1 alpha-2 country code, upper case: `DE`, `US`. Also the codes CDNs use for
/// "unknown" and "Tor" (`XX`, `T1`), as they give them.
///
/// ```
/// use tower_api_key::usage::Country;
///
/// assert_eq!(Country::new("de").unwrap().as_str(), "DE");
/// assert!(Country::new("DEU").is_none());
/// assert!(Country::new("").is_none());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// The code, if `code` is two ASCII letters or digits (`T1`); upper-cased.
    pub fn new(code: &str) -> Option<Country> {
        Country::from_bytes(code.as_bytes())
    }

    fn from_bytes(code: &[u8]) -> Option<Country> {
        match *code {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphanumeric() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Two ASCII characters, checked by `from_bytes`.
        std::str::from_utf8(&self.0).unwrap_or("XX")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Country {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where the layer finds a request's country. Called once per request, only when the layer
/// counts usage: keep it cheap.
///
/// ```
/// use std::net::IpAddr;
/// use http::HeaderMap;
/// use tower_api_key::usage::{Country, CountryResolver};
/// use tower_api_key::{ApiKeyLayer, MemoryStore};
///
/// /// Each office's network is in one country; the rest of the world is not told apart.
/// struct Offices;
///
/// impl CountryResolver for Offices {
///     fn country(&self, client: Option<IpAddr>, _headers: &HeaderMap) -> Option<Country> {
///         match client? {
///             IpAddr::V4(address) if address.octets()[..2] == [10, 49] => Country::new("DE"),
///             IpAddr::V4(address) if address.octets()[..2] == [10, 33] => Country::new("FR"),
///             _ => None,
///         }
///     }
/// }
///
/// assert_eq!(Offices.country(Some([10, 49, 0, 7].into()), &HeaderMap::new()), Country::new("DE"));
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .country_resolver(Offices)
///     .build()?;
/// # Ok::<(), tower_api_key::ConfigError>(())
/// ```
pub trait CountryResolver: Send + Sync + 'static {
    /// The country of a request from `client` (the address of the connection, or the one a
    /// [trusted proxy](crate::network::TrustedProxies) forwarded) with `headers`.
    fn country(&self, client: Option<IpAddr>, headers: &HeaderMap) -> Option<Country>;

    /// Whether [`country`](Self::country) reads the client's address: when not, the layer does
    /// not work it out. True by default.
    fn needs_client(&self) -> bool {
        true
    }
}

/// The country in a header that a proxy or CDN in front of the service sets, such as
/// Cloudflare's `CF-IPCountry` or CloudFront's `CloudFront-Viewer-Country`.
///
/// Trust it only if every request reaches the service through that proxy and the proxy replaces
/// the header a client sends: otherwise a client chooses its own country.
///
/// ```
/// use tower_api_key::{ApiKeyLayer, MemoryStore, usage::CountryHeader};
///
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .country_resolver(CountryHeader::new("cf-ipcountry")?)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CountryHeader {
    name: HeaderName,
}

impl CountryHeader {
    /// The header named `name`.
    ///
    /// # Errors
    /// When `name` is not a valid header name.
    pub fn new(name: &str) -> Result<CountryHeader, InvalidHeaderName> {
        Ok(CountryHeader {
            name: HeaderName::try_from(name)?,
        })
    }
}

impl CountryResolver for CountryHeader {
    fn country(&self, _client: Option<IpAddr>, headers: &HeaderMap) -> Option<Country> {
        Country::from_bytes(headers.get(&self.name)?.as_bytes())
    }

    fn needs_client(&self) -> bool {
        false
    }
}

/// The country of the client's address in a MaxMind-format database (GeoLite2-Country,
/// GeoIP2-Country or -City, or another `.mmdb` file with `country.iso_code`), read with the
/// `maxminddb` crate. Feature `geoip`.
///
/// The address is the connection's, or the one [trusted
/// proxies](crate::ApiKeyLayerBuilder::trusted_proxies) forwarded: a client cannot choose it.
///
/// ```no_run
/// use tower_api_key::{usage::GeoIpCountry, ApiKeyLayer, MemoryStore};
///
/// let layer = ApiKeyLayer::builder("mesh", MemoryStore::new())
///     .country_resolver(GeoIpCountry::open("/var/lib/GeoIP/GeoLite2-Country.mmdb")?)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[cfg(feature = "geoip")]
pub struct GeoIpCountry {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[cfg(feature = "geoip")]
impl GeoIpCountry {
    /// The database in the file at `path`, read into memory.
    ///
    /// # Errors
    /// When the file cannot be read or is not a MaxMind database.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, maxminddb::MaxMindDbError> {
        Ok(GeoIpCountry {
            reader: maxminddb::Reader::open_readfile(path)?,
        })
    }

    /// The database in `bytes`.
    ///
    /// # Errors
    /// When `bytes` are not a MaxMind database.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, maxminddb::MaxMindDbError> {
        Ok(GeoIpCountry {
            reader: maxminddb::Reader::from_source(bytes)?,
        })
    }
}

#[cfg(feature = "geoip")]
impl fmt::Debug for GeoIpCountry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIpCountry")
            .field("database_type", &self.reader.metadata().database_type)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "geoip")]
impl CountryResolver for GeoIpCountry {
    fn country(&self, client: Option<IpAddr>, _headers: &HeaderMap) -> Option<Country> {
        let found = self.reader.lookup(client?).ok()?;
        let code: &str = found
            .decode_path(&maxminddb::path!["country", "iso_code"])
            .ok()??;
        Country::new(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gives_the_country_or_nothing() {
        let resolver = CountryHeader::new("CF-IPCountry").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(resolver.country(None, &headers), None);
        headers.insert("cf-ipcountry", "fr".parse().unwrap());
        assert_eq!(resolver.country(None, &headers), Country::new("FR"));
        for bad in ["", "F", "FRA", "1F", "F-"] {
            headers.insert("cf-ipcountry", bad.parse().unwrap());
            assert_eq!(resolver.country(None, &headers), None, "{bad:?}");
        }
        assert_eq!(Country::new("t1").unwrap().to_string(), "T1");
        assert!(CountryHeader::new("bad header").is_err());
    }
}
