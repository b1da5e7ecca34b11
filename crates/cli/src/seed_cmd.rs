//! `pow seed` (check the data, then serve it) and `pow verify` (the check alone).

use crate::CmdResult;
use clap::Args;

use pow_metainfo::Metainfo;
use pow_picker::Picker;
use pow_storage::{Resume, Storage};
use pow_wire::Bitfield;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct SeedArgs {
    /// The .torrent file.
    torrent: PathBuf,
    /// Directory that holds the torrent's content (the torrent's name inside it).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    swarm: crate::announce::SwarmArgs,
    /// Print a JSON line when seeding starts.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    torrent: PathBuf,
    /// Directory that holds the torrent's content.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    json: bool,
}

/// Checks every piece on disk (with a progress bar on a terminal).
pub(crate) fn check(
    metainfo: &Arc<Metainfo>,
    data: &std::path::Path,
) -> Result<(Arc<Storage>, Bitfield), Box<dyn std::error::Error>> {
    check_in_order(metainfo, data, &std::sync::atomic::AtomicU32::new(0))
}

/// [`check`], keeping `verified_prefix` at the number of leading pieces found good so far
/// (see `Storage::check_existing_in_order`).
pub(crate) fn check_in_order(
    metainfo: &Arc<Metainfo>,
    data: &std::path::Path,
    verified_prefix: &std::sync::atomic::AtomicU32,
) -> Result<(Arc<Storage>, Bitfield), Box<dyn std::error::Error>> {
    let storage = Arc::new(Storage::new(metainfo.clone(), data)?);
    let pieces = u64::from(metainfo.geometry.piece_count());
    let have = with_piece_bar("checking", pieces, false, |progress| {
        storage.check_existing_in_order(pow_storage::check_threads(), progress, verified_prefix)
    })?;
    Ok((storage, have))
}

/// What is verified on disk: from the resume file when it can be trusted, else every piece
/// checked (`pow seed` and `pow download`; `pow verify` always checks everything).
pub(crate) fn resume_or_check(
    metainfo: &Arc<Metainfo>,
    data: &std::path::Path,
    quiet: bool,
) -> Result<(Arc<Storage>, Resume), Box<dyn std::error::Error>> {
    let storage = Arc::new(Storage::new(metainfo.clone(), data)?);
    let check = |progress: &(dyn Fn(u32) + Sync)| {
        storage.resume_or_check(pow_storage::check_threads(), progress)
    };
    let resume = if quiet {
        check(&|_| {})?
    } else {
        with_piece_bar(
            "checking",
            u64::from(metainfo.geometry.piece_count()),
            false,
            check,
        )?
    };
    if let Some(why) = &resume.rejected {
        eprintln!("pow: resume file not used ({why}); checked the data instead");
    }
    Ok((storage, resume))
}

/// Runs `work` on `pieces` pieces (checking or hashing them, as `doing` says) with a progress
/// bar on a terminal, unless `quiet`; `work` tells it how many are done.
pub(crate) fn with_piece_bar<T, E>(
    doing: &str,
    pieces: u64,
    quiet: bool,
    work: impl FnOnce(&(dyn Fn(u32) + Sync)) -> Result<T, E>,
) -> Result<T, E> {
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(pieces);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{doing} {{bar:40}} {{pos}}/{{len}} pieces, eta {{eta}}"
            ))
            .expect("valid template"),
        );
        bar
    });
    // Threads report out of order: the bar only moves on.
    let shown = std::sync::Mutex::new(0u64);
    let result = work(&|n| {
        if let Some(bar) = &bar {
            let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
            if u64::from(n) > *shown {
                *shown = u64::from(n);
                bar.set_position(*shown);
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// `--data` of `pow verify` and `pow seed`: a directory that exists. These read what is
/// there; a mistyped one used to be created (with a resume file in it), and `pow seed` then
/// served nothing and ended with success.
fn existing_data_dir(data: &std::path::Path, metainfo: &Metainfo) -> Result<(), String> {
    match std::fs::metadata(data) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("--data {}: not a directory", data.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "--data {}: no such directory (give the one that holds {})",
            data.display(),
            metainfo.name
        )),
        Err(e) => Err(format!("--data {}: {e}", data.display())),
    }
}

pub fn verify(args: VerifyArgs) -> CmdResult {
    let metainfo = Arc::new(Metainfo::from_file(&args.torrent)?);
    existing_data_dir(&args.data, &metainfo)?;
    let (storage, have) = check(&metainfo, &args.data)?;
    let bad: Vec<u32> = (0..have.len()).filter(|&i| !have.get(i)).collect();
    let files_of = |piece: u32| -> Vec<String> {
        let geometry = &metainfo.geometry;
        let p = geometry.piece(piece).expect("valid");
        geometry
            .piece_spans(p)
            .iter()
            .map(|s| storage.file_path(s.file).display().to_string())
            .collect()
    };
    if args.json {
        let bad_json: Vec<_> = bad
            .iter()
            .map(|&p| serde_json::json!({"piece": p, "files": files_of(p)}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "info_hash": metainfo.info_hash.to_hex(),
                "pieces_total": have.len(),
                "pieces_good": have.count(),
                "bad_pieces": bad_json,
            })
        );
    } else {
        for &p in bad.iter().take(100) {
            println!("bad piece {p}: {}", files_of(p).join(", "));
        }
        if bad.len() > 100 {
            println!("... and {} more bad pieces", bad.len() - 100);
        }
        println!(
            "{}: {}/{} pieces good",
            metainfo.name,
            have.count(),
            have.len()
        );
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} pieces are bad or missing", bad.len(), have.len()).into())
    }
}

