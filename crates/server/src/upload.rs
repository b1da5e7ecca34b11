//! Receiving one upload: the multipart file field is streamed to a temporary file while its
//! MD5 and SHA-256 are computed; the size limit is enforced as bytes arrive; the result is
//! checked to be a zip by its bytes. Whatever goes wrong, the temporary file is removed (also
//! when the client goes away and the request is dropped mid-stream).

use crate::{FORM_OVERHEAD, MAX_DESCRIPTION_BYTES, MAX_DESCRIPTION_CHARS};
use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartError};
use futures_util::StreamExt as _;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
// md-5 0.11 (8% faster here than 0.10) implements digest 0.11; sha2 is still on digest 0.10.
use md5::{Digest as _, Md5};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// A file removed when dropped, unless [`TempFile::forget`] is called (after it was renamed).
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub(crate) fn new(dir: &Path) -> TempFile {
        let name = format!("{:016x}.part", rand::random::<u64>());
        TempFile {
            path: dir.join(name),
            keep: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn forget(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A complete, checked upload waiting in `incoming/`.
pub struct Received {
    pub file: TempFile,
    /// The name to store it under (see [`stored_name`]).
    pub name: String,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the file is larger than the upload limit of {0} bytes")]
    TooLarge(u64),
    #[error("the file is empty")]
    Empty,
    #[error("not a zip archive: {0}")]
    NotZip(&'static str),
    #[error("the form has no file (field \"file\")")]
    NoFile,
    #[error("{0}")]
    BadForm(String),
    #[error(
        "the server's disk is full: the upload did not fit (the disk filled once {arrived} of \
         its bytes had arrived); nothing was kept"
    )]
    DiskFull { arrived: u64 },
    #[error("the upload sent nothing for {} s, and was dropped", .0.as_secs_f64())]
    Stalled(std::time::Duration),
    #[error(
        "the upload was too slow, and was dropped: {received} bytes in {seconds:.1} s, where the \
         server asks for {min_rate} bytes a second"
    )]
    TooSlow {
        received: u64,
        seconds: f64,
        min_rate: u64,
    },
    #[error("cannot store the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// How fast an upload must come: something every `idle`, and on average `min_rate` bytes a
/// second after its first `idle` (as Apache's `mod_reqtimeout` MinRate). Without the average,
/// a client sending a byte now and then held an upload slot for ever.
pub struct Pace {
    started: tokio::time::Instant,
    idle: std::time::Duration,
    min_rate: u64,
    received: u64,
}

impl Pace {
    pub fn new(idle: std::time::Duration, min_rate: u64) -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            idle,
            min_rate: min_rate.max(1),
            received: 0,
        }
    }

    /// `next`, the form's next part, if it comes in time.
    async fn next<T>(
        &self,
        next: impl std::future::Future<Output = Result<T, MultipartError>>,
    ) -> Result<T, UploadError> {
        let owed = std::time::Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        let too_slow_at = self.started + self.idle + owed;
        let idle_at = tokio::time::Instant::now() + self.idle;
        match tokio::time::timeout_at(idle_at.min(too_slow_at), next).await {
            Ok(part) => Ok(part?),
            Err(_) if idle_at <= too_slow_at => Err(UploadError::Stalled(self.idle)),
            Err(_) => Err(UploadError::TooSlow {
                received: self.received,
                seconds: self.started.elapsed().as_secs_f64(),
                min_rate: self.min_rate,
            }),
        }
    }

    /// The field's next chunk, if it comes in time.
    async fn chunk(
        &mut self,
        field: &mut Field<'_>,
    ) -> Result<Option<axum::body::Bytes>, UploadError> {
        let chunk = self.next(field.chunk()).await?;
        self.received += chunk.as_ref().map_or(0, |c| c.len() as u64);
        Ok(chunk)
    }
}

/// Counts an upload's body as it is read, against the file bytes the form has handed over.
/// Everything else (multipart framing, part headers, the description, unknown fields) may
/// take [`FORM_OVERHEAD`] bytes. The multipart parser keeps what comes before a boundary in
/// memory until it finds one, so without this a body that never sends the boundary was held
/// whole (up to the upload limit, or without end when chunked).
#[derive(Default)]
pub struct FormMeter {
    read: AtomicU64,
    file: AtomicU64,
    over: AtomicBool,
}

