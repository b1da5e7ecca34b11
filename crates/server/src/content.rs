//! `GET /content/<md5>/<name>`: a dataset's bytes over HTTP with `Range` support, so the server
//! is a BEP 19 web seed for what it publishes (its torrents carry `url-list` =
//! `<public url>/content/<md5>/`). Bodies are streamed from disk in 256 KiB reads, each paced
//! by `ServeConfig::content_pacer` when there is one.

use crate::library::Library;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::SeekFrom;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const READ_CHUNK: u64 = 256 * 1024;

/// What a `Range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    All,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (`a-b`, `a-`, `-n`); anything else (several ranges, other units) is
/// answered with the whole body, which HTTP allows.
pub(crate) fn wanted(range: Option<&str>, len: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::All;
    };
    // Digits past u64 are a position past any file: the suffix `-n` then means the whole body
    // (RFC 9110 14.1.2), a first position there is unsatisfiable, a last one is cut to the end.
    // Digits only (`parse` would take a `+`).
    let number = |s: &str| {
        let s = s.trim();
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match number(last) {
            Some(0) => return Wanted::Unsatisfiable,
            None => return Wanted::All,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
        },
        (false, true) => match number(first) {
            Some(a) => (a, len.saturating_sub(1)),
            None => return Wanted::All,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a <= b => (a, b.min(len.saturating_sub(1))),
            _ => return Wanted::All,
        },
        (true, true) => return Wanted::All,
    };
    if len == 0 || start >= len {
        Wanted::Unsatisfiable
    } else {
        Wanted::Part(start, end)
    }
}

pub(crate) async fn serve(
    library: Arc<Library>,
    md5: &str,
    name: &str,
    headers: &HeaderMap,
    pacer: Option<crate::ContentPacer>,
) -> Response {
    let Some(dataset) = library.dataset(md5).filter(|d| d.name == name) else {
        return (StatusCode::NOT_FOUND, "no such dataset file").into_response();
    };
    let len = dataset.size;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match wanted(range, len) {
        Wanted::All => (StatusCode::OK, 0, len.saturating_sub(1)),
        Wanted::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        Wanted::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response()
        }
    };
    let path = library.content_dir(md5).join(&dataset.name);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    if let Err(e) = file.seek(SeekFrom::Start(start)).await {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let count = if len == 0 { 0 } else { end - start + 1 };
    let chunks = futures_util::stream::unfold((file, count), move |(mut file, left)| {
        let pacer = pacer.clone();
        async move {
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; left.min(READ_CHUNK) as usize];
            if let Some(wait) = pacer.and_then(|pace| pace(buf.len())) {
                tokio::time::sleep(wait).await;
            }
            match file.read_exact(&mut buf).await {
                Ok(_) => Some((
                    Ok::<_, std::io::Error>(Bytes::from(buf)),
                    (file, left - READ_CHUNK.min(left)),
                )),
                // A short read ends the body early: the client sees fewer bytes than announced.
                Err(e) => Some((Err(e), (file, 0))),
            }
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    // Anyone's bytes, served from the page's own origin: never sniffed into something a
    // browser would run there, and saved rather than shown.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{end}/{len}");
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ascii"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90, 99));
        assert_eq!(wanted(Some("bytes=50-500"), 100), Wanted::Part(50, 99));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=9-2"), 100), Wanted::All);
        // Positions past u64.
        let huge = "99999999999999999999999";
        assert_eq!(
            wanted(Some(&format!("bytes=-{huge}")), 100),
            Wanted::Part(0, 99)
        );
        assert_eq!(
            wanted(Some(&format!("bytes=10-{huge}")), 100),
            Wanted::Part(10, 99)
        );
        assert_eq!(
            wanted(Some(&format!("bytes={huge}-")), 100),
            Wanted::Unsatisfiable
        );
        // Not a range at all: ignored, as HTTP allows.
        assert_eq!(wanted(Some("bytes=-1x"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=+5-"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=-+5"), 100), Wanted::All);
    }
}
