//! A lesson cannot touch another lesson or the node, and real lessons still
//! work: lesson pages run sandboxed (an opaque origin each), bundle files
//! answer anonymous CORS, lessons may be framed and the node's pages may not,
//! and cookies other applications left for the node's host name are ignored.
//! Checked with a real client, then in headless Chromium from the pages' DOM.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cartable_tests::browser::Profile;
use cartable_tests::peers::serving;
use cartable_tests::{HttpsClient, Node, Reply, sample_lesson};

/// A lesson that tries to keep a secret in every store a page has.
const LESSON_A: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>Leçon A</title></head>
<body><h1>Leçon A</h1>
<p id="storage">storage: pending</p><p id="indexeddb">indexeddb: pending</p>
<p id="cookie">cookie: pending</p><p id="protocol">protocol: ?</p>
<script>
function report(id, text) { document.getElementById(id).textContent = id + ": " + text; }
function attempt(id, f) {
  try { f(); report(id, "kept"); } catch (e) { report(id, "refused " + e.name); }
}
attempt("storage", () => localStorage.setItem("secret", "A-secret"));
attempt("cookie", () => {
  document.cookie = "secret=A-secret; path=/";
  if (!document.cookie.includes("A-secret")) throw new Error("not kept");
});
try {
  const open = indexedDB.open("secrets");
  open.onupgradeneeded = () => open.result.createObjectStore("s");
  open.onsuccess = () => {
    const tx = open.result.transaction("s", "readwrite");
    tx.objectStore("s").put("A-secret", "secret");
    tx.oncomplete = () => report("indexeddb", "kept");
  };
  open.onerror = () => report("indexeddb", "refused " + open.error.name);
} catch (e) { report("indexeddb", "refused " + e.name); }
report("protocol", performance.getEntriesByType("navigation")[0].nextHopProtocol);
// Framed by a school's page: tell it what shows.
if (parent !== window) parent.postMessage(document.body.innerText, "*");
</script></body></html>
"#;

/// A lesson that looks for A's secret, and frames A to read and rewrite it.
/// `BUNDLE_A` is replaced by A's id.
const LESSON_B: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>Leçon B</title></head>
<body><h1>Leçon B</h1>
<p id="storage">storage: pending</p><p id="indexeddb">indexeddb: pending</p>
<p id="cookie">cookie: pending</p><p id="frame">frame: pending</p>
<iframe id="a" src="/b/BUNDLE_A/"></iframe>
<script>
function report(id, text) { document.getElementById(id).textContent = id + ": " + text; }
function attempt(id, f) {
  try { report(id, "read " + f()); } catch (e) { report(id, "refused " + e.name); }
}
attempt("storage", () => localStorage.getItem("secret"));
attempt("cookie", () => document.cookie);
try {
  const open = indexedDB.open("secrets");
  open.onsuccess = () => report("indexeddb", "read " + [...open.result.objectStoreNames]);
  open.onerror = () => report("indexeddb", "refused " + open.error.name);
} catch (e) { report("indexeddb", "refused " + e.name); }
const frame = document.getElementById("a");
frame.onload = () => attempt("frame", () => {
  const text = frame.contentWindow.document.body.innerText;
  frame.contentWindow.document.body.innerHTML = "rewritten by B";
  return text;
});
</script></body></html>
"#;

/// A slide deck that uses what real lessons use: a web font, an ES module,
/// its own JSON, a worker, an image, a linked PDF and a video it seeks.
const DECK: &str = r#"<!doctype html><html lang="fr"><head><meta charset="utf-8">
<title>Diaporama</title>
<style>@font-face { font-family: "Deck"; src: url("deck.ttf") format("truetype"); }
h1 { font-family: "Deck", serif; }</style></head>
<body><h1>Les fractions en diapositives</h1>
<img id="pizza" src="../media/pizza.png" alt="pizza">
<video id="video" src="../media/video.mp4" preload="auto" muted></video>
<p><a id="fiche" href="../fiche.pdf" target="_top">Fiche (PDF)</a></p>
<ul><li id="font">font: pending</li><li id="module">module: pending</li>
<li id="json">json: pending</li><li id="range">range: pending</li>
<li id="worker">worker: pending</li><li id="image">image: pending</li>
<li id="pdf">pdf: pending</li><li id="seek">seek: pending</li></ul>
<script type="module" src="deck.mjs"></script>
</body></html>
"#;