impl FormMeter {
    /// `body`, counted here; it fails once the bytes that are not the file's exceed
    /// [`FORM_OVERHEAD`]. It hands over one chunk per poll, so the parser looks at each chunk
    /// (and gives the file's bytes on) before it takes the next.
    pub fn meter(self: &Arc<Self>, body: Body) -> Body {
        Body::from_stream(Metered {
            body: body.into_data_stream(),
            meter: self.clone(),
            yield_next: false,
            last: 0,
        })
    }

    fn file_bytes(&self, len: usize) {
        self.file.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Whether the body was stopped for too much that is not the file.
    fn stopped(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

struct Metered {
    body: axum::body::BodyDataStream,
    meter: Arc<FormMeter>,
    yield_next: bool,
    /// The size of the chunk handed over last: the parser may still hold the file's bytes
    /// of it when it asks for the next (a chunk that ends a part's headers and starts its
    /// file; hyper's chunks grow to 400 KiB on a connection that carried a large body).
    last: u64,
}

impl futures_util::Stream for Metered {
    type Item = Result<axum::body::Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if std::mem::take(&mut self.yield_next) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let meter = self.meter.clone();
        let read = meter.read.load(Ordering::Relaxed);
        let not_file = read
            .saturating_sub(self.last)
            .saturating_sub(meter.file.load(Ordering::Relaxed));
        if not_file > FORM_OVERHEAD {
            meter.over.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(std::io::Error::other("too much form overhead"))));
        }
        let next = std::pin::pin!(self.body.next()).poll(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            meter.read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.last = chunk.len() as u64;
            self.yield_next = true;
        }
        next.map(|item| item.map(|chunk| chunk.map_err(std::io::Error::other)))
    }
}

/// Bytes free for unprivileged writes on the file system that holds `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is written by statvfs before it is read.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Some(blocks.saturating_mul(block_size))
}

impl From<MultipartError> for UploadError {
    fn from(e: MultipartError) -> UploadError {
        let detail = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        UploadError::BadForm(format!(
            "the upload was cut off or is not valid multipart form data ({detail})"
        ))
    }
}

/// Reads the form: field `file` (required, once) and `description` (optional).
pub async fn receive(
    form: Multipart,
    meter: &FormMeter,
    incoming: &Path,
    limit: u64,
    pace: Pace,
) -> Result<(Received, String), UploadError> {
    receive_form(form, meter, incoming, limit, pace)
        .await
        .map_err(|e| match meter.stopped() {
            // The parser reports the stop as a failed read; this says why.
            true => UploadError::BadForm(format!(
                "more than {FORM_OVERHEAD} bytes of the form are not the file's (multipart \
                 framing and other fields); the upload was dropped"
            )),
            false => e,
        })
}

async fn receive_form(
    mut form: Multipart,
    meter: &FormMeter,
    incoming: &Path,
    limit: u64,
    mut pace: Pace,
) -> Result<(Received, String), UploadError> {
    let mut received = None;
    let mut description = String::new();
    while let Some(field) = pace.next(form.next_field()).await? {
        match field.name() {
            Some("file") => {
                if received.is_some() {
                    return Err(UploadError::BadForm("one file per upload".into()));
                }
                received = Some(receive_file(field, meter, incoming, limit, &mut pace).await?);
            }
            Some("description") => {
                description = read_text(field, MAX_DESCRIPTION_BYTES, "description", &mut pace)
                    .await?
                    .replace("\r\n", "\n");
                if description.chars().count() > MAX_DESCRIPTION_CHARS {
                    return Err(UploadError::BadForm(format!(
                        "the description is longer than {MAX_DESCRIPTION_CHARS} characters"
                    )));
                }
            }
            _ => {
                // Unknown fields are read and dropped (bounded like a description).
                read_text(field, MAX_DESCRIPTION_BYTES, "form field", &mut pace).await?;
            }
        }
    }
    let received = received.ok_or(UploadError::NoFile)?;
    Ok((received, description.trim().to_string()))
}

