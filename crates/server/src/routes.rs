//! HTTP handlers. Errors are JSON (`{"error": ...}`) unless the client asked for HTML (a plain
//! form post from a browser), which gets a small page or a redirect back to the list. A
//! failure of the server's own is told without its detail, which names the server's files
//! (the data directory's path, for one) and goes to the log.

use crate::library::{is_md5_hex, Library, LibraryError, Published};
use crate::page::{self, Row};
use crate::upload::{self, UploadError};
use crate::{Dataset, Seeder, ServeConfig, FORM_OVERHEAD};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use pow_datasource::torrent_store::{INDEX_FILE, MAX_TORRENT_BYTES};
use std::sync::Arc;

struct App {
    library: Arc<Library>,
    seeder: Arc<dyn Seeder>,
    /// One permit per upload being received (`ServeConfig::max_concurrent_uploads`).
    upload_slots: Arc<tokio::sync::Semaphore>,
    config: ServeConfig,
}

/// Seconds a client refused for want of an upload slot is told to wait.
const RETRY_UPLOAD_AFTER_SECS: u32 = 10;

type Shared = State<Arc<App>>;

/// The server's routes over `library`, seeding through `seeder`.
pub fn router(library: Arc<Library>, seeder: Arc<dyn Seeder>, config: ServeConfig) -> Router {
    let app = Arc::new(App {
        library,
        seeder,
        upload_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads)),
        config,
    });
    Router::new()
        .route("/", get(index))
        .route(
            "/upload",
            axum::routing::post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/datasets", get(api_datasets))
        .route("/content/{md5}/{name}", get(get_content))
        .route(
            "/torrents/{name}",
            get(get_torrent)
                .put(put_torrent)
                .layer(DefaultBodyLimit::max(MAX_TORRENT_BYTES as usize)),
        )
        .with_state(app)
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

fn failure(html: bool, status: StatusCode, message: &str) -> Response {
    if html {
        (status, Html(page::error(status.as_u16(), message))).into_response()
    } else {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// A failure of the server's own (not of the request): the client hears `message`, the log
/// gets `error` in full.
fn server_fault(
    html: bool,
    status: StatusCode,
    message: &str,
    error: &dyn std::error::Error,
) -> Response {
    tracing::error!("{message} ({status}): {}", crate::detail(error));
    failure(html, status, message)
}

/// A publish or a PUT that failed, as the client is told it: what the client can do something
/// about as it is, a full disk as such, anything else as the server's fault.
fn library_failure(html: bool, error: &LibraryError, what: &str) -> Response {
    match error {
        // Their messages name torrents and sizes, never the server's files.
        LibraryError::Conflict(why) => {
            tracing::warn!("{what}: {why}");
            failure(html, StatusCode::CONFLICT, why)
        }
        LibraryError::BadTorrent(why) => {
            tracing::warn!("{what}: {why}");
            failure(html, StatusCode::UNPROCESSABLE_ENTITY, why)
        }
        e if e.is_disk_full() => server_fault(
            html,
            StatusCode::INSUFFICIENT_STORAGE,
            &format!("the server's disk is full: {what}; nothing of it was kept"),
            e,
        ),
        e => server_fault(
            html,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{what}: the server failed (its log says why); nothing of it was kept"),
            e,
        ),
    }
}

/// The request's `Content-Length`, if it has a valid one (a chunked body has none).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn rows(app: &App) -> Vec<Row> {
    app.library
        .datasets()
        .into_iter()
        .map(|dataset| {
            let magnet = app.library.magnet(&dataset);
            let status = app.seeder.status(&dataset.info_hash);
            Row {
                dataset,
                magnet,
                status,
            }
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct IndexQuery {
    published: Option<String>,
}

async fn index(State(app): Shared, Query(query): Query<IndexQuery>) -> Html<String> {
    let notice = query
        .published
        .and_then(|md5| app.library.dataset(&md5))
        .map(|d| {
            let seeding = match app.seeder.status(&d.info_hash) {
                Some(s) if s.seeding => "it is being seeded".to_string(),
                Some(crate::SeedStatus {
                    error: Some(why), ..
                }) => format!("it is not seeded: {why}"),
                _ => "its seed is starting".to_string(),
            };
            format!("Published {} ({}); {seeding}.", d.name, d.md5)
        });
    Html(page::index(
        &rows(&app),
        app.config.max_upload_size,
        notice.as_deref(),
    ))
}

fn dataset_json(row: &Row) -> serde_json::Value {
    let d = &row.dataset;
    serde_json::json!({
        "md5": d.md5,
        "sha256": d.sha256,
        "name": d.name,
        "size": d.size,
        "info_hash": d.info_hash,
        "torrent_file_name": d.torrent_file_name,
        "torrent_url": format!("/torrents/{}", d.torrent_file_name),
        "magnet": row.magnet,
        "description": d.description,
        "uploaded_at": d.uploaded_at,
        "status": row.status,
    })
}

async fn api_datasets(State(app): Shared) -> Json<serde_json::Value> {
    let all: Vec<_> = rows(&app).iter().map(dataset_json).collect();
    Json(serde_json::Value::Array(all))
}

/// A refusal sent before the request body is read: the connection cannot be reused.
fn refused_unread(html: bool, status: StatusCode, message: &str) -> Response {
    let mut response = failure(html, status, message);
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Whether the request comes from a page of another site. A browser posts a form to any
/// address a page names, this server's on 127.0.0.1 too, and says whose page it was in
/// `Origin`: without this check any site a researcher visits could upload (and have
/// published and seeded) files of its choosing. The server's own page is reached by an
/// address (`127.0.0.1:8080`, `[::1]:8080`, a LAN address), `localhost`, or `--public-url`
/// (behind a proxy), and its `Origin` names that. Another name, even one that resolves to
/// this server (DNS rebinding), is another site. A request without `Origin` (curl, `pow`) is
/// not from a page.
fn from_another_site(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    // "null" (a sandboxed page or a local file), or not a URL.
    let Some(origin) = origin.to_str().ok().and_then(Site::parse) else {
        return true;
    };
    if public_url.and_then(Site::parse).as_ref() == Some(&origin) {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // The server speaks plain HTTP (https only through a proxy, named by --public-url).
    let reached = host.and_then(|host| Site::parse(&format!("http://{host}")));
    !reached.is_some_and(|reached| reached.is_address_or_localhost() && reached == origin)
}

/// A web origin: scheme, host and port (the scheme's default when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Site {
    scheme: String,
    host: String,
    port: u16,
}

impl Site {
    fn parse(url: &str) -> Option<Site> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':') =>
            {
                (host, port.parse().ok()?)
            }
            _ => (authority, default),
        };
        if host.is_empty() {
            return None;
        }
        Some(Site {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn is_address_or_localhost(&self) -> bool {
        let name = self.host.trim_start_matches('[').trim_end_matches(']');
        name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
    }
}

async fn upload(State(app): Shared, request: Request) -> Response {
    let html = wants_html(request.headers());
    if from_another_site(request.headers(), app.library.public_url()) {
        let why = "uploads come from this server's own page, not from another site's (a server \
                   reached by a host name takes them from the page at its --public-url)";
        return refused_unread(html, StatusCode::FORBIDDEN, why);
    }
    let limit = app.config.max_upload_size;
    let declared = declared_length(request.headers());
    if declared.is_some_and(|len| len > limit.saturating_add(FORM_OVERHEAD)) {
        let too_large = UploadError::TooLarge(limit).to_string();
        return refused_unread(html, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    // Held until the upload is received and published (or refused).
    let Ok(slot) = app.upload_slots.clone().try_acquire_owned() else {
        let busy = format!(
            "the server is receiving {} uploads, as many as it takes at once; try again in \
             {RETRY_UPLOAD_AFTER_SECS} s",
            app.config.max_concurrent_uploads
        );
        let mut response = refused_unread(html, StatusCode::SERVICE_UNAVAILABLE, &busy);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, RETRY_UPLOAD_AFTER_SECS.into());
        return response;
    };
    let free = upload::free_space(&app.library.incoming_dir());
    if let (Some(len), Some(free)) = (declared, free) {
        if len > free {
            let why = format!(
                "the server's disk has {free} bytes free, and this upload is {len} bytes; \
                 nothing was read"
            );
            return refused_unread(html, StatusCode::INSUFFICIENT_STORAGE, &why);
        }
    }
    let meter = Arc::new(upload::FormMeter::default());
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, meter.meter(body));
    let form = match Multipart::from_request(request, &()).await {
        Ok(form) => form,
        Err(rejection) => {
            return failure(
                html,
                StatusCode::BAD_REQUEST,
                &format!("expected a multipart/form-data upload: {rejection}"),
            )
        }
    };
    let (received, description) = match upload::receive(
        form,
        &meter,
        &app.library.incoming_dir(),
        limit,
        upload::Pace::new(app.config.upload_idle_timeout, app.config.upload_min_rate),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            let status = match &e {
                UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                UploadError::NotZip(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                UploadError::Empty | UploadError::NoFile | UploadError::BadForm(_) => {
                    StatusCode::BAD_REQUEST
                }
                UploadError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
                UploadError::Stalled(_) | UploadError::TooSlow { .. } => {
                    StatusCode::REQUEST_TIMEOUT
                }
                UploadError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if let UploadError::Io(_) = e {
                let why = "the server failed to receive the upload (its log says why); nothing \
                           of it was kept";
                return server_fault(html, status, why, &e);
            }
            tracing::info!("upload refused ({status}): {e}");
            if matches!(e, UploadError::Stalled(_) | UploadError::TooSlow { .. }) {
                // The rest of its body is not waited for.
                return refused_unread(html, status, &e.to_string());
            }
            return failure(html, status, &e.to_string());
        }
    };
    // From here the upload is the server's: published and seeded to the end even if the
    // client hangs up (a closed tab), which drops this handler. One task, holding the slot.
    let work = tokio::spawn({
        let app = app.clone();
        async move {
            let _slot = slot;
            let existing = app.library.dataset(&received.md5);
            let failed = existing.as_ref().is_some_and(|d| {
                app.seeder
                    .status(&d.info_hash)
                    .is_some_and(|s| s.error.is_some())
            });
            if let (Some(dataset), true) = (existing, failed) {
                app.library.restore(received, &dataset).await?;
                tracing::info!("{}: content replaced by a new upload of it", dataset.md5);
                if let Err(e) = start_seeding(&app, &dataset).await {
                    tracing::warn!("{}: cannot seed: {e}", dataset.md5);
                }
                return Ok((dataset, Published::Existing));
            }
            let (dataset, published) = app.library.publish(received, description).await?;
            if published == Published::New {
                if let Err(e) = start_seeding(&app, &dataset).await {
                    tracing::warn!("{}: cannot seed: {e}", dataset.md5);
                }
            }
            Ok::<_, LibraryError>((dataset, published))
        }
    });
    let done = work.await.unwrap_or_else(|panicked| {
        Err(LibraryError::Invalid(format!(
            "publishing panicked: {panicked}"
        )))
    });
    let (dataset, published) = match done {
        Ok(done) => done,
        Err(e) => return library_failure(html, &e, "the upload arrived but was not published"),
    };
    tracing::info!(
        "published {} ({}, {} bytes, {:?})",
        dataset.name,
        dataset.md5,
        dataset.size,
        published
    );
    if html {
        return Redirect::to(&format!("/?published={}#d-{}", dataset.md5, dataset.md5))
            .into_response();
    }
    let row = Row {
        magnet: app.library.magnet(&dataset),
        status: app.seeder.status(&dataset.info_hash),
        dataset,
    };
    let mut body = dataset_json(&row);
    body["published"] = serde_json::json!(published);
    let status = match published {
        Published::New => StatusCode::CREATED,
        Published::Existing => StatusCode::OK,
    };
    (status, Json(body)).into_response()
}

/// Has the seeder serve `dataset` (also used at start-up for every stored dataset).
pub async fn start_seeding_dataset(
    library: &Library,
    seeder: &dyn Seeder,
    dataset: &Dataset,
) -> Result<(), String> {
    let metainfo = library.metainfo(dataset).map_err(|e| e.to_string())?;
    seeder
        .seed(metainfo, library.content_dir(&dataset.md5))
        .await
}

async fn start_seeding(app: &App, dataset: &Dataset) -> Result<(), String> {
    start_seeding_dataset(&app.library, app.seeder.as_ref(), dataset).await
}

async fn get_content(
    State(app): Shared,
    Path((md5, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let pacer = app.config.content_pacer.clone();
    crate::content::serve(app.library.clone(), &md5, &name, &headers, pacer).await
}

async fn get_torrent(State(app): Shared, Path(name): Path<String>) -> Response {
    if name == INDEX_FILE {
        return match app.library.index() {
            Ok(index) => Json(index).into_response(),
            Err(e) => {
                let why = "the server cannot list its torrents (its log says why)";
                server_fault(false, StatusCode::INTERNAL_SERVER_ERROR, why, &e)
            }
        };
    }
    let Some(md5) = name.strip_suffix(".torrent").filter(|s| is_md5_hex(s)) else {
        return failure(false, StatusCode::NOT_FOUND, "no such torrent");
    };
    match tokio::fs::read(app.library.torrent_path(md5)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/x-bittorrent")], bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => failure(
            false,
            StatusCode::NOT_FOUND,
            &format!("no torrent {name} here"),
        ),
        Err(e) => {
            let why = format!("the server cannot read {name} (its log says why)");
            server_fault(false, StatusCode::INTERNAL_SERVER_ERROR, &why, &e)
        }
    }
}

/// Time a `PUT` has to send its body (a torrent of at most [`MAX_TORRENT_BYTES`]).
const PUT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn put_torrent(State(app): Shared, Path(name): Path<String>, request: Request) -> Response {
    let headers = request.headers();
    let Some(token) = &app.config.token else {
        return failure(
            false,
            StatusCode::FORBIDDEN,
            "PUT is disabled: the server was started without a token",
        );
    };
    // The scheme's name is case-insensitive (RFC 9110 11.1): `bearer s3cret` was refused.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        let mut refused = failure(
            false,
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        );
        // A 401 names the scheme it takes (RFC 9110 15.5.2).
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return refused;
    }
    // Read only now: a client without the token never has its body read, let alone held.
    let declared = declared_length(headers);
    if declared.is_some_and(|len| len > MAX_TORRENT_BYTES) {
        let too_large = format!("a torrent is at most {MAX_TORRENT_BYTES} bytes");
        return refused_unread(false, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
    }
    let read = async {
        use futures_util::StreamExt;
        let mut stream = request.into_body().into_data_stream();
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if body.len() + chunk.len() > MAX_TORRENT_BYTES as usize {
                return Ok(None);
            }
            body.extend_from_slice(&chunk);
        }
        Ok::<_, axum::Error>(Some(body))
    };
    let body = match tokio::time::timeout(PUT_BODY_TIMEOUT, read).await {
        Ok(Ok(Some(body))) => axum::body::Bytes::from(body),
        // A chunked body, whose length is known only once it is over the limit (it was a 400,
        // "length limit exceeded").
        Ok(Ok(None)) => {
            let too_large = format!("a torrent is at most {MAX_TORRENT_BYTES} bytes");
            return refused_unread(false, StatusCode::PAYLOAD_TOO_LARGE, &too_large);
        }
        Ok(Err(e)) => {
            let why = format!("cannot read the torrent: {e}");
            return refused_unread(false, StatusCode::BAD_REQUEST, &why);
        }
        Err(_) => {
            let slow = format!(
                "the torrent did not come in {} s",
                PUT_BODY_TIMEOUT.as_secs()
            );
            return refused_unread(false, StatusCode::REQUEST_TIMEOUT, &slow);
        }
    };
    match app.library.put_torrent(name, body).await {
        Ok(true) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"stored": "written"})),
        )
            .into_response(),
        Ok(false) => (
            StatusCode::OK,
            Json(serde_json::json!({"stored": "existing"})),
        )
            .into_response(),
        Err(e) => library_failure(false, &e, "the torrent was not stored"),
    }
}

/// Compares without an early exit, so response time says nothing about a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SeedFuture, SeedStatus};
    use md5::{Digest as _, Md5};
    use pow_metainfo::Metainfo;
    use std::path::{Path, PathBuf};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct NoSeeder;

    impl Seeder for NoSeeder {
        fn seed(&self, _: Arc<Metainfo>, _: PathBuf) -> SeedFuture {
            Box::pin(async { Ok(()) })
        }

        fn status(&self, _: &str) -> Option<SeedStatus> {
            None
        }
    }

    const TOKEN: &str = "sesame";

    /// The routes over a library at `root`, served on 127.0.0.1 until [`TestServer::stop`].
    struct TestServer {
        addr: std::net::SocketAddr,
        library: Arc<Library>,
        serving: tokio::task::JoinHandle<()>,
    }

    impl TestServer {
        async fn start(root: &Path) -> TestServer {
            let library = Arc::new(Library::open(root, Vec::new(), None).unwrap());
            let config = ServeConfig {
                max_upload_size: 1 << 30,
                token: Some(TOKEN.into()),
                content_pacer: None,
                max_concurrent_uploads: 4,
                upload_idle_timeout: std::time::Duration::from_secs(30),
                upload_min_rate: 1,
            };
            let app = router(library.clone(), Arc::new(NoSeeder), config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let serving = tokio::spawn(async move {
                axum::serve(listener, app).await.unwrap();
            });
            TestServer {
                addr,
                library,
                serving,
            }
        }

        /// One request on its own connection: the status and the body.
        async fn request(&self, head: &str, body: &[u8]) -> (u16, String) {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let head = format!(
                "{head}\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.addr,
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body).await.unwrap();
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.unwrap();
            let reply = String::from_utf8_lossy(&reply).into_owned();
            let status = reply[9..12].parse().unwrap();
            let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            (status, body.to_string())
        }

        async fn upload(&self, zip: &[u8], accept: &str) -> (u16, String) {
            let (content_type, form) = form(zip);
            let head = format!(
                "POST /upload HTTP/1.1\r\nContent-Type: {content_type}\r\nAccept: {accept}"
            );
            self.request(&head, &form).await
        }

        /// Ends the server, and with it (once the last connection's task is done) the
        /// library's hold on its directory, which keeps a tmpfs under it mounted.
        async fn stop(self) {
            self.serving.abort();
            let _ = self.serving.await;
            for _ in 0..100 {
                if Arc::strong_count(&self.library) == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }

    const BOUNDARY: &str = "XyZzY";

    /// A multipart form of `zip` as field `file`: its content type and its bytes.
    fn form(zip: &[u8]) -> (String, Vec<u8>) {
        let mut form = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"cells.zip\"\r\nContent-Type: application/zip\r\n\r\n"
        )
        .into_bytes();
        form.extend_from_slice(zip);
        form.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={BOUNDARY}"), form)
    }

    /// `len` bytes the server takes for a zip (a local header first, an end record last),
    /// different for each `seed`.
    fn zip(len: usize, seed: u8) -> Vec<u8> {
        let end = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut zip = b"PK\x03\x04".to_vec();
        zip.extend((0..len - 4 - end.len()).map(|i| (i % 251) as u8 ^ seed));
        zip.extend_from_slice(end);
        zip
    }

    fn error_of(body: &str) -> String {
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        json["error"].as_str().unwrap().to_string()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The server's store failing under it (here a directory where the upload's torrent
    /// goes) is the server's fault: the uploader, or the browser's page, hears that it
    /// failed, and the log where. Before, the body was the error itself, the data
    /// directory's absolute path in it, and a PUT answered it with 422, as if the torrent
    /// were at fault.
    #[tokio::test]
    async fn failures_of_the_servers_own_are_told_without_its_paths() {
        let root = std::env::temp_dir().join(format!("pow-routes-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let server = TestServer::start(&root).await;
        let root = server.library.root().display().to_string();
        let zip = zip(40_000, 1);
        let md5 = hex::encode(Md5::digest(&zip));
        std::fs::create_dir(server.library.torrent_path(&md5)).unwrap();

        let (status, body) = server.upload(&zip, "application/json").await;
        let error = error_of(&body);
        assert_eq!(status, 500, "{body}");
        assert!(!error.contains(&root), "{error}");
        assert!(error.contains("not published"), "{error}");
        let (status, page) = server.upload(&zip, "text/html").await;
        assert_eq!(status, 500, "{page}");
        assert!(!page.contains(&root), "{page}");

        let content = std::path::PathBuf::from(&root).join("slice.csv");
        std::fs::write(&content, vec![7u8; 40_000]).unwrap();
        let torrent = pow_metainfo::create::create(&content, &Default::default())
            .unwrap()
            .bytes;
        let head = format!("PUT /torrents/{md5}.torrent HTTP/1.1\r\nAuthorization: Bearer {TOKEN}");
        let (status, body) = server.request(&head, &torrent).await;
        let error = error_of(&body);
        assert_eq!(status, 500, "{body}");
        assert!(!error.contains(&root), "{error}");
        // What the client got wrong is still told as it is.
        let (status, body) = server.request(&head, b"not bencode").await;
        assert_eq!(status, 422, "{body}");
        assert!(error_of(&body).contains("not a valid torrent"), "{body}");
        server.stop().await;
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A tmpfs mounted for a test, unmounted when dropped (a failed test too).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path, options: &str) -> Result<Tmpfs, String> {
            std::fs::create_dir_all(dir).unwrap();
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(dir)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                let _ = std::fs::remove_dir(dir);
                return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
            }
            Ok(Tmpfs(dir.to_path_buf()))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let unmount = |lazy: bool| {
                let mut umount = std::process::Command::new("umount");
                if lazy {
                    // Still busy (a test that failed with the server running): detached now,
                    // gone once the last file on it closes.
                    umount.arg("-l");
                }
                umount.arg(&self.0).status().is_ok_and(|s| s.success())
            };
            if unmount(false) || unmount(true) {
                let _ = std::fs::remove_dir(&self.0);
            }
        }
    }

    /// The server's disk full (a 1 MiB tmpfs) once the upload has arrived: there is no room
    /// for its record, or, one page later, for its torrent. Either is a full disk to the
    /// uploader (507), not a failure of the server (500, as it was, with the record's path
    /// for its whole message); neither leaves a record, a torrent or content behind, nor the
    /// dataset listed, and the upload that fits after is published.
    #[tokio::test]
    async fn an_upload_that_fills_the_disk_as_it_is_published_gets_507_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("pow-routes-full-{}", std::process::id()));
        let _disk = match Tmpfs::mount(&dir, "size=1m") {
            Ok(disk) => disk,
            Err(e) => {
                println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
                return;
            }
        };
        let server = TestServer::start(&dir).await;
        let root = server.library.root().to_path_buf();
        let free = crate::upload::free_space(&root).unwrap();
        let framing = form(&[]).1.len() as u64;
        // Content-Length is the free space: the upload is taken, and fills the disk (up to
        // its last page, or all but one, which the record takes).
        for (left, seed) in [(0, 1), (4096, 2)] {
            let zip = zip((free - framing - left) as usize, seed);
            let (status, body) = server.upload(&zip, "application/json").await;
            let error = error_of(&body);
            println!("{left} bytes left for the record and the torrent: {status} {error}");
            assert_eq!(status, 507, "{body}");
            assert!(error.contains("the server's disk is full"), "{error}");
            assert!(!error.contains(root.to_str().unwrap()), "{error}");
            assert!(server.library.datasets().is_empty());
            for sub in ["incoming", "content", "datasets", "torrents"] {
                assert_eq!(entries(&root.join(sub)), Vec::<String>::new(), "{sub}");
            }
        }
        let (status, body) = server.request("GET /api/datasets HTTP/1.1", b"").await;
        assert_eq!((status, body.as_str()), (200, "[]"));

        let (status, body) = server.upload(&zip(100_000, 3), "application/json").await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(server.library.datasets().len(), 1);
        server.stop().await;
    }

    /// A disk with room for the bytes but no inode left for the file that receives them is
    /// as full (507), before any byte is read into it. Before, it was the server's failure
    /// (500).
    #[tokio::test]
    async fn an_upload_with_no_inode_left_for_its_file_gets_507() {
        let dir = std::env::temp_dir().join(format!("pow-routes-inodes-{}", std::process::id()));
        // The root, .lock, and incoming/, content/, datasets/ and torrents/.
        let _disk = match Tmpfs::mount(&dir, "size=1m,nr_inodes=6") {
            Ok(disk) => disk,
            Err(e) => {
                println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
                return;
            }
        };
        let server = TestServer::start(&dir).await;
        let (status, body) = server.upload(&zip(40_000, 4), "application/json").await;
        let error = error_of(&body);
        assert_eq!(status, 507, "{body}");
        assert!(error.contains("the server's disk is full"), "{error}");
        let incoming = server.library.incoming_dir();
        assert_eq!(entries(&incoming), Vec::<String>::new());
        server.stop().await;
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(origin) = origin {
            h.insert(header::ORIGIN, origin.parse().unwrap());
        }
        h
    }

    /// The page reached by an address, `localhost` or `--public-url` posts uploads; other
    /// sites do not, a name of another site's that resolves here (DNS rebinding) included.
    #[test]
    fn only_the_servers_own_page_may_post_uploads() {
        let own = [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://localhost:8080", "localhost:8080"),
            ("http://[::1]:8080", "[::1]:8080"),
            ("http://192.168.1.5", "192.168.1.5"),
            ("http://192.168.1.5", "192.168.1.5:80"),
            ("http://LOCALHOST:8080", "localhost:8080"),
        ];
        for (origin, host) in own {
            let h = headers(Some(origin), host);
            assert!(!from_another_site(&h, None), "{origin} {host}");
        }
        assert!(!from_another_site(&headers(None, "127.0.0.1:8080"), None));
        let other = [
            ("https://example.com", "127.0.0.1:8080"),
            ("http://127.0.0.1:9999", "127.0.0.1:8080"),
            ("https://127.0.0.1:8080", "127.0.0.1:8080"),
            ("null", "127.0.0.1:8080"),
            ("http://rebind.example:8080", "rebind.example:8080"),
        ];
        for (origin, host) in other {
            let h = headers(Some(origin), host);
            assert!(from_another_site(&h, None), "{origin} {host}");
        }
        // Behind a proxy that sends its own Host: --public-url names the page's origin.
        let proxied = headers(Some("https://data.example.org"), "127.0.0.1:8080");
        assert!(!from_another_site(
            &proxied,
            Some("https://data.example.org:443/")
        ));
        assert!(from_another_site(&proxied, None));
    }

    #[test]
    fn a_declared_length_is_a_number_or_none() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), None);
        h.insert(header::CONTENT_LENGTH, "1048576".parse().unwrap());
        assert_eq!(declared_length(&h), Some(1 << 20));
        h.insert(header::CONTENT_LENGTH, "12 apples".parse().unwrap());
        assert_eq!(declared_length(&h), None);
    }
}
