//! The `.pow` store through the library API, on a real Oxigraph store in a temp dir.

use pow_datasource::{Error, ExportFormat, PowDir};
use std::path::{Path, PathBuf};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("pow-ds-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/datasource")
        .join(name)
}

#[test]
fn save_persists_across_reopen() {
    let tmp = Tmp::new("reopen");
    let dir = tmp.0.join(".pow");
    {
        let pow = PowDir::init(&dir).unwrap();
        let report = pow.save_file(&fixture("seed.toml")).unwrap();
        assert_eq!(report.sources, 1);
        assert_eq!(report.quads, 4);
    }
    let pow = PowDir::open(&dir, true).unwrap();
    let shown = pow
        .show("ConnectomeCSVDataSource:2000_connections")
        .unwrap();
    assert_eq!(
        shown.format(),
        "ConnectomeCSVDataSource\n    CSV file name: 'connectome.csv'\n    File name: 'connectome.csv'\n    Torrent file name: 'd9da5ce947c6f1c127dfcdc2ede63320.torrent'\n"
    );
    assert_eq!(pow.list(None, false).unwrap().len(), 1);
    assert_eq!(pow.list(Some("FileDataSource"), false).unwrap().len(), 1);
}

#[test]
fn failed_save_writes_nothing() {
    let tmp = Tmp::new("fail");
    let pow = PowDir::init(&tmp.0.join(".pow")).unwrap();
    let before = pow.len().unwrap();
    for bad in [
        "bad-class.toml",
        "bad-field.toml",
        "bad-torrent.toml",
        "bad-also.toml",
        "bad-torrent.ttl",
    ] {
        assert!(pow.save_file(&fixture(bad)).is_err(), "{bad}");
        assert_eq!(pow.len().unwrap(), before, "{bad}");
    }
    assert!(matches!(
        pow.save_file(&fixture("bad-class.toml")),
        Err(Error::UnknownClass { .. })
    ));
}

#[test]
fn missing_dir_errors() {
    let tmp = Tmp::new("missing");
    let err = PowDir::open(&tmp.0.join(".pow"), false).err().unwrap();
    assert_eq!(err.to_string(), "no .pow directory here; run pow init");
}

#[test]
fn export_import_round_trip() {
    let tmp = Tmp::new("roundtrip");
    let a = PowDir::init(&tmp.0.join("a")).unwrap();
    a.save_file(&fixture("seed.ttl")).unwrap();
    a.save_file(&fixture("emmons-2019.nt")).unwrap();
    let export = a.export(ExportFormat::NQuads).unwrap();
    let file = tmp.0.join("export.nq");
    std::fs::write(&file, &export).unwrap();
    let b = PowDir::init(&tmp.0.join("b")).unwrap();
    b.import_file(&file).unwrap();
    assert_eq!(b.export(ExportFormat::NQuads).unwrap(), export);
}

#[test]
fn show_multiple_values_and_nested_source() {
    let tmp = Tmp::new("nested");
    let pow = PowDir::init(&tmp.0.join(".pow")).unwrap();
    let defs = tmp.0.join("defs.toml");
    std::fs::write(
        &defs,
        r#"
[[source]]
type = "ConnectomeCSVDataSource"
key = "2000_connections"
csv_file_name = "connectome.csv"

[[source]]
type = "LocalFileDataSource"
key = "derived"
description = ["second", "first"]
md5 = "d9da5ce947c6f1c127dfcdc2ede63320"
source = "ConnectomeCSVDataSource:2000_connections"
"#,
    )
    .unwrap();
    pow.save_file(&defs).unwrap();
    let shown = pow.show("LocalFileDataSource:derived").unwrap();
    assert_eq!(
        shown.format(),
        "LocalFileDataSource\n    MD5 hash: 'd9da5ce947c6f1c127dfcdc2ede63320'\n    Input source: ConnectomeCSVDataSource\n                      CSV file name: 'connectome.csv'\n                      File name: 'connectome.csv'\n    Description: 'first' 'second'\n"
    );
    let ids: Vec<String> = pow
        .list(Some("LocalFileDataSource"), false)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        [
            "ConnectomeCSVDataSource:2000_connections",
            "LocalFileDataSource:derived"
        ]
    );
    assert_eq!(
        pow.list(Some("ConnectomeCSVDataSource"), false)
            .unwrap()
            .len(),
        1
    );
}