async fn read_text(
    mut field: Field<'_>,
    cap: usize,
    what: &str,
    pace: &mut Pace,
) -> Result<String, UploadError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = pace.chunk(&mut field).await? {
        if bytes.len() + chunk.len() > cap {
            return Err(UploadError::BadForm(format!(
                "the {what} is longer than {cap} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| UploadError::BadForm(format!("the {what} is not UTF-8")))
}

/// A write error as the upload's answer: 507 when the disk has no room for it.
fn disk_full(error: std::io::Error, arrived: u64) -> UploadError {
    match pow_storage::is_disk_full(&error) {
        true => UploadError::DiskFull { arrived },
        false => UploadError::Io(error),
    }
}

async fn receive_file(
    mut field: Field<'_>,
    meter: &FormMeter,
    incoming: &Path,
    limit: u64,
    pace: &mut Pace,
) -> Result<Received, UploadError> {
    let name = stored_name(field.file_name().unwrap_or(""));
    let file = TempFile::new(incoming);
    // A disk without a free inode refuses the file itself.
    let created = tokio::fs::File::create(file.path()).await;
    let mut out =
        tokio::io::BufWriter::with_capacity(1 << 20, created.map_err(|e| disk_full(e, 0))?);
    let (mut md5, mut sha256, mut size) = (Md5::new(), Sha256::new(), 0u64);
    while let Some(chunk) = pace.chunk(&mut field).await? {
        meter.file_bytes(chunk.len());
        size += chunk.len() as u64;
        if size > limit {
            return Err(UploadError::TooLarge(limit));
        }
        md5.update(&chunk);
        sha256.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| disk_full(e, size))?;
    }
    out.flush().await.map_err(|e| disk_full(e, size))?;
    drop(out);
    if size == 0 {
        return Err(UploadError::Empty);
    }
    let path = file.path().to_path_buf();
    tokio::task::spawn_blocking(move || check_zip(&path))
        .await
        .map_err(|e| UploadError::Io(std::io::Error::other(e)))??;
    Ok(Received {
        file,
        name,
        size,
        md5: hex::encode(md5.finalize()),
        sha256: hex::encode(sha256.finalize()),
    })
}

/// End-of-central-directory record: signature, then 16 bytes, then a 2-byte comment length.
const EOCD_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
const EOCD_LEN: usize = 22;
const MAX_ZIP_COMMENT: usize = 0xFFFF;

/// A zip starts with a local file header (or, empty, with the end record) and ends with an
/// end-of-central-directory record whose comment runs exactly to the end of the file.
fn check_zip(path: &Path) -> Result<(), UploadError> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = [0u8; 4];
    if size < EOCD_LEN as u64 {
        return Err(UploadError::NotZip("too short to be a zip archive"));
    }
    file.read_exact(&mut head)?;
    if &head != b"PK\x03\x04" && &head != EOCD_SIGNATURE {
        return Err(UploadError::NotZip("it does not start with a zip header"));
    }
    let tail_len = size.min((EOCD_LEN + MAX_ZIP_COMMENT) as u64);
    file.seek(SeekFrom::Start(size - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    let ends_with_eocd = (0..=tail.len() - EOCD_LEN).rev().any(|at| {
        let record = &tail[at..at + EOCD_LEN];
        let comment = usize::from(u16::from_le_bytes([record[20], record[21]]));
        &record[..4] == EOCD_SIGNATURE && at + EOCD_LEN + comment == tail.len()
    });
    if ends_with_eocd {
        Ok(())
    } else {
        Err(UploadError::NotZip(
            "no end-of-central-directory record (truncated or not a zip)",
        ))
    }
}

/// The name a dataset's file is stored and published under, from the client's file name:
/// its last path component (either slash), with anything but ASCII letters, digits, `.`, `-`
/// and `_` replaced by `_`, no leading dots, at most 100 bytes, ending in `.zip`.
pub fn stored_name(client_name: &str) -> String {
    let last = client_name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut stem = cleaned.trim_start_matches('.').to_string();
    if stem.to_ascii_lowercase().ends_with(".zip") {
        stem.truncate(stem.len() - 4);
    }
    stem.truncate(96);
    let stem = stem.trim_end_matches('.');
    if stem.is_empty() {
        "dataset.zip".to_string()
    } else {
        format!("{stem}.zip")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_never_escape_or_surprise() {
        assert_eq!(stored_name("nuclei.zip"), "nuclei.zip");
        assert_eq!(stored_name("../../etc/passwd.zip"), "passwd.zip");
        assert_eq!(stored_name("C:\\Users\\me\\data set.ZIP"), "data_set.zip");
        assert_eq!(stored_name("..zip"), "zip.zip");
        assert_eq!(stored_name(".."), "dataset.zip");
        assert_eq!(stored_name(""), "dataset.zip");
        assert_eq!(stored_name("a\u{1}b\u{e9}.zip"), "a_b_.zip");
        assert_eq!(stored_name("notes.txt"), "notes.txt.zip");
        assert_eq!(stored_name(&"x".repeat(300)).len(), 100);
    }

    fn zip_check(bytes: &[u8]) -> Result<(), UploadError> {
        let dir = std::env::temp_dir().join(format!("pow-zip-{:x}", rand::random::<u64>()));
        std::fs::write(&dir, bytes).unwrap();
        let result = check_zip(&dir);
        std::fs::remove_file(&dir).unwrap();
        result
    }

    /// A form whose body comes in one large chunk (hyper's reads grow to 400 KiB on a
    /// connection that carried a large body before) is not mistaken for one that is mostly
    /// not the file: the chunk that ends the file part's headers holds its first bytes too.
    /// And a body that never sends a boundary is still stopped.
    #[tokio::test]
    async fn the_meter_takes_a_form_in_one_large_chunk() {
        use axum::extract::FromRequest as _;
        let dir = std::env::temp_dir().join(format!("pow-meter-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut zip = b"PK\x03\x04".to_vec();
        zip.resize(300 << 10, 7);
        zip.extend_from_slice(b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        let form = |body: Vec<u8>| {
            let meter = Arc::new(FormMeter::default());
            let request = axum::http::Request::builder()
                .method("POST")
                .header("content-type", "multipart/form-data; boundary=XyZ")
                .body(meter.meter(Body::from(body)))
                .unwrap();
            (meter, request)
        };
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\nslices\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&zip);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        let (meter, request) = form(body);
        let multipart = Multipart::from_request(request, &()).await.unwrap();
        let pace = Pace::new(std::time::Duration::from_secs(10), 1);
        let (received, description) = receive(multipart, &meter, &dir, 1 << 30, pace)
            .await
            .unwrap();
        assert_eq!(
            (received.size, description.as_str()),
            (zip.len() as u64, "slices")
        );
        drop(received);

        let mut endless =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n"
                .to_vec();
        endless.resize(300 << 10, b'h');
        let chunks = [endless.clone(), endless];
        let (meter, _) = form(Vec::new());
        let stream = futures_util::stream::iter(
            chunks.map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
        );
        let request = axum::http::Request::builder()
            .method("POST")
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(meter.meter(Body::from_stream(stream)))
            .unwrap();
        let multipart = Multipart::from_request(request, &()).await.unwrap();
        let pace = Pace::new(std::time::Duration::from_secs(10), 1);
        let refused = receive(multipart, &meter, &dir, 1 << 30, pace).await;
        assert!(
            matches!(&refused, Err(UploadError::BadForm(m)) if m.contains("not the file's")),
            "{:?}",
            refused.err()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn zips_are_recognised_by_their_bytes() {
        let empty_zip = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        assert!(zip_check(empty_zip).is_ok());
        let mut with_comment = empty_zip.to_vec();
        with_comment[20] = 3;
        with_comment.extend_from_slice(b"abc");
        assert!(zip_check(&with_comment).is_ok());
        assert!(zip_check(b"%PDF-1.7 not a zip at all, but long enough").is_err());
        let mut truncated = b"PK\x03\x04".to_vec();
        truncated.extend_from_slice(&[0u8; 100]);
        assert!(zip_check(&truncated).is_err());
    }
}