const DECK_MODULE: &str = r#"import { report } from "./report.mjs";
report("module", "loaded");
document.fonts.load('16px "Deck"').then(() => {
  const face = [...document.fonts].find((f) => f.family.replaceAll('"', "") === "Deck");
  report("font", face ? face.status : "missing");
});
fetch("slides.json").then((r) => r.json()).then((s) => report("json", s.slides.length + " slides"));
fetch("slides.json", { headers: { Range: "bytes=0-3" } }).then((r) =>
  report("range", r.status + " " + r.headers.get("content-range") + " etag " + !!r.headers.get("etag")));
// The documented way: a worker from a blob URL of the fetched script.
fetch("worker.js").then((r) => r.blob()).then((code) => {
  const worker = new Worker(URL.createObjectURL(code));
  worker.onmessage = (e) => report("worker", e.data);
  worker.postMessage(3);
});
const img = document.getElementById("pizza");
img.decode().then(() => report("image", "loaded " + img.naturalWidth + "px"));
fetch(document.getElementById("fiche").href).then(async (r) => {
  const magic = new TextDecoder().decode((await r.arrayBuffer()).slice(0, 5));
  report("pdf", r.headers.get("content-type") + " " + magic);
});
const video = document.getElementById("video");
video.addEventListener("seeked", () => report("seek", "done at " + Math.round(video.currentTime) + "s"));
const jump = () => { video.currentTime = video.duration - 1; };
if (video.readyState >= 1) jump(); else video.addEventListener("loadedmetadata", jump);
"#;

const REPORT_MODULE: &str = r#"export function report(id, text) {
  document.getElementById(id).textContent = id + ": " + text;
}
"#;

const WORKER: &str = "onmessage = (e) => postMessage(e.data + \"/8 computed\");\n";

/// Cookies an application on another port of the node's host name leaves in
/// the browser: six of 3,500 bytes, a 21 KB `Cookie` header.
const SET_COOKIES: &str = r#"<!doctype html><p id="cookies">cookies: pending</p><script>
for (let i = 0; i < 6; i++) document.cookie = "app" + i + "=" + "x".repeat(3500) + "; path=/; max-age=3600";
document.getElementById("cookies").textContent = "cookies: " + document.cookie.length + " bytes";
</script>"#;

/// An outside page (a school's ENT) that frames a lesson, which tells it what
/// it shows, and a node listing, which it reads itself. LESSON and LISTING are
/// replaced by URLs.
const ENT: &str = r#"<!doctype html><p id="lesson">lesson: pending</p><p id="listing">listing: pending</p>
<iframe id="l" src="LESSON"></iframe><iframe id="n" src="LISTING"></iframe>
<script>
const show = (id, text) => { document.getElementById(id).textContent = id + ": " + text.replace(/\s+/g, " "); };
addEventListener("message", (e) => show("lesson", e.data));
setTimeout(() => {
  try {
    const d = document.getElementById("n").contentDocument;
    show("listing", d.URL + " " + d.body.innerText);
  } catch (e) { show("listing", "unreadable " + e.name); }
}, 3000);
</script>"#;

const PAGE_BUDGET: Duration = Duration::from_secs(10);

/// A bundle holding `files` (path, content).
fn add(node: &Node, files: &[(&str, &[u8])]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    write_files(dir.path(), files)?;
    node.add(dir.path())
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> anyhow::Result<()> {
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("files sit in a folder"))?;
        std::fs::write(path, content)?;
    }
    Ok(())
}

/// Lesson A (with a folder `notes/` that has no index, so a listing), and
/// lesson B that goes after A's secrets. Returns their ids.
fn two_lessons(node: &Node) -> anyhow::Result<(String, String)> {
    let a = add(
        node,
        &[
            ("index.html", LESSON_A.as_bytes()),
            ("notes/consignes.txt", b"Lire la page 12."),
        ],
    )?;
    let b = add(
        node,
        &[("index.html", LESSON_B.replace("BUNDLE_A", &a).as_bytes())],
    )?;
    Ok((a, b))
}

