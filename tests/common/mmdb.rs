//! A MaxMind DB file (format 2.0) built by hand, for the country resolver's tests: IPv4
//! networks and their countries (`{"country": {"iso_code": …}}`), as GeoLite2-Country has them.

/// A record of the search tree: nothing, another node, or data at an offset of the data section.
#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// The database of `networks`: (address, prefix length, country code).
pub fn country_database(networks: &[([u8; 4], u8, &str)]) -> Vec<u8> {
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    let mut data = Vec::new();
    for &(address, prefix, country) in networks {
        let offset = data.len();
        data.extend(map(&[("country", map(&[("iso_code", string(country))]))]));
        let address = u32::from_be_bytes(address);
        let mut node = 0;
        for depth in 0..prefix {
            let bit = ((address >> (31 - depth)) & 1) as usize;
            if depth + 1 == prefix {
                nodes[node][bit] = Record::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Record::Node(next) => next,
                    _ => {
                        nodes.push([Record::Empty; 2]);
                        nodes[node][bit] = Record::Node(nodes.len() - 1);
                        nodes.len() - 1
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut file = Vec::new();
    for node in &nodes {
        for record in node {
            let value = match *record {
                Record::Empty => count,
                Record::Node(next) => next,
                Record::Data(offset) => count + 16 + offset,
            };
            // 24-bit records, big-endian.
            file.extend(&(value as u32).to_be_bytes()[1..]);
        }
    }
    file.extend([0; 16]);
    file.extend(data);
    file.extend(b"\xAB\xCD\xEFMaxMind.com");
    file.extend(map(&[
        ("node_count", unsigned(6, count as u64)),
        ("record_size", unsigned(5, 24)),
        ("ip_version", unsigned(5, 4)),
        ("database_type", string("Test-Country")),
        ("languages", array(&[string("en")])),
        ("binary_format_major_version", unsigned(5, 2)),
        ("binary_format_minor_version", unsigned(5, 0)),
        ("build_epoch", unsigned(9, 1_795_000_000)),
        (
            "description",
            map(&[("en", string("tower-api-key test data"))]),
        ),
    ]));
    file
}

/// The control byte(s) of a field of `kind` and `size` (both below 29).
fn control(kind: u8, size: usize) -> Vec<u8> {
    let size = size as u8;
    if kind <= 7 {
        vec![(kind << 5) | size]
    } else {
        vec![size, kind - 7]
    }
}

fn string(text: &str) -> Vec<u8> {
    let mut field = control(2, text.len());
    field.extend(text.as_bytes());
    field
}

/// An unsigned integer of `kind` (5: 16 bits, 6: 32, 9: 64), in as few bytes as it needs.
fn unsigned(kind: u8, value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(8);
    let mut field = control(kind, 8 - first);
    field.extend(&bytes[first..]);
    field
}

fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut field = control(7, entries.len());
    for (key, value) in entries {
        field.extend(string(key));
        field.extend(value);
    }
    field
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut field = control(11, items.len());
    items.iter().for_each(|item| field.extend(item));
    field
}