pub fn seed(args: SeedArgs) -> CmdResult {
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Seed)?;
    runtime.block_on(seed_async(args))
}

async fn seed_async(args: SeedArgs) -> CmdResult {
    let metainfo = Arc::new(Metainfo::from_file(&args.torrent)?);
    existing_data_dir(&args.data, &metainfo)?;
    let (storage, resume) = {
        let metainfo = metainfo.clone();
        let data = args.data.clone();
        tokio::task::spawn_blocking(move || {
            resume_or_check(&metainfo, &data, false).map_err(|e| e.to_string())
        })
        .await??
    };
    let have = resume.have;
    let good = have.count();
    if good == 0 && !have.is_empty() {
        return Err(format!(
            "nothing to seed: none of the {} pieces of {} is in {} (--data is the directory \
             that holds {})",
            have.len(),
            metainfo.name,
            args.data.display(),
            metainfo.name
        )
        .into());
    }
    if good < have.len() {
        eprintln!(
            "pow: warning: {} of {} pieces are bad or missing: they are neither served nor \
             fetched (`pow download` into the same directory repairs them)",
            have.len() - good,
            have.len()
        );
    }
    let mut picker = Picker::new(metainfo.geometry.clone(), have);
    // A seed serves what it has and fetches nothing: the bad pieces may be local edits, and
    // `pow download` into the same directory is the way to repair them.
    picker.select_files(&[]);
    let (torrent, announcer) = args.swarm.join(storage, picker, None).await?;
    let port = torrent
        .listen_addr()
        .map_or(args.swarm.port, |addr| addr.port());
    if args.json {
        report_line!(
            "{}",
            serde_json::json!({
                "seeding": metainfo.info_hash.to_hex(),
                "name": metainfo.name,
                "pieces_good": good,
                "pieces_total": metainfo.geometry.piece_count(),
                "resume": resume.source.as_str(),
                "port": port,
            })
        );
    } else {
        eprintln!(
            "seeding {} ({}/{} pieces) on port {}; Ctrl-C to stop",
            metainfo.name,
            good,
            metainfo.geometry.piece_count(),
            port
        );
    }
    // Recorded now, so the next start skips the check (a seed writes nothing later).
    if let Err(e) = torrent.save_resume(pow_storage::Durability::Synced).await {
        eprintln!("pow: warning: cannot save the resume file: {e}");
    }
    crate::download_cmd::shutdown_signal().await;
    let s = torrent.snapshot();
    torrent.shutdown();
    if let Some(a) = announcer {
        a.stop().await;
    }
    for (peer, bytes) in torrent.sent_by_peer() {
        eprintln!("uploaded to {peer}: {bytes} bytes");
    }
    let (others, others_bytes) = torrent.sent_to_others();
    if others > 0 {
        eprintln!("uploaded to {others} other peer addresses: {others_bytes} bytes");
    }
    eprintln!("stopped: {} bytes uploaded", s.uploaded);
    eprintln!(
        "connections: {} plaintext, {} encrypted handshake then plaintext, {} RC4; {} over uTP",
        s.connections_plaintext,
        s.connections_encrypted_handshake,
        s.connections_rc4,
        s.connections_utp
    );
    if s.pex_sent + s.pex_received > 0 {
        eprintln!(
            "peer exchange: {} messages sent, {} received ({} new peers)",
            s.pex_sent, s.pex_received, s.peers_from_pex
        );
    }
    Ok(())
}