fn assert_sandboxed(reply: &Reply) {
    let csp = reply.header("content-security-policy");
    assert!(csp.starts_with("sandbox allow-scripts "), "{csp:?}");
    assert!(csp.contains("allow-popups-to-escape-sandbox"), "{csp}");
    assert!(
        csp.contains("allow-top-navigation-by-user-activation"),
        "{csp}"
    );
    assert!(!csp.contains("allow-same-origin"), "{csp}");
    assert!(
        !csp.contains("frame-ancestors"),
        "lessons may be framed: {csp}"
    );
    assert_eq!(reply.header("x-frame-options"), "");
}

fn assert_anonymous_cors(reply: &Reply) {
    assert_eq!(reply.header("access-control-allow-origin"), "*");
    assert_eq!(reply.header("access-control-allow-credentials"), "");
    let exposed = reply.header("access-control-expose-headers");
    for name in ["Content-Range", "Content-Length", "ETag", "Accept-Ranges"] {
        assert!(exposed.contains(name), "{name} in {exposed:?}");
    }
}

fn assert_node_page(reply: &Reply) {
    let csp = reply.header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp:?}");
    assert!(!csp.contains("sandbox"), "{csp}");
    assert_eq!(reply.header("x-frame-options"), "DENY");
    assert_eq!(reply.header("cross-origin-opener-policy"), "same-origin");
}

#[tokio::test]
async fn lesson_pages_are_sandboxed_and_bundle_files_answer_any_origin() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let (a, _) = two_lessons(&node)?;
    let client = HttpsClient::for_node(&node)?;
    let page = client.get(&format!("/b/{id}/"), &[]).await?;
    assert_eq!(page.status, 200);
    assert_sandboxed(&page);
    assert_anonymous_cors(&page);
    for (path, kind) in [
        ("fiche.pdf", "application/pdf"),
        ("media/pizza.png", "image/png"),
    ] {
        let file = client.get(&format!("/b/{id}/{path}"), &[]).await?;
        assert_eq!((file.status, file.header("content-type")), (200, kind));
        assert_eq!(
            file.header("content-security-policy"),
            "",
            "{path} opens unsandboxed"
        );
        assert_anonymous_cors(&file);
    }
    let range = [("range", "bytes=0-9"), ("origin", "null")];
    let video = client
        .get(&format!("/b/{id}/media/video.mp4"), &range)
        .await?;
    assert_eq!(
        (video.status, video.header("content-range").is_empty()),
        (206, false)
    );
    assert_anonymous_cors(&video);
    let preflight = client
        .request(
            "OPTIONS",
            &format!("/b/{id}/media/video.mp4"),
            &[
                ("origin", "null"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "range"),
            ],
        )
        .await?;
    assert_eq!(preflight.status, 204);
    assert_anonymous_cors(&preflight);
    assert_eq!(
        preflight.header("access-control-allow-methods"),
        "GET, HEAD"
    );
    assert_eq!(preflight.header("access-control-allow-headers"), "*");
    // The node's own pages: a listing, an error, the health check.
    for (path, status) in [
        (format!("/b/{a}/notes/"), 200),
        (format!("/b/{a}/nope"), 404),
    ] {
        let reply = client.get(&path, &[]).await?;
        assert_eq!(reply.status, status, "{path}");
        assert_node_page(&reply);
    }
    assert_node_page(&client.get("/healthz", &[]).await?);
    // Uploads are for the CLI with a bearer token: no browser page reads them.
    let upload = client
        .request("POST", "/upload/x", &[("origin", "null")])
        .await?;
    assert_eq!(upload.header("access-control-allow-origin"), "");
    Ok(())
}