/// A TOML field given as an empty list removes its stored values; the other fields stay.
/// Before, `info_hash = []` saved nothing and the old value stayed: a record naming an earlier
/// version's info-hash refused every load of the new torrent until the store was deleted.
#[test]
fn a_field_saved_as_an_empty_list_is_removed() {
    let tmp = Tmp::new("clear");
    let pow = PowDir::init(&tmp.0.join(".pow")).unwrap();
    let defs = tmp.0.join("k2.toml");
    let save = |fields: &str| {
        std::fs::write(
            &defs,
            format!(
                "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"k2\"\n\
                 torrent_file_name = \"0123456789abcdef0123456789abcdef.torrent\"\n{fields}"
            ),
        )
        .unwrap();
        pow.save_file(&defs).unwrap();
        pow.show("ConnectomeCSVDataSource:k2").unwrap().format()
    };
    let hash = "db4e1b1f2a70f0b8b7f0c8fe1b0c1d1e1f1a1b1c";
    let with = save(&format!("info_hash = \"{hash}\"\n"));
    assert!(with.contains(hash), "{with}");
    let without = save("info_hash = []\n");
    assert!(!without.contains(hash), "{without}");
    assert!(
        without.contains("0123456789abcdef0123456789abcdef.torrent"),
        "{without}"
    );
    // file_name is csv_file_name's too: cleared alone it is refused, with it both go.
    let with_names = save("csv_file_name = \"c.csv\"\n");
    assert!(with_names.contains("c.csv"), "{with_names}");
    std::fs::write(
        &defs,
        "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"k2\"\nfile_name = []\n",
    )
    .unwrap();
    let refused = pow.save_file(&defs).unwrap_err().to_string();
    assert!(refused.contains("clear both"), "{refused}");
    let neither = save("file_name = []\ncsv_file_name = []\n");
    assert!(!neither.contains("c.csv"), "{neither}");
}

/// An RDF file that gives a stored source fields without its type is checked as that source:
/// a malformed MD5 is refused, as is a field of a source that does not exist. Before, such
/// statements were checked as nothing, and `md5 "not-a-hash"` was saved.
#[test]
fn untyped_statements_are_checked_as_the_stored_source() {
    let tmp = Tmp::new("untyped");
    let pow = PowDir::init(&tmp.0.join(".pow")).unwrap();
    pow.save_file(&fixture("seed.toml")).unwrap();
    let class = pow_datasource::Class::by_name("ConnectomeCSVDataSource").unwrap();
    let md5 = class.field("md5").unwrap().predicate();
    let before = pow.len().unwrap();
    let ttl = tmp.0.join("untyped.ttl");
    let info_hash = class.field("info_hash").unwrap().predicate();
    for (key, field, value) in [
        ("2000_connections", &md5, "not-a-hash"),
        ("2000_connections", &info_hash, "zz"),
        ("no_such_source", &md5, "0123456789abcdef0123456789abcdef"),
    ] {
        let subject = class.instance_iri(key);
        std::fs::write(&ttl, format!("<{subject}> <{field}> \"{value}\" .\n")).unwrap();
        let refused = pow.save_file(&ttl);
        assert!(refused.is_err(), "{key}: saved");
        println!("{key}: {}", refused.unwrap_err());
    }
    assert_eq!(pow.len().unwrap(), before, "nothing written");
    // A good value for the stored source is taken.
    let subject = class.instance_iri("2000_connections");
    let good = "0123456789abcdef0123456789abcdef";
    std::fs::write(&ttl, format!("<{subject}> <{md5}> \"{good}\" .\n")).unwrap();
    pow.save_file(&ttl).unwrap();
    let shown = pow
        .show("ConnectomeCSVDataSource:2000_connections")
        .unwrap();
    assert!(shown.format().contains(good), "{}", shown.format());
}
