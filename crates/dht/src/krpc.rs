//! KRPC (BEP 5): the bencoded dictionaries DHT nodes exchange over UDP. A message is a query
//! (`y` = `q`: `ping`, `find_node`, `get_peers`, `announce_peer`), a response (`r`) or an
//! error (`e`), with a transaction id (`t`) the response echoes.
//!
//! Decoding is lenient where real nodes differ (unsorted keys, extra keys, a `values` entry of
//! the wrong size is skipped) and strict where a wrong value would mislead us (ids of exactly
//! 20 bytes, node addresses where a node can be).

use pow_bencode::{decode_prefix, dict, Node, Options, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// A node id or an info-hash: a point in the 160-bit key space.
pub type Id = [u8; 20];

/// Bytes of one compact IPv4 node entry: id, address, port.
pub const COMPACT_NODE_LEN: usize = 26;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Ping,
    FindNode {
        target: Id,
    },
    GetPeers {
        info_hash: Id,
    },
    AnnouncePeer {
        info_hash: Id,
        port: u16,
        /// Use the UDP source port instead of `port` (BEP 5 `implied_port`).
        implied_port: bool,
        token: Vec<u8>,
    },
    /// A method we do not know: answered with error 204.
    Other(String),
}

/// A node and where it listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: Id,
    pub addr: SocketAddrV4,
}

