//! Issue 7: `pow init`, `pow save`, `pow source list|show|query`, `pow export|import`, run as the
//! real binary against a real Oxigraph store in a temp dir. Build first:
//! `cargo build --release --workspace`.

mod common;

use common::{fixtures, pow, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const SEED_IRI: &str = "http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections";

const SEED_SHOW: &str = "ConnectomeCSVDataSource
    CSV file name: 'connectome.csv'
    File name: 'connectome.csv'
    Torrent file name: 'd9da5ce947c6f1c127dfcdc2ede63320.torrent'
";

fn fixture(name: &str) -> PathBuf {
    fixtures().join("datasource").join(name)
}

/// Runs `pow --pow-dir DIR ARGS...` (with no `POW_DIR` from the environment).
fn run(dir: &Path, args: &[&str]) -> Output {
    pow()
        .arg("--pow-dir")
        .arg(dir)
        .args(args)
        .env_remove("POW_DIR")
        .output()
        .expect("run pow")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Runs and asserts success, returning stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "pow {args:?} failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs and asserts exit code 1 with a one-line error, returning it.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pow {args:?} should fail: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

fn init(tag: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(tag);
    let dir = tmp.path().join(".pow");
    ok(&dir, &["init"]);
    (tmp, dir)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A number from a one-variable SELECT, through `--json`.
fn count(dir: &Path, sparql: &str) -> u64 {
    let text = ok(dir, &["source", "query", "--json", sparql]);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let binding = &json["results"]["bindings"][0];
    let (_, value) = binding.as_object().unwrap().iter().next().unwrap();
    value["value"].as_str().unwrap().parse().unwrap()
}

fn triples(dir: &Path) -> u64 {
    count(
        dir,
        "SELECT (COUNT(*) AS ?n) WHERE { GRAPH ?g { ?s ?p ?o } }",
    )
}

fn sources(dir: &Path) -> u64 {
    count(
        dir,
        "SELECT (COUNT(DISTINCT ?s) AS ?n) WHERE { GRAPH <http://openworm.org/data> { ?s a ?t } }",
    )
}

#[test]
fn init_creates_layout_and_other_commands_need_it() {
    let tmp = TempDir::new("ds-init");
    let dir = tmp.path().join(".pow");
    // No .pow yet: every command but init says so.
    for args in [
        &["source", "list"][..],
        &["source", "show", "ConnectomeCSVDataSource:x"],
        &["export"],
        &["save", "x.toml"],
    ] {
        let err = fails(&dir, args);
        assert!(err.contains("no .pow directory"), "{err}");
        assert!(err.contains("run pow init"), "{err}");
    }
    // Default location, no flag and no POW_DIR: the message of the issue.
    let out = pow()
        .args(["source", "list"])
        .current_dir(tmp.path())
        .env_remove("POW_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "pow: no .pow directory here; run pow init\n");

    ok(&dir, &["init"]);
    assert!(dir.join("pow.toml").is_file());
    assert!(dir.join("store").is_dir());
    assert!(dir.join("graphs").is_dir());
    let config = std::fs::read_to_string(dir.join("pow.toml")).unwrap();
    assert!(
        config.contains("data_graph = \"http://openworm.org/data\""),
        "{config}"
    );
    assert!(config.contains("torrent_store"), "{config}");
    assert!(config.contains("download_dir"), "{config}");
    assert!(config.contains("trackers"), "{config}");
    // A second init refuses.
    let err = fails(&dir, &["init"]);
    assert!(err.contains("already exists"), "{err}");
    // An init killed after the store and before pow.toml (written last, whole or not at all)
    // left a .pow that init refused ("already exists") and every other command did not know
    // ("no .pow directory"): init takes it up again.
    std::fs::remove_file(dir.join("pow.toml")).unwrap();
    ok(&dir, &["init"]);
    ok(&dir, &["source", "list"]);

    // `pow init` with no flag creates ./.pow; POW_DIR is honoured.
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let out = pow()
        .arg("init")
        .current_dir(&cwd)
        .env_remove("POW_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cwd.join(".pow/pow.toml").is_file());
    let out = pow()
        .arg("init")
        .current_dir(&cwd)
        .env("POW_DIR", tmp.path().join("env-pow"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join("env-pow/pow.toml").is_file());
    let out = pow()
        .args(["source", "list"])
        .current_dir(&cwd)
        .env("POW_DIR", tmp.path().join("env-pow"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Bad usage is clap's exit 2.
    assert_eq!(run(&dir, &["source", "show"]).status.code(), Some(2));
}

/// Acceptance 1 (TOML form).
#[test]
fn seed_example_as_toml_saves_shows_and_lists() {
    let (_tmp, dir) = init("ds-seed-toml");
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    assert_eq!(
        ok(
            &dir,
            &["source", "show", "ConnectomeCSVDataSource:2000_connections"]
        ),
        SEED_SHOW
    );
    // Full IRIs (bare or in <>) are IDs too.
    assert_eq!(ok(&dir, &["source", "show", SEED_IRI]), SEED_SHOW);
    assert_eq!(
        ok(&dir, &["source", "show", &format!("<{SEED_IRI}>")]),
        SEED_SHOW
    );
    assert_eq!(
        ok(&dir, &["source", "list"]),
        "ConnectomeCSVDataSource:2000_connections\n"
    );
    assert_eq!(
        ok(&dir, &["source", "list", "--full"]),
        format!("{SEED_IRI}\n")
    );
    assert_eq!(
        ok(&dir, &["source", "list", "--kind", "CSVDataSource"]),
        "ConnectomeCSVDataSource:2000_connections\n"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["source", "list", "--json"])).unwrap();
    assert_eq!(list[0]["id"], "ConnectomeCSVDataSource:2000_connections");
    assert_eq!(list[0]["iri"], SEED_IRI);
    let shown: serde_json::Value = serde_json::from_str(&ok(
        &dir,
        &[
            "source",
            "show",
            "--json",
            "ConnectomeCSVDataSource:2000_connections",
        ],
    ))
    .unwrap();
    assert_eq!(shown[0]["class"], "ConnectomeCSVDataSource");
    assert_eq!(shown[0]["fields"][2]["name"], "torrent_file_name");
    assert_eq!(
        shown[0]["fields"][2]["values"][0],
        "d9da5ce947c6f1c127dfcdc2ede63320.torrent"
    );
    // Saving the same file again changes nothing.
    let before = triples(&dir);
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    assert_eq!(triples(&dir), before);
}

/// A TOML definition saved again with other values is the source's new state for the fields
/// it gives: their old values are replaced and the fields it leaves out kept, as `pow publish`
/// updates a record (a record with two torrents could not be loaded). An RDF file is merged:
/// its statements are added to those stored.
#[test]
fn saving_a_toml_definition_again_replaces_the_fields_it_gives() {
    let (tmp, dir) = init("ds-resave");
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    let v2 = tmp.path().join("v2.toml");
    std::fs::write(
        &v2,
        "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"2000_connections\"\n\
         torrent_file_name = \"0123456789abcdef0123456789abcdef.torrent\"\n\
         comment = \"version 2\"\n",
    )
    .unwrap();
    ok(&dir, &["save", path_str(&v2)]);
    let id = "ConnectomeCSVDataSource:2000_connections";
    assert_eq!(
        ok(&dir, &["source", "show", id]),
        "ConnectomeCSVDataSource
    CSV file name: 'connectome.csv'
    File name: 'connectome.csv'
    Torrent file name: '0123456789abcdef0123456789abcdef.torrent'
"
    );
    let comment = "SELECT ?c WHERE { ?s <http://www.w3.org/2000/01/rdf-schema#comment> ?c }";
    assert!(ok(&dir, &["source", "query", comment]).contains("version 2"));
    // The first version as Turtle is merged: both torrents are stated.
    ok(&dir, &["save", path_str(&fixture("seed.ttl"))]);
    assert!(ok(&dir, &["source", "show", id]).contains(
        "Torrent file name: '0123456789abcdef0123456789abcdef.torrent' \
         'd9da5ce947c6f1c127dfcdc2ede63320.torrent'"
    ));
}

/// `pow source create`, the ad-hoc form of the same definition: the same show output and the
/// same graph as `pow save seed.toml`; a second create, an unknown field and a malformed
/// `--set` are refused with one line and store nothing.
#[test]
fn source_create_makes_what_save_makes() {
    let (_tmp, dir) = init("ds-create");
    let id = ok(
        &dir,
        &[
            "source",
            "create",
            "ConnectomeCSVDataSource",
            "2000_connections",
            "--set",
            "csv_file_name=connectome.csv",
            "--set",
            "torrent_file_name=d9da5ce947c6f1c127dfcdc2ede63320.torrent",
        ],
    );
    assert_eq!(id, "ConnectomeCSVDataSource:2000_connections\n");
    assert_eq!(
        ok(
            &dir,
            &["source", "show", "ConnectomeCSVDataSource:2000_connections"]
        ),
        SEED_SHOW
    );
    let created = ok(&dir, &["export"]);
    let (_tmp2, saved_dir) = init("ds-create-saved");
    ok(&saved_dir, &["save", path_str(&fixture("seed.toml"))]);
    assert_eq!(
        created,
        ok(&saved_dir, &["export"]),
        "the same graph as pow save"
    );

    let before = triples(&dir);
    let again = fails(
        &dir,
        &[
            "source",
            "create",
            "ConnectomeCSVDataSource",
            "2000_connections",
        ],
    );
    assert!(again.contains("already exists"), "{again}");
    let unknown = fails(
        &dir,
        &[
            "source",
            "create",
            "ConnectomeCSVDataSource",
            "x",
            "--set",
            "colour=red",
        ],
    );
    assert!(unknown.contains("colour"), "{unknown}");
    let malformed = fails(
        &dir,
        &[
            "source",
            "create",
            "ConnectomeCSVDataSource",
            "y",
            "--set",
            "md5",
        ],
    );
    assert!(malformed.contains("expected FIELD=VALUE"), "{malformed}");
    // `--set key=` or `--set type=` named another source than TYPE KEY, past the check that
    // it does not exist: `--set key=2000_connections` changed the existing one.
    for field in ["key=2000_connections", "type=DataSource"] {
        let args = [
            "source",
            "create",
            "ConnectomeCSVDataSource",
            "zz",
            "--set",
            field,
        ];
        let refused = fails(&dir, &args);
        assert!(refused.contains("is given as TYPE KEY"), "{refused}");
    }
    assert_eq!(triples(&dir), before, "nothing stored by the refusals");
    // A key with `%` is checked under the IRI it is made under: created once, refused again.
    let percent = [
        "source",
        "create",
        "ConnectomeCSVDataSource",
        "a%41",
        "--set",
        "comment=1",
    ];
    ok(&dir, &percent);
    let again = fails(&dir, &percent);
    assert!(again.contains("already exists"), "{again}");
}

/// `pow export | head -c 100`: the reader goes away after 100 bytes of a long export, and pow
/// ends quietly of SIGPIPE, as `cat` would, not with a panic message about a broken pipe.
#[test]
fn export_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let (tmp, dir) = init("ds-pipe");
    let defs = tmp.path().join("big.toml");
    big_definitions(&defs, 2000);
    ok(&dir, &["save", path_str(&defs)]);
    let mut export = pow()
        .arg("--pow-dir")
        .arg(&dir)
        .arg("export")
        .env_remove("POW_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    export.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The read end is closed now (dropped above); the export is far longer than a pipe holds.
    let output = export.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    const SIGPIPE: i32 = 13; // on Linux
    assert_eq!(output.status.signal(), Some(SIGPIPE), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Acceptance 1 (Turtle form): same output, and the same graph as the TOML form.
#[test]
fn seed_example_as_turtle_saves_the_same_graph() {
    let (_tmp, dir) = init("ds-seed-ttl");
    ok(&dir, &["save", path_str(&fixture("seed.ttl"))]);
    assert_eq!(
        ok(
            &dir,
            &["source", "show", "ConnectomeCSVDataSource:2000_connections"]
        ),
        SEED_SHOW
    );
    assert_eq!(
        ok(&dir, &["source", "list"]),
        "ConnectomeCSVDataSource:2000_connections\n"
    );
    let (_tmp2, toml_dir) = init("ds-seed-ttl2");
    ok(&toml_dir, &["save", path_str(&fixture("seed.toml"))]);
    assert_eq!(ok(&dir, &["export"]), ok(&toml_dir, &["export"]));
}

/// Acceptance 2: the stored triples use the 2019 IRIs (checked by SPARQL).
#[test]
fn stored_triples_use_the_2019_iris() {
    let (_tmp, dir) = init("ds-iris");
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    let ask = r#"
        PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
        ASK {
          GRAPH <http://openworm.org/data> {
            <http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections>
              a <http://openworm.org/entities/ConnectomeCSVDataSource> ;
              <http://openworm.org/entities/data_sources/CSVDataSource#csv_file_name> "connectome.csv" ;
              <http://openworm.org/entities/data_sources/LocalFileDataSource#file_name> "connectome.csv" ;
              <http://openworm.org/entities/data_sources/LocalFileDataSource#torrent_file_name> "d9da5ce947c6f1c127dfcdc2ede63320.torrent" .
          }
          GRAPH <http://openworm.org/schema> {
            <http://openworm.org/entities/ConnectomeCSVDataSource> rdfs:subClassOf <http://openworm.org/entities/CSVDataSource> ; a rdfs:Class .
            <http://openworm.org/entities/CSVDataSource> rdfs:subClassOf <http://openworm.org/entities/LocalFileDataSource> .
            <http://openworm.org/entities/LocalFileDataSource> rdfs:subClassOf <http://openworm.org/entities/FileDataSource> .
            <http://openworm.org/entities/FileDataSource> rdfs:subClassOf <http://openworm.org/entities/DataSource> .
            <http://openworm.org/entities/data_sources/LocalFileDataSource#torrent_file_name> rdfs:label "Torrent file name" .
          }
          GRAPH <http://openworm.org/data/imports> {
            <http://openworm.org/data> <http://openworm.org/schema/Context/imports> <http://openworm.org/schema>
          }
        }"#;
    assert_eq!(ok(&dir, &["source", "query", ask]), "true\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["source", "query", "--json", ask])).unwrap();
    assert_eq!(json["boolean"], true);
    // Exactly those four statements in the data graph, literals plain xsd:string.
    let select = "SELECT ?p ?o WHERE { GRAPH <http://openworm.org/data> { ?s ?p ?o } } ORDER BY ?p";
    assert_eq!(
        ok(&dir, &["source", "query", select]),
        "?p\t?o\n\
         <http://openworm.org/entities/data_sources/CSVDataSource#csv_file_name>\t\"connectome.csv\"\n\
         <http://openworm.org/entities/data_sources/LocalFileDataSource#file_name>\t\"connectome.csv\"\n\
         <http://openworm.org/entities/data_sources/LocalFileDataSource#torrent_file_name>\t\"d9da5ce947c6f1c127dfcdc2ede63320.torrent\"\n\
         <http://www.w3.org/1999/02/22-rdf-syntax-ns#type>\t<http://openworm.org/entities/ConnectomeCSVDataSource>\n"
    );
    // CONSTRUCT gives sorted N-Triples.
    let construct = "CONSTRUCT { ?s a ?t } WHERE { GRAPH <http://openworm.org/data> { ?s a ?t } }";
    assert_eq!(
        ok(&dir, &["source", "query", construct]),
        format!("<{SEED_IRI}> <http://www.w3.org/1999/02/22-rdf-syntax-ns#type> <http://openworm.org/entities/ConnectomeCSVDataSource> .\n")
    );
    let err = fails(&dir, &["source", "query", "SELEC nonsense"]);
    assert!(err.contains("SPARQL"), "{err}");
}

/// Acceptance 3: the 2019 OpenWormData N-Triples for EmmonsConnectomeCSVDataSource.
#[test]
fn openwormdata_2019_ntriples_import_and_show() {
    let expected = "ConnectomeCSVDataSource
    CSV file name: 'herm_full_edgelist.csv'
    File name: 'herm_full_edgelist.csv'
";
    let id = "ConnectomeCSVDataSource:EmmonsConnectomeCSVDataSource";
    for command in ["save", "import"] {
        let (_tmp, dir) = init("ds-emmons");
        ok(&dir, &[command, path_str(&fixture("emmons-2019.nt"))]);
        assert_eq!(ok(&dir, &["source", "show", id]), expected, "{command}");
        assert_eq!(
            ok(
                &dir,
                &[
                    "source",
                    "show",
                    "http://openworm.org/entities/ConnectomeCSVDataSource/EmmonsConnectomeCSVDataSource"
                ]
            ),
            expected
        );
        assert_eq!(ok(&dir, &["source", "list"]), format!("{id}\n"));
        // Stored as given: the three triples, in the data graph, nothing added.
        assert_eq!(
            count(
                &dir,
                "SELECT (COUNT(*) AS ?n) WHERE { GRAPH <http://openworm.org/data> { ?s ?p ?o } }"
            ),
            3
        );
        // Both sources side by side, shown in order.
        ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
        assert_eq!(
            ok(
                &dir,
                &[
                    "source",
                    "show",
                    id,
                    "ConnectomeCSVDataSource:2000_connections"
                ]
            ),
            format!("{expected}{SEED_SHOW}")
        );
    }
}

/// Acceptance 4: each bad input gives its error and leaves the store unchanged.
#[test]
fn bad_inputs_error_and_store_nothing() {
    let (tmp, dir) = init("ds-bad");
    ok(&dir, &["save", path_str(&fixture("emmons-2019.nt"))]);
    let before = triples(&dir);
    let export_before = ok(&dir, &["export"]);
    let cases: &[(&str, &[&str])] = &[
        (
            "bad-class.toml",
            &["unknown class \"ConectomeCSVDataSource\"", "valid classes: DataSource, FileDataSource, LocalFileDataSource, CSVDataSource, ConnectomeCSVDataSource"],
        ),
        (
            "bad-field.toml",
            &["unknown field \"csv_filename\" for ConnectomeCSVDataSource", "valid fields: csv_file_name, csv_header"],
        ),
        (
            "bad-torrent.toml",
            &["bad torrent_file_name \"connectome.torrent\"", "32 hex"],
        ),
        (
            "bad-also.toml",
            &["conflicting values for file_name", "csv_file_name gives \"connectome.csv\"", "\"other.csv\""],
        ),
        (
            "bad-torrent.ttl",
            &["ConnectomeCSVDataSource:bad", "bad torrent_file_name"],
        ),
    ];
    for (file, needles) in cases {
        let err = fails(&dir, &["save", path_str(&fixture(file))]);
        for needle in *needles {
            assert!(err.contains(needle), "{file}: {err:?} lacks {needle:?}");
        }
        assert_eq!(triples(&dir), before, "{file} changed the store");
    }
    // Syntax errors and unknown formats: nothing stored either.
    let broken = tmp.path().join("broken.ttl");
    std::fs::write(&broken, "<http://a> <http://b> .").unwrap();
    let err = fails(&dir, &["save", path_str(&broken)]);
    assert!(err.contains("cannot parse"), "{err}");
    let other = tmp.path().join("x.csv");
    std::fs::write(&other, "a,b").unwrap();
    let err = fails(&dir, &["save", path_str(&other)]);
    assert!(err.contains("unknown format"), "{err}");
    let err = fails(&dir, &["save", path_str(&tmp.path().join("missing.toml"))]);
    assert!(err.contains("missing.toml"), "{err}");
    assert_eq!(ok(&dir, &["export"]), export_before);

    // Unknown IDs name themselves.
    let err = fails(&dir, &["source", "show", "ConnectomeCSVDataSource:nope"]);
    assert_eq!(
        err,
        "pow: unknown data source ConnectomeCSVDataSource:nope\n"
    );
    let err = fails(&dir, &["source", "show", "http://openworm.org/data"]);
    assert!(err.contains("http://openworm.org/data"), "{err}");
    let err = fails(&dir, &["source", "list", "--kind", "Nope"]);
    assert!(err.contains("unknown kind \"Nope\""), "{err}");
}

fn big_definitions(path: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"big_{i}\"\n\
             comment = \"source {i}\"\ncsv_file_name = \"file_{i}.csv\"\n\
             torrent_file_name = \"{i:032x}.torrent\"\n\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// `pow save DEFS` into `dir`, running in the background (stderr piped).
fn spawn_save(dir: &Path, defs: &Path) -> std::process::Child {
    pow()
        .arg("--pow-dir")
        .arg(dir)
        .arg("save")
        .arg(defs)
        .env_remove("POW_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Acceptance 5: `kill -9` during a save of 10,000 sources leaves all or none of it.
#[test]
fn kill_9_during_large_save_keeps_all_or_nothing() {
    const N: u64 = 10_000;
    let tmp = TempDir::new("ds-kill");
    let defs = tmp.path().join("big.toml");
    big_definitions(&defs, N as usize);

    // A full save, timed: the faster of two, so that one slowed by another test's load does
    // not put the kills below past the end of saves that run unhindered.
    let full = tmp.path().join("full");
    let mut took = Duration::MAX;
    for dir in [tmp.path().join("timing"), full.clone()] {
        ok(&dir, &["init"]);
        let start = Instant::now();
        ok(&dir, &["save", path_str(&defs)]);
        took = took.min(start.elapsed());
    }
    assert_eq!(sources(&full), N);
    assert_eq!(ok(&full, &["source", "list"]).lines().count(), N as usize);

    let schema_only = {
        let fresh = tmp.path().join("fresh");
        ok(&fresh, &["init"]);
        triples(&fresh)
    };
    let all = triples(&full);
    // Kill at several points of a save of the same size.
    let mut killed_while_running = 0;
    for (i, percent) in [5u32, 25, 50, 75, 95].iter().enumerate() {
        let dir = tmp.path().join(format!("kill{i}"));
        ok(&dir, &["init"]);
        let mut child = spawn_save(&dir, &defs);
        std::thread::sleep(took * *percent / 100);
        if child.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        // SIGKILL, as kill -9.
        child.kill().unwrap();
        child.wait().unwrap();
        // It reopens, and holds all or none.
        let n = sources(&dir);
        assert!(n == 0 || n == N, "kill at {percent}%: {n} sources stored");
        eprintln!("kill -9 at {percent}% of {took:?}: {n} sources after reopen");
        let t = triples(&dir);
        assert!(
            t == schema_only || t == all,
            "kill at {percent}%: {t} triples"
        );
        // And it still works: the save completes afterwards.
        if i == 0 {
            ok(&dir, &["save", path_str(&defs)]);
            assert_eq!(sources(&dir), N);
        }
    }
    assert!(
        killed_while_running >= 3,
        "the save ({took:?}) ended before most kills"
    );
}

/// Commands started together take turns at the graph store, which one process at a time may
/// open: a `source list` started while a large save holds it waits, and lists what the save
/// stored. It used to fail at once ("While lock file: ... Resource temporarily unavailable").
#[test]
fn a_command_waits_while_another_holds_the_graph_store() {
    use std::os::unix::fs::MetadataExt;
    const N: usize = 20_000;
    let tmp = TempDir::new("ds-busy");
    let defs = tmp.path().join("big.toml");
    big_definitions(&defs, N);
    let dir = tmp.path().join("pow");
    ok(&dir, &["init"]);
    let lock_inode = std::fs::metadata(dir.join("store/LOCK")).unwrap().ino();
    let save = spawn_save(&dir, &defs);
    // The save holds the store once /proc/locks lists its lock on the store's LOCK file.
    let (pid, inode) = (format!(" {} ", save.id()), format!(":{lock_inode} "));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        if locks
            .lines()
            .any(|l| l.contains(&pid) && l.contains(&inode))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the save never locked the store");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let listed = run(&dir, &["source", "list"]);
    let waited = started.elapsed();
    let save = save.wait_with_output().unwrap();
    assert!(save.status.success(), "save: {}", stderr(&save));
    assert!(listed.status.success(), "list: {}", stderr(&listed));
    let lines = stdout(&listed).lines().count();
    println!("source list started during the save: {lines} sources after {waited:?}");
    assert_eq!(lines, N);
}

/// Two `pow init` of one directory at once: one initialises it, the other says it already
/// exists. The second used to fail with RocksDB's own "While lock file: ... Resource
/// temporarily unavailable" whenever the two overlapped.
#[test]
fn two_inits_at_once_initialise_once_and_say_so() {
    let tmp = TempDir::new("ds-init-race");
    for round in 0..6 {
        let dir = tmp.path().join(format!("pow-{round}"));
        let spawn = || {
            pow()
                .arg("--pow-dir")
                .arg(&dir)
                .arg("init")
                .env_remove("POW_DIR")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let succeeded = outs.iter().filter(|o| o.status.success()).count();
        let errors: Vec<String> = outs
            .iter()
            .filter(|o| !o.status.success())
            .map(stderr)
            .collect();
        assert_eq!(succeeded, 1, "round {round}: {errors:?}");
        assert!(
            errors[0].contains("already exists"),
            "round {round}: {errors:?}"
        );
        ok(&dir, &["source", "list"]);
    }
}

/// Acceptance 6: export, then import into a fresh .pow, round-trips the graph exactly.
#[test]
fn export_import_round_trips_exactly() {
    let (tmp, dir) = init("ds-export");
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    ok(&dir, &["save", path_str(&fixture("emmons-2019.nt"))]);
    // A value that needs escaping, a language tag and a blank node survive too.
    let extra = tmp.path().join("extra.trig");
    std::fs::write(
        &extra,
        "<http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections> \
         <http://www.w3.org/2000/01/rdf-schema#comment> \"it's \\\"quoted\\\"\\nand é\"@en .\n\
         GRAPH <http://example.org/g> { _:b1 <http://example.org/p> \"1\"^^<http://www.w3.org/2001/XMLSchema#integer> . }\n",
    )
    .unwrap();
    ok(&dir, &["save", path_str(&extra)]);
    let export = ok(&dir, &["export"]);
    // Sorted and stable.
    let lines: Vec<&str> = export.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    assert_eq!(ok(&dir, &["export"]), export);
    assert_eq!(export.lines().count() as u64, triples(&dir));

    for (format, file) in [("nquads", "export.nq"), ("turtle", "export.ttl")] {
        let file = tmp.path().join(file);
        ok(
            &dir,
            &["export", "--format", format, "--output", path_str(&file)],
        );
        let fresh = tmp.path().join(format!("fresh-{format}"));
        ok(&fresh, &["init"]);
        ok(&fresh, &["import", path_str(&file)]);
        assert_eq!(ok(&fresh, &["export"]), export, "{format}");
        assert_eq!(
            ok(
                &fresh,
                &["source", "show", "ConnectomeCSVDataSource:2000_connections"]
            ),
            SEED_SHOW
        );
    }
    // The comment shows in list.
    let list = ok(&dir, &["source", "list"]);
    assert!(
        list.starts_with("ConnectomeCSVDataSource:2000_connections\tit's \"quoted\""),
        "{list}"
    );
}

/// `pow export --graphs`: the 2019 git layout, one sorted N-Triples file per graph plus an index.
#[test]
fn export_graphs_writes_the_2019_layout() {
    let (_tmp, dir) = init("ds-graphs");
    ok(&dir, &["save", path_str(&fixture("seed.toml"))]);
    ok(&dir, &["export", "--graphs"]);
    let index = std::fs::read_to_string(dir.join("graphs/index")).unwrap();
    let graphs: Vec<&str> = index
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    assert_eq!(
        graphs,
        [
            "http://openworm.org/data",
            "http://openworm.org/data/imports",
            "http://openworm.org/schema"
        ]
    );
    let data_file = index.lines().next().unwrap().split_once(' ').unwrap().0;
    assert!(
        data_file.len() == 64 + 3 && data_file.ends_with(".nt"),
        "{data_file}"
    );
    let data = std::fs::read_to_string(dir.join("graphs").join(data_file)).unwrap();
    assert_eq!(data.lines().count(), 4);
    assert!(data.starts_with(&format!(
        "<{SEED_IRI}> <http://openworm.org/entities/data_sources/CSVDataSource#csv_file_name> \"connectome.csv\" .\n"
    )));
    // Stable: a second run writes the same bytes. A graph no longer in the store goes, and so
    // does what a killed export left (files are written whole, by temp file and rename).
    let gone = dir.join("graphs").join(format!("{}.nt", "0".repeat(64)));
    let left = dir.join("graphs").join(".index.0.4194305.tmp");
    std::fs::write(&gone, "<a> <b> <c> .\n").unwrap();
    std::fs::write(&left, "half an ind").unwrap();
    ok(&dir, &["export", "--graphs"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("graphs").join(data_file)).unwrap(),
        data
    );
    assert!(!gone.exists() && !left.exists());
    assert_eq!(std::fs::read_dir(dir.join("graphs")).unwrap().count(), 4);
    // `-o FILE`: what stdout gets, written whole (by rename), keeping the file's permissions;
    // through a symlink, the file it names.
    use std::os::unix::fs::PermissionsExt;
    let out = dir.join("export.nq");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(&dir, &["export", "-o", path_str(&out)]);
    let stdout = ok(&dir, &["export"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stdout);
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let link = dir.join("latest.nq");
    std::os::unix::fs::symlink("export.nq", &link).unwrap();
    std::fs::write(&out, "old").unwrap();
    ok(&dir, &["export", "-o", path_str(&link)]);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), stdout);
}

/// `pow source kinds`: DataSource and its subclasses, the 2019 file hierarchy
/// (`PyOpenWorm/data_trans/`: FileDataSource, LocalFileDataSource, CSVDataSource,
/// ConnectomeCSVDataSource), by name or, with `--full`, IRI; `source list --kind` takes each.
#[test]
fn source_kinds_lists_the_2019_hierarchy() {
    let (_tmp, dir) = init("ds-kinds");
    let names = ok(&dir, &["source", "kinds"]);
    assert_eq!(
        names,
        "CSVDataSource\nConnectomeCSVDataSource\nDataSource\nFileDataSource\nLocalFileDataSource\n"
    );
    let iris = ok(&dir, &["source", "kinds", "--full"]);
    for (name, iri) in names.lines().zip(iris.lines()) {
        assert_eq!(iri, format!("http://openworm.org/entities/{name}"));
        ok(&dir, &["source", "list", "--kind", name]);
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&dir, &["source", "kinds", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5, "{json}");
}

/// A DataSource class an imported schema adds (OpenWormData's `NeuronCSVDataSource`, a
/// subclass of `CSVDataSource` in the schema graph) is a kind like pow's own: its instances
/// are counted by `save`, checked (the `also` rule, hashes), listed (also by `--kind`), shown
/// and loadable by the fields of the class it extends, and `kinds` names it. They used to be
/// listed only: `show` said "is not a DataSource", so they could not be loaded, and `--kind`
/// refused the class.
#[test]
fn an_imported_schemas_datasource_classes_are_kinds_too() {
    let (tmp, dir) = init("ds-imported-kind");
    let nq = tmp.path().join("neurons.nq");
    let (e, schema, data) = (
        "http://openworm.org/entities",
        "<http://openworm.org/schema>",
        "<http://openworm.org/data>",
    );
    let sub = "<http://www.w3.org/2000/01/rdf-schema#subClassOf>";
    let a = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>";
    std::fs::write(
        &nq,
        format!(
            "<{e}/NeuronCSVDataSource> {sub} <{e}/CSVDataSource> {schema} .\n\
             <{e}/NeuronCSVDataSource/n1> {a} <{e}/NeuronCSVDataSource> {data} .\n\
             <{e}/NeuronCSVDataSource/n1> <{e}/data_sources/CSVDataSource#csv_file_name> \"neurons.csv\" {data} .\n\
             <{e}/NeuronCSVDataSource/n1> <{e}/data_sources/LocalFileDataSource#torrent_file_name> \"d9da5ce947c6f1c127dfcdc2ede63320.torrent\" {data} .\n\
             <{e}/NeuronCSVDataSource/n1> <http://www.w3.org/2000/01/rdf-schema#comment> \"neurons\" {data} .\n"
        ),
    )
    .unwrap();
    let saved = ok(&dir, &["save", path_str(&nq)]);
    assert!(saved.starts_with("saved 1 data source(s)"), "{saved}");
    let n1 = format!("{e}/NeuronCSVDataSource/n1");
    assert_eq!(ok(&dir, &["source", "list"]), format!("{n1}\tneurons\n"));
    assert_eq!(
        ok(&dir, &["source", "list", "--kind", "NeuronCSVDataSource"]),
        format!("{n1}\tneurons\n")
    );
    assert_eq!(
        ok(&dir, &["source", "list", "--kind", "CSVDataSource"]),
        format!("{n1}\tneurons\n")
    );
    assert_eq!(
        ok(
            &dir,
            &["source", "list", "--kind", "ConnectomeCSVDataSource"]
        ),
        ""
    );
    // Typed both as the imported class and as the class it extends: shown as the imported.
    let both = tmp.path().join("both.nq");
    std::fs::write(
        &both,
        format!(
            "<{e}/NeuronCSVDataSource/n3> {a} <{e}/NeuronCSVDataSource> {data} .\n\
             <{e}/NeuronCSVDataSource/n3> {a} <{e}/CSVDataSource> {data} .\n"
        ),
    )
    .unwrap();
    ok(&dir, &["save", path_str(&both)]);
    let n3 = format!("{e}/NeuronCSVDataSource/n3");
    assert_eq!(ok(&dir, &["source", "show", &n3]), "NeuronCSVDataSource\n");
    let shown = ok(&dir, &["source", "show", &n1]);
    assert_eq!(
        shown,
        "NeuronCSVDataSource\n    CSV file name: 'neurons.csv'\n    File name: 'neurons.csv'\n    \
         Torrent file name: 'd9da5ce947c6f1c127dfcdc2ede63320.torrent'\n"
    );
    // Checked as a CSVDataSource: a malformed hash is refused, and nothing is written.
    let bad = tmp.path().join("bad.nq");
    std::fs::write(
        &bad,
        format!(
            "<{e}/NeuronCSVDataSource/n2> {a} <{e}/NeuronCSVDataSource> {data} .\n\
             <{e}/NeuronCSVDataSource/n2> <{e}/data_sources/FileDataSource#md5> \"zz\" {data} .\n"
        ),
    )
    .unwrap();
    let err = fails(&dir, &["save", path_str(&bad)]);
    assert!(err.contains("md5"), "{err}");
    assert_eq!(
        ok(&dir, &["source", "list"]),
        format!("{n1}\tneurons\n{n3}\n"),
        "nothing of the refused file was written"
    );
    let kinds = ok(&dir, &["source", "kinds"]);
    assert!(kinds.lines().any(|k| k == "NeuronCSVDataSource"), "{kinds}");
    let err = fails(&dir, &["source", "list", "--kind", "GlialCSVDataSource"]);
    assert!(err.contains("NeuronCSVDataSource"), "{err}");
}

/// `pow source derivs ID`: the sources whose `source` field names ID, and so on down, as a
/// tree (2019's `pow source derivs`, owmeta-core's `owm source derivs`); one with two parents
/// is under both, shown in full under the first printed; a cycle ends; an ID that is not
/// there, or not a data source, is an error.
#[test]
fn source_derivs_prints_the_derivation_tree() {
    let (tmp, dir) = init("ds-derivs");
    let defs = tmp.path().join("derived.toml");
    std::fs::write(
        &defs,
        r#"
[[source]]
type = "LocalFileDataSource"
key = "raw"
file_name = "raw.csv"

[[source]]
type = "CSVDataSource"
key = "cleaned"
csv_file_name = "cleaned.csv"
source = "LocalFileDataSource:raw"

[[source]]
type = "ConnectomeCSVDataSource"
key = "connectome"
csv_file_name = "connectome.csv"
source = "CSVDataSource:cleaned"

[[source]]
type = "LocalFileDataSource"
key = "plots"
file_name = "plots.zip"
source = ["LocalFileDataSource:raw", "CSVDataSource:cleaned"]

[[source]]
type = "LocalFileDataSource"
key = "unrelated"
file_name = "other.csv"

[[source]]
type = "LocalFileDataSource"
key = "a"
source = "LocalFileDataSource:b"

[[source]]
type = "LocalFileDataSource"
key = "b"
source = "LocalFileDataSource:a"

[[source]]
type = "LocalFileDataSource"
key = "itself"
source = "LocalFileDataSource:itself"
"#,
    )
    .unwrap();
    ok(&dir, &["save", path_str(&defs)]);
    // `plots` derives from `raw` and from `cleaned`: under both.
    assert_eq!(
        ok(&dir, &["source", "derivs", "LocalFileDataSource:raw"]),
        "LocalFileDataSource:raw
    CSVDataSource:cleaned
        ConnectomeCSVDataSource:connectome
        LocalFileDataSource:plots
    LocalFileDataSource:plots (see above)
"
    );
    assert_eq!(
        ok(&dir, &["source", "derivs", "CSVDataSource:cleaned"]),
        "CSVDataSource:cleaned
    ConnectomeCSVDataSource:connectome
    LocalFileDataSource:plots
"
    );
    assert_eq!(
        ok(&dir, &["source", "derivs", "LocalFileDataSource:unrelated"]),
        "LocalFileDataSource:unrelated\n"
    );
    assert_eq!(
        ok(&dir, &["source", "derivs", "LocalFileDataSource:a"]),
        "LocalFileDataSource:a\n    LocalFileDataSource:b\n        LocalFileDataSource:a (see above)\n"
    );
    assert_eq!(
        ok(&dir, &["source", "derivs", "LocalFileDataSource:itself"]),
        "LocalFileDataSource:itself\n    LocalFileDataSource:itself (see above)\n"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(
        &dir,
        &["source", "derivs", "LocalFileDataSource:raw", "--json"],
    ))
    .unwrap();
    assert_eq!(json["derived"][0]["id"], "CSVDataSource:cleaned");
    assert_eq!(json["derived"][1]["id"], "LocalFileDataSource:plots");
    assert_eq!(json["derived"][1]["repeated"], true);
    assert_eq!(
        json["derived"][0]["derived"][0]["iri"],
        "http://openworm.org/entities/ConnectomeCSVDataSource/connectome"
    );
    let err = fails(&dir, &["source", "derivs", "LocalFileDataSource:nothing"]);
    assert!(
        err.contains("unknown data source LocalFileDataSource:nothing"),
        "{err}"
    );
    let class = "http://openworm.org/entities/CSVDataSource";
    let err = fails(&dir, &["source", "derivs", class]);
    assert!(err.contains("is not a DataSource"), "{err}");
}
