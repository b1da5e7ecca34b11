//! The web page: plain HTML rendered here, with a small script that only adds an upload
//! progress bar (the form works without it).

use crate::{Dataset, SeedStatus};

pub struct Row {
    pub dataset: Dataset,
    pub magnet: String,
    pub status: Option<SeedStatus>,
}

pub fn index(rows: &[Row], max_upload_size: u64, notice: Option<&str>) -> String {
    let mut table = String::new();
    for row in rows {
        let d = &row.dataset;
        let status = match &row.status {
            Some(s) if s.seeding => format!(
                "seeding, {} peer{}, {} uploaded",
                s.peers,
                if s.peers == 1 { "" } else { "s" },
                human_size(s.uploaded)
            ),
            Some(s) => format!("not seeding: {}", s.error.as_deref().unwrap_or("starting")),
            None => "starting".to_string(),
        };
        table.push_str(&format!(
            r#"<tr id="d-{md5}" data-md5="{md5}">
<td><strong>{name}</strong>{description}</td>
<td title="{size} bytes">{human}</td>
<td><code>{md5}</code></td>
<td><code>{info_hash}</code></td>
<td><a href="/torrents/{torrent}">.torrent</a> · <a href="{magnet}">magnet</a></td>
<td class="status">{status}</td>
</tr>
"#,
            md5 = escape(&d.md5),
            name = escape(&d.name),
            description = if d.description.is_empty() {
                String::new()
            } else {
                format!(
                    "<br><span class=\"description\">{}</span>",
                    escape(&d.description)
                )
            },
            size = d.size,
            human = human_size(d.size),
            info_hash = escape(&d.info_hash),
            torrent = escape(&d.torrent_file_name),
            magnet = escape(&row.magnet),
            status = escape(&status),
        ));
    }
    if rows.is_empty() {
        table.push_str("<tr><td colspan=\"6\">Nothing published yet.</td></tr>\n");
    }
    let notice = notice
        .map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pow: published datasets</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ccc; padding: .4rem; text-align: left; vertical-align: top; }}
code {{ font-size: .8rem; word-break: break-all; }}
form {{ border: 1px solid #ccc; padding: 1rem; margin-bottom: 2rem; }}
label {{ display: block; margin: .5rem 0 .2rem; }}
.description {{ color: #444; }}
.notice {{ background: #eef6ee; padding: .5rem; }}
#upload-status[data-error] {{ color: #a00; }}
</style>
</head>
<body>
<h1>Published datasets</h1>
{notice}
<form id="upload" action="/upload" method="post" enctype="multipart/form-data">
<h2>Publish a dataset</h2>
<label for="file">Zip archive (up to {limit})</label>
<input id="file" name="file" type="file" accept=".zip,application/zip" required data-max-bytes="{max_bytes}">
<label for="description">Description (optional)</label>
<textarea id="description" name="description" rows="2" cols="60" maxlength="{max_description}"></textarea>
<p><button id="submit" type="submit">Upload and publish</button></p>
<progress id="progress" max="100" value="0" hidden aria-label="Upload progress"></progress>
<p id="upload-status" role="status" aria-live="polite"></p>
</form>
<table id="datasets">
<caption>Every dataset here is seeded by this server; the .torrent links make it an HTTP torrent store (<code>/torrents</code>) for <code>pow source load</code>.</caption>
<thead><tr><th scope="col">Name</th><th scope="col">Size</th><th scope="col">MD5</th><th scope="col">Info-hash</th><th scope="col">Get it</th><th scope="col">Status</th></tr></thead>
<tbody>
{table}</tbody>
</table>
<script>
// Progress for large uploads; without this script the form posts and the page reloads.
document.getElementById('upload').addEventListener('submit', function (event) {{
  event.preventDefault();
  var form = event.target, status = document.getElementById('upload-status');
  var progress = document.getElementById('progress'), button = document.getElementById('submit');
  // Refused here, not sent: the server refuses it before reading it, which a browser
  // still sending may show only as a lost connection.
  var chosen = form.elements.file.files[0], most = Number(form.elements.file.dataset.maxBytes);
  if (chosen && chosen.size > most) {{
    status.setAttribute('data-error', '');
    status.textContent = 'Not uploaded: ' + chosen.name + ' is ' + chosen.size +
      ' bytes; this server takes at most {limit} (' + most + ' bytes).';
    return;
  }}
  var request = new XMLHttpRequest();
  request.open('POST', form.action);
  request.setRequestHeader('Accept', 'application/json');
  request.upload.onprogress = function (e) {{
    if (e.lengthComputable) {{ progress.value = Math.floor(100 * e.loaded / e.total); }}
    status.textContent = 'Uploading… ' + progress.value + '%';
  }};
  request.onload = function () {{
    var reply = {{}};
    try {{ reply = JSON.parse(request.responseText); }} catch (e) {{}}
    if (request.status === 200 || request.status === 201) {{
      location.assign('/?published=' + encodeURIComponent(reply.md5) + '#d-' + reply.md5);
    }} else {{
      status.setAttribute('data-error', '');
      status.textContent = 'Upload failed (' + request.status + '): ' + (reply.error || request.statusText);
      button.disabled = false; progress.hidden = true;
    }}
  }};
  request.onerror = function () {{
    status.setAttribute('data-error', '');
    status.textContent = 'Upload failed: the connection was lost.';
    button.disabled = false; progress.hidden = true;
  }};
  status.removeAttribute('data-error');
  button.disabled = true; progress.hidden = false; progress.value = 0;
  request.send(new FormData(form));
}});
</script>
</body>
</html>
"#,
        limit = human_size(max_upload_size),
        max_bytes = max_upload_size,
        max_description = crate::MAX_DESCRIPTION_CHARS,
    )
}

/// A page for a failed plain-form upload (the script shows errors in place instead).
pub fn error(status: u16, message: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pow: upload failed</title></head>
<body><h1>Upload failed ({status})</h1><p role="alert">{}</p><p><a href="/">Back to the datasets</a></p></body></html>
"#,
        escape(message)
    )
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
