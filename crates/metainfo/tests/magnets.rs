//! Acceptance (#11, line 2): every magnet link in fixtures/magnets.json, parsed by pow and by
//! libtorrent 2.0.8 (`parse_magnet_uri`): same verdict, info-hashes, name, trackers, web seeds,
//! peers, DHT nodes and `so` selection, except for the cases listed in DIFFERENCES.

use pow_metainfo::magnet::{Magnet, MagnetError};
use serde_json::Value as Json;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// Links where pow differs from libtorrent on purpose, and why.
const DIFFERENCES: &[(&str, &str)] = &[];

fn difference(uri: &str) -> Option<&'static str> {
    DIFFERENCES
        .iter()
        .find(|(prefix, _)| {
            // The long ones are named by a prefix; exact otherwise.
            uri == *prefix || (prefix.ends_with('_') && uri.starts_with(prefix))
        })
        .map(|(_, why)| *why)
}

fn strings(v: &Json) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn unique(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in v {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// libtorrent's `file_priorities` for our `so` ranges: 4 for selected, 0 for the others, up to
/// the highest index named.
fn priorities(ranges: &[(u32, u32)]) -> Vec<i64> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        if out.len() <= b as usize {
            out.resize(b as usize + 1, 0);
        }
        for p in &mut out[a as usize..=b as usize] {
            *p = 4;
        }
    }
    out
}

/// Compares pow's result with libtorrent's; returns the first mismatch.
fn compare(uri: &str, ours: &Result<Magnet, MagnetError>, lt: &Json) -> Result<(), String> {
    let lt_ok = lt["ok"].as_bool().unwrap();
    let m = match (ours, lt_ok) {
        (Ok(m), true) => m,
        (Err(e), false) => {
            let want = match lt["error"].as_str().unwrap() {
                "missing info-hash from URI" => matches!(e, MagnetError::MissingInfoHash),
                "invalid info-hash" => matches!(e, MagnetError::InvalidInfoHash(_)),
                other => return Err(format!("unknown libtorrent error {other:?}")),
            };
            return if want {
                Ok(())
            } else {
                Err(format!("error kind: pow {e:?}, libtorrent {}", lt["error"]))
            };
        }
        (Ok(m), false) => return Err(format!("pow accepts ({m:?}), libtorrent: {}", lt["error"])),
        (Err(e), true) => return Err(format!("pow refuses ({e}), libtorrent accepts")),
    };
    let check = |what: &str, ours: Json, theirs: &Json| {
        if &ours == theirs {
            Ok(())
        } else {
            Err(format!("{what}: pow {ours}, libtorrent {theirs}"))
        }
    };
    check(
        "info_hash_v1",
        m.info_hash.map(|h| h.to_hex()).into(),
        &lt["info_hash_v1"],
    )?;
    check(
        "info_hash_v2",
        m.info_hash_v2.map(hex::encode).into(),
        &lt["info_hash_v2"],
    )?;
    check(
        "name",
        m.name.clone().unwrap_or_default().into(),
        &lt["name"],
    )?;
    check("trackers", m.trackers.clone().into(), &lt["trackers"])?;
    let tiers: Vec<usize> = (0..m.trackers.len()).collect();
    check("tracker_tiers", tiers.into(), &lt["tracker_tiers"])?;
    check("url_seeds", m.web_seeds.clone().into(), &lt["url_seeds"])?;
    let peers: Vec<Json> = m
        .peers
        .iter()
        .map(|p| serde_json::json!([p.ip().to_string(), p.port()]))
        .collect();
    check("peers", peers.into(), &lt["peers"])?;
    let nodes: Vec<Json> = m
        .dht_nodes
        .iter()
        .map(|(h, p)| serde_json::json!([h, p]))
        .collect();
    check("dht_nodes", nodes.into(), &lt["dht_nodes"])?;
    check(
        "file_priorities",
        priorities(&m.select_only).into(),
        &lt["file_priorities"],
    )?;
    let _ = uri;
    Ok(())
}

#[test]
fn every_fixture_magnet_matches_libtorrent() {
    let path = fixtures().join("magnets.json");
    let doc: Json = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let magnets = doc["magnets"].as_array().unwrap();
    assert_eq!(magnets.len(), 67);
    let (mut agree, mut differ, mut failures) = (0, 0, Vec::new());
    let mut used = vec![false; DIFFERENCES.len()];
    for entry in magnets {
        let uri = entry["uri"].as_str().unwrap();
        let lt = &entry["libtorrent"];
        let ours = Magnet::parse(uri);
        match (compare(uri, &ours, lt), difference(uri)) {
            (Ok(()), None) => agree += 1,
            (Ok(()), Some(why)) => {
                failures.push(format!("{uri}\n  listed as different ({why}) but agrees"))
            }
            (Err(e), None) => failures.push(format!("{uri}\n  {e}")),
            (Err(e), Some(why)) => {
                used[DIFFERENCES.iter().position(|(_, w)| *w == why).unwrap()] = true;
                println!("deliberate difference: {uri}\n  {e}\n  why: {why}");
                differ += 1;
            }
        }
        // Where they differ, pow's answer is still the expected one.
        if let Some(why) = difference(uri) {
            if why.contains("pow refuses") {
                assert!(
                    matches!(ours, Err(MagnetError::InvalidInfoHash(_))),
                    "{uri}"
                );
            } else if why.contains("tr twice") {
                let m = ours.as_ref().unwrap();
                assert_eq!(m.trackers, unique(strings(&lt["trackers"])), "{uri}");
            } else {
                let m = ours.as_ref().unwrap();
                let theirs: Vec<String> = lt["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| match p[0].as_str().unwrap() {
                        ip if ip.contains(':') => format!("[{ip}]:{}", p[1]),
                        ip => format!("{ip}:{}", p[1]),
                    })
                    .collect();
                let ours: Vec<String> = m.peers.iter().map(|p| p.to_string()).collect();
                assert_eq!(ours, unique(theirs), "{uri}");
            }
        }
        // Whatever parses survives to_uri and back.
        if let Ok(m) = &ours {
            let mut back = Magnet::parse(&m.to_uri()).unwrap();
            back.warnings = m.warnings.clone();
            assert_eq!(&back, m, "{uri} via {}", m.to_uri());
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        used.iter().all(|&u| u),
        "a listed difference no longer occurs"
    );
    println!(
        "magnets: {} links, {agree} agree with libtorrent 2.0.8, {differ} deliberately differ",
        magnets.len()
    );
    assert_eq!(agree + differ, magnets.len());
}

#[test]
fn so_is_reported_as_ignored() {
    let m = Magnet::parse("magnet:?xt=urn:btih:6161616161616161616161616161616161616161&so=0,2-4")
        .unwrap();
    assert_eq!(m.select_only, [(0, 0), (2, 4)]);
    assert_eq!(
        m.warnings,
        ["so (select only some files) is ignored: pow downloads every file"]
    );
}