/// The fields of a response that pow reads or sends; which are present depends on the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub id: Id,
    /// `nodes`: the responder's closest nodes to the target (compact IPv4).
    pub nodes: Vec<NodeInfo>,
    /// `values`: peers for the info-hash (`get_peers`).
    pub values: Vec<SocketAddr>,
    /// `token`: to present in a later `announce_peer` (`get_peers`).
    pub token: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Query { id: Id, query: Query },
    Response(Response),
    Error { code: i64, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id, echoed by the response.
    pub tid: Vec<u8>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    #[error("KRPC: {0}")]
    Bencode(String),
    #[error("KRPC: {0}")]
    Invalid(&'static str),
}

/// Client version sent in `v`: "PW" and two version bytes, as libtorrent's "LT" + version.
const VERSION: &[u8] = b"PW\x00\x01";

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = vec![
            ("t", Value::Bytes(self.tid.clone())),
            ("v", Value::Bytes(VERSION.to_vec())),
        ];
        match &self.body {
            Body::Query { id, query } => {
                let mut args = vec![("id", Value::Bytes(id.to_vec()))];
                let name = match query {
                    Query::Ping => "ping",
                    Query::FindNode { target } => {
                        args.push(("target", Value::Bytes(target.to_vec())));
                        "find_node"
                    }
                    Query::GetPeers { info_hash } => {
                        args.push(("info_hash", Value::Bytes(info_hash.to_vec())));
                        "get_peers"
                    }
                    Query::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        args.push(("info_hash", Value::Bytes(info_hash.to_vec())));
                        args.push(("port", Value::Int(i64::from(*port))));
                        args.push(("implied_port", Value::Int(i64::from(*implied_port))));
                        args.push(("token", Value::Bytes(token.clone())));
                        "announce_peer"
                    }
                    Query::Other(name) => name.as_str(),
                };
                entries.push(("y", Value::str("q")));
                entries.push(("q", Value::str(name)));
                entries.push(("a", dict(args)));
            }
            Body::Response(r) => {
                let mut fields = vec![("id", Value::Bytes(r.id.to_vec()))];
                if !r.nodes.is_empty() {
                    let mut compact = Vec::with_capacity(r.nodes.len() * COMPACT_NODE_LEN);
                    for node in &r.nodes {
                        compact.extend_from_slice(&node.id);
                        compact.extend_from_slice(&node.addr.ip().octets());
                        compact.extend_from_slice(&node.addr.port().to_be_bytes());
                    }
                    fields.push(("nodes", Value::Bytes(compact)));
                }
                if !r.values.is_empty() {
                    let values = r.values.iter().map(|a| Value::Bytes(compact_peer(*a)));
                    fields.push(("values", Value::List(values.collect())));
                }
                if let Some(token) = &r.token {
                    fields.push(("token", Value::Bytes(token.clone())));
                }
                entries.push(("y", Value::str("r")));
                entries.push(("r", dict(fields)));
            }
            Body::Error { code, message } => {
                entries.push(("y", Value::str("e")));
                entries.push((
                    "e",
                    Value::List(vec![Value::Int(*code), Value::str(message)]),
                ));
            }
        }
        dict(entries).encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, KrpcError> {
        let options = Options {
            allow_unsorted_keys: true,
            allow_trailing_data: true,
            ..Options::strict()
        };
        let (root, _) =
            decode_prefix(bytes, options).map_err(|e| KrpcError::Bencode(e.to_string()))?;
        if root.as_dict().is_none() {
            return Err(KrpcError::Invalid("not a dictionary"));
        }
        let tid = root
            .get("t")
            .and_then(Node::as_bytes)
            .ok_or(KrpcError::Invalid("no transaction id"))?
            .to_vec();
        let body = match root.get("y").and_then(Node::as_bytes) {
            Some(b"q") => {
                let args = root.get("a").ok_or(KrpcError::Invalid("query without a"))?;
                let id = id_at(args, "id")?;
                let name = root
                    .get("q")
                    .and_then(Node::as_str)
                    .ok_or(KrpcError::Invalid("query without q"))?;
                let query = match name {
                    "ping" => Query::Ping,
                    "find_node" => Query::FindNode {
                        target: id_at(args, "target")?,
                    },
                    "get_peers" => Query::GetPeers {
                        info_hash: id_at(args, "info_hash")?,
                    },
                    "announce_peer" => Query::AnnouncePeer {
                        info_hash: id_at(args, "info_hash")?,
                        port: args
                            .get("port")
                            .and_then(Node::as_int)
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(0),
                        implied_port: args.get("implied_port").and_then(Node::as_int) == Some(1),
                        token: args
                            .get("token")
                            .and_then(Node::as_bytes)
                            .ok_or(KrpcError::Invalid("announce_peer without a token"))?
                            .to_vec(),
                    },
                    other => Query::Other(other.chars().take(32).collect()),
                };
                Body::Query { id, query }
            }
            Some(b"r") => {
                let r = root
                    .get("r")
                    .ok_or(KrpcError::Invalid("response without r"))?;
                let nodes = r
                    .get("nodes")
                    .and_then(Node::as_bytes)
                    .unwrap_or_default()
                    .chunks_exact(COMPACT_NODE_LEN)
                    .filter_map(|entry| {
                        let peer = peer_of(&entry[20..])?;
                        let SocketAddr::V4(addr) = peer else {
                            return None;
                        };
                        if !dialable(&addr) {
                            return None;
                        }
                        Some(NodeInfo {
                            id: entry[..20].try_into().expect("20 bytes"),
                            addr,
                        })
                    })
                    .collect();
                let values = r
                    .get("values")
                    .and_then(Node::as_list)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|v| v.as_bytes().and_then(peer_of))
                    .collect();
                Body::Response(Response {
                    id: id_at(r, "id")?,
                    nodes,
                    values,
                    token: r.get("token").and_then(Node::as_bytes).map(<[u8]>::to_vec),
                })
            }
            Some(b"e") => {
                let e = root.get("e").and_then(Node::as_list).unwrap_or_default();
                Body::Error {
                    code: e.first().and_then(Node::as_int).unwrap_or(0),
                    message: e
                        .get(1)
                        .and_then(Node::as_bytes)
                        .map(|m| String::from_utf8_lossy(m).chars().take(200).collect())
                        .unwrap_or_default(),
                }
            }
            _ => return Err(KrpcError::Invalid("y is not q, r or e")),
        };
        Ok(Message { tid, body })
    }
}

fn id_at(node: &Node, key: &str) -> Result<Id, KrpcError> {
    node.get(key)
        .and_then(Node::as_bytes)
        .and_then(|b| Id::try_from(b).ok())
        .ok_or(KrpcError::Invalid("missing or malformed 20-byte id"))
}

/// A compact peer: 4 address bytes and a port, or 16 and a port; port 0 is no peer.
fn peer_of(bytes: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match bytes.len() {
        6 => (
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).ok()?)),
            &bytes[4..],
        ),
        18 => (
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?)),
            &bytes[16..],
        ),
        _ => return None,
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    (port != 0).then_some(SocketAddr::new(ip, port))
}

