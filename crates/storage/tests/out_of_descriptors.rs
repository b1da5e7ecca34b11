//! The process runs out of file descriptors while a torrent of many files is written (in pow,
//! sockets take them too): the storage closes handles of its pool and opens again, rather
//! than failing the write. The kernel says EMFILE for real: this binary lowers its own soft
//! limit of open files (it holds this one test, so no other test shares the limit).

use pow_metainfo::create::{create, CreateOptions};
use pow_storage::{OpenFiles, Storage};
use std::sync::Arc;

const FILES: usize = 64;
const FILE_LENGTH: usize = 3000;
/// About how many more descriptors the process may open once the limit is lowered (the limit
/// caps descriptor numbers, so a gap below the highest one open adds to it).
const ROOM: u64 = 12;

fn descriptors_open() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_soft_limit(soft: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let before = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        before
    }
}

#[test]
fn a_write_that_meets_too_many_open_files_closes_pool_handles_and_goes_on() {
    let dir = std::env::temp_dir().join(format!("pow-storage-emfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("src/set");
    std::fs::create_dir_all(&src).unwrap();
    let content: Vec<u8> = (0..FILES * FILE_LENGTH)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    for (i, bytes) in content.chunks(FILE_LENGTH).enumerate() {
        std::fs::write(src.join(format!("slice-{i:03}.tif")), bytes).unwrap();
    }
    let options = CreateOptions {
        piece_length: Some(16384),
        ..CreateOptions::default()
    };
    let metainfo = Arc::new(create(&src, &options).unwrap().metainfo);
    let geometry = metainfo.geometry.clone();

    // A pool that would keep every file open: only the kernel's limit stops it.
    let pool = OpenFiles::with_capacity(10 * FILES);
    let storage = Storage::with_open_files(metainfo, &dir.join("out"), pool.clone()).unwrap();
    let before = set_soft_limit(descriptors_open() + ROOM);
    let mut written = Ok(());
    for index in 0..geometry.piece_count() {
        let piece = geometry.piece(index).unwrap();
        let start = geometry.piece_offset(piece) as usize;
        let size = geometry.piece_size(piece) as usize;
        written = storage.write_block(piece, 0, &content[start..start + size]);
        if written.is_err() {
            break;
        }
    }
    let open_at_end = pool.open();
    set_soft_limit(before);
    written.unwrap();
    // The pool closes files only when told to make room: fewer open than written means the
    // kernel's refusals did.
    assert!(
        open_at_end < FILES,
        "{open_at_end} of {FILES} files open: none was closed"
    );
    for index in 0..geometry.piece_count() {
        let piece = geometry.piece(index).unwrap();
        assert!(storage.verify_piece(piece).unwrap(), "piece {index}");
    }
    for (i, bytes) in content.chunks(FILE_LENGTH).enumerate() {
        let path = dir.join(format!("out/set/slice-{i:03}.tif"));
        assert_eq!(std::fs::read(path).unwrap(), bytes, "file {i}");
    }
    drop(storage);
    std::fs::remove_dir_all(&dir).unwrap();
}