#[tokio::test]
async fn fetched_through_lessons_follow_the_deployments_policy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (source_dir, edge_dir) = (dir.path().join("source"), dir.path().join("edge"));
    let source = serving(&source_dir, &edge_dir)?;
    let id = source.add(&sample_lesson())?;
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        "[lessons]\nsandbox = [\"allow-scripts\", \"allow-forms\"]\n\
         frame_ancestors = [\"https://ent.example.org\"]\n",
    )?;
    let edge = Node::start_in(
        &edge_dir,
        &[
            "--peer",
            &source.peer_addr(),
            "--config",
            config.to_str().unwrap(),
        ],
    )?;
    let client = HttpsClient::for_node(&edge)?;
    let page = client.get(&format!("/b/{id}/index.html"), &[]).await?;
    assert_eq!(page.status, 200, "fetched through from the source");
    assert_eq!(
        page.header("content-security-policy"),
        "sandbox allow-scripts allow-forms; frame-ancestors https://ent.example.org"
    );
    assert_anonymous_cors(&page);
    let image = client.get(&format!("/b/{id}/media/pizza.png"), &[]).await?;
    assert_eq!(
        (image.status, image.header("content-security-policy")),
        (200, "")
    );
    assert_anonymous_cors(&image);
    // A deployment cannot give lessons the node's origin.
    std::fs::write(&config, "[lessons]\nsandbox = [\"allow-same-origin\"]\n")?;
    let refused = cartable_tests::cli_in(
        &dir.path().join("refused"),
        &[
            "serve",
            "--https",
            "127.0.0.1:0",
            "--quic",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    )?;
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("allow-same-origin would let every lesson"),
        "{why}"
    );
    Ok(())
}

#[tokio::test]
async fn twenty_kilobytes_of_cookies_still_get_lessons_on_http1_and_http2() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let client = HttpsClient::for_node(&node)?;
    let cookies = (0..6)
        .map(|i| format!("app{i}={}", "x".repeat(3500)))
        .collect::<Vec<_>>()
        .join("; ");
    let big = "y".repeat(20_000);
    for client in [client.clone(), client.http1_only()] {
        let page = client
            .get(&format!("/b/{id}/"), &[("cookie", &cookies)])
            .await?;
        assert_eq!(
            page.status, 200,
            "{:?} with a 21 KB Cookie header",
            page.version
        );
        assert!(String::from_utf8_lossy(&page.body).contains("Les fractions"));
        // Only cookies get the room: any other header that large is still refused.
        let other = client.get(&format!("/b/{id}/"), &[("x-big", &big)]).await?;
        assert_eq!(other.status, 431, "{:?}", other.version);
    }
    Ok(())
}

/// A plain HTTP server on another loopback port: an outside application on
/// the node's host name. Serves `pages` by path and keeps the largest
/// `Cookie` header it was sent.
fn outside_app(pages: Vec<(&'static str, String)>) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let cookies = Arc::new(AtomicUsize::new(0));
    let seen = cookies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let (mut path, mut line) = (String::new(), String::new());
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(rest) = line.strip_prefix("GET ") {
                    path = rest.split(' ').next().unwrap_or("").to_owned();
                } else if let Some(value) = line.to_ascii_lowercase().strip_prefix("cookie:") {
                    seen.fetch_max(value.trim().len(), Ordering::Relaxed);
                }
                line.clear();
            }
            let body = pages
                .iter()
                .find(|(p, _)| *p == path)
                .map_or("", |(_, b)| b);
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok((url, cookies))
}