fn compact_peer(addr: SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip().to_canonical() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// Whether a node can be at `addr`: not port 0, nor an unspecified, multicast or broadcast
/// address, which a hostile node would name to have us send where no node is (or everywhere on
/// a local network). Loopback is kept: local test swarms live there.
pub fn dialable(addr: &SocketAddrV4) -> bool {
    let ip = addr.ip();
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast()
}

/// An IPv4 address of a socket address, if it has one (IPv4-mapped IPv6 included).
pub fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => Some(SocketAddrV4::new(ip, addr.port())),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: Message) {
        let bytes = message.encode();
        assert_eq!(Message::decode(&bytes).unwrap(), message, "{bytes:?}");
    }

    #[test]
    fn every_kind_round_trips() {
        let id = [7u8; 20];
        for query in [
            Query::Ping,
            Query::FindNode { target: [1; 20] },
            Query::GetPeers { info_hash: [2; 20] },
            Query::AnnouncePeer {
                info_hash: [3; 20],
                port: 6881,
                implied_port: true,
                token: b"tok".to_vec(),
            },
            Query::Other("vote".into()),
        ] {
            round_trip(Message {
                tid: b"aa".to_vec(),
                body: Body::Query { id, query },
            });
        }
        round_trip(Message {
            tid: vec![0, 1],
            body: Body::Response(Response {
                id,
                nodes: vec![NodeInfo {
                    id: [9; 20],
                    addr: "127.0.0.1:6881".parse().unwrap(),
                }],
                values: vec!["10.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()],
                token: Some(vec![1, 2, 3, 4]),
            }),
        });
        round_trip(Message {
            tid: vec![9],
            body: Body::Error {
                code: 203,
                message: "bad token".into(),
            },
        });
    }

    #[test]
    fn reads_the_bep5_examples() {
        // BEP 5's own examples, byte for byte.
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        assert_eq!(
            Message::decode(ping).unwrap(),
            Message {
                tid: b"aa".to_vec(),
                body: Body::Query {
                    id: *b"abcdefghij0123456789",
                    query: Query::Ping
                }
            }
        );
        let peers = b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re";
        let Body::Response(r) = Message::decode(peers).unwrap().body else {
            panic!()
        };
        assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
        assert_eq!(r.values.len(), 2);
        let error = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        assert_eq!(
            Message::decode(error).unwrap().body,
            Body::Error {
                code: 201,
                message: "A Generic Error Ocurred".into()
            }
        );
    }

    #[test]
    fn refuses_what_would_mislead() {
        assert!(Message::decode(b"le").is_err());
        assert!(Message::decode(b"d1:t2:aa1:y1:qe").is_err());
        // A 19-byte id.
        assert!(
            Message::decode(b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe").is_err()
        );
        // A node entry with port 0 and a value of 5 bytes are skipped, not believed.
        let mut nodes = vec![1u8; 20];
        nodes.extend_from_slice(&[127, 0, 0, 1, 0, 0]);
        let mut r = b"d1:rd2:id20:abcdefghij01234567895:nodes26:".to_vec();
        r.extend_from_slice(&nodes);
        r.extend_from_slice(b"6:valuesl5:abcdeee1:t1:x1:y1:re");
        let Body::Response(r) = Message::decode(&r).unwrap().body else {
            panic!()
        };
        assert!(r.nodes.is_empty() && r.values.is_empty());
    }

    /// Node entries where no node can be (unspecified, multicast, broadcast) are dropped at
    /// decoding; loopback and private addresses are kept.
    #[test]
    fn node_entries_at_no_node_address_are_dropped() {
        let addrs: [SocketAddrV4; 6] = [
            "0.0.0.0:6881".parse().unwrap(),
            "224.0.0.1:6881".parse().unwrap(),
            "239.255.255.250:1900".parse().unwrap(),
            "255.255.255.255:6881".parse().unwrap(),
            "127.0.0.1:6881".parse().unwrap(),
            "10.0.0.1:6881".parse().unwrap(),
        ];
        let nodes: Vec<NodeInfo> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| NodeInfo {
                id: [i as u8; 20],
                addr: *addr,
            })
            .collect();
        let bytes = Message {
            tid: b"aa".to_vec(),
            body: Body::Response(Response {
                id: [7; 20],
                nodes: nodes.clone(),
                ..Response::default()
            }),
        }
        .encode();
        let Body::Response(r) = Message::decode(&bytes).unwrap().body else {
            panic!()
        };
        assert_eq!(r.nodes, nodes[4..]);
        assert!(!dialable(&"127.0.0.1:0".parse().unwrap()));
    }
}