/// One pupil's browser: an outside application leaves 21 KB of cookies; then
/// lesson A tries to keep a secret, lesson B to find it and to reach into A;
/// then a school's page frames lesson A and a node listing.
#[test]
fn two_lessons_in_one_browser_cannot_touch_each_other() -> anyhow::Result<()> {
    let node = Node::start()?;
    let (a, b) = two_lessons(&node)?;
    let (lesson, listing) = (
        format!("{}/b/{a}/", node.url),
        format!("{}/b/{a}/notes/", node.url),
    );
    let ent = ENT.replace("LESSON", &lesson).replace("LISTING", &listing);
    let (app, cookies_seen) = outside_app(vec![("/cookies", SET_COOKIES.into()), ("/ent", ent)])?;
    let browser = Profile::new()?;

    let setup = browser.dump_dom(&format!("{app}/cookies"), PAGE_BUDGET, &[])?;
    assert!(setup.contains("cookies: 21"), "{setup}");

    let dom_a = browser.dump_dom(&lesson, PAGE_BUDGET, &[])?;
    assert!(
        dom_a.contains("<h1>Leçon A</h1>"),
        "served despite the cookies: {dom_a}"
    );
    assert!(dom_a.contains("protocol: h2"), "{dom_a}");
    for store in ["storage", "cookie", "indexeddb"] {
        assert!(
            dom_a.contains(&format!("{store}: refused ")),
            "{store}: {dom_a}"
        );
    }
    assert!(dom_a.contains("storage: refused SecurityError"), "{dom_a}");

    let dom_b = browser.dump_dom(&format!("{}/b/{b}/", node.url), PAGE_BUDGET, &[])?;
    for store in ["storage", "cookie", "indexeddb", "frame"] {
        assert!(
            dom_b.contains(&format!("{store}: refused ")),
            "{store}: {dom_b}"
        );
    }
    assert!(dom_b.contains("frame: refused SecurityError"), "{dom_b}");
    assert!(
        !dom_b.contains("A-secret") && !dom_b.contains("Leçon A"),
        "{dom_b}"
    );

    let over_h1 = browser.dump_dom(&lesson, PAGE_BUDGET, &["--disable-http2"])?;
    assert!(over_h1.contains("protocol: http/1.1"), "{over_h1}");
    assert!(
        over_h1.contains("storage: refused SecurityError"),
        "{over_h1}"
    );

    // The outside page reads its frames' DOM only because this run turns the
    // same-origin policy and site isolation off (an observer's view: a frame
    // that rendered is readable, one that was refused shows Chromium's error
    // page); framing rules still apply.
    let observer = ["--disable-web-security", "--disable-site-isolation-trials"];
    let framed = browser.dump_dom(&format!("{app}/ent"), PAGE_BUDGET, &observer)?;
    assert!(
        cookies_seen.load(Ordering::Relaxed) > 20_000,
        "the browser held the outside application's cookies all along"
    );
    assert!(
        framed.contains("lesson: Leçon A storage: refused SecurityError"),
        "a framed lesson renders and runs: {framed}"
    );
    assert!(
        !framed.contains("consignes.txt"),
        "the listing must not render: {framed}"
    );
    assert!(framed.contains("listing: chrome-error://"), "{framed}");
    Ok(())
}

/// The sample lesson with a slide deck beside it, everything checked from the
/// deck's own DOM. (The sample page itself, now sandboxed, is `browser.rs`.)
#[test]
fn a_real_world_lesson_works_fully_in_the_sandbox() -> anyhow::Result<()> {
    let node = Node::start()?;
    let dir = tempfile::tempdir()?;
    let lesson = dir.path();
    for entry in walk(&sample_lesson())? {
        let to = lesson.join(entry.strip_prefix(sample_lesson())?);
        std::fs::create_dir_all(to.parent().expect("inside the lesson"))?;
        std::fs::copy(&entry, to)?;
    }
    let font = std::fs::read(system_font()?)?;
    write_files(
        lesson,
        &[
            ("deck/index.html", DECK.as_bytes()),
            ("deck/deck.mjs", DECK_MODULE.as_bytes()),
            ("deck/report.mjs", REPORT_MODULE.as_bytes()),
            ("deck/worker.js", WORKER.as_bytes()),
            (
                "deck/slides.json",
                br#"{"slides": ["tout", "parts", "fraction"]}"#,
            ),
            ("deck/deck.ttf", &font),
        ],
    )?;
    let id = node.add(lesson)?;
    let dom = Profile::new()?.dump_dom(&format!("{}/b/{id}/deck/", node.url), PAGE_BUDGET, &[])?;
    for check in [
        "font: loaded",
        "module: loaded",
        "json: 3 slides",
        "range: 206 bytes 0-3/",
        "worker: 3/8 computed",
        "image: loaded 240px",
        "pdf: application/pdf %PDF-",
        "seek: done at 7s",
    ] {
        assert!(dom.contains(check), "{check}: {dom}");
    }
    assert!(dom.contains(" etag true"), "ETag is exposed: {dom}");
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// A TrueType font Chromium's Debian package brings along (fonts-liberation).
fn system_font() -> anyhow::Result<std::path::PathBuf> {
    let fonts = walk(Path::new("/usr/share/fonts"))?;
    fonts
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "ttf"))
        .ok_or_else(|| anyhow::anyhow!("no .ttf under /usr/share/fonts: install fonts-liberation"))
}
