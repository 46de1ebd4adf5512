//! What a browser may do with each answer. Lessons come from thousands of
//! teachers: every lesson document (HTML, SVG, XML, anything a browser could
//! run as a page) gets `Content-Security-Policy: sandbox` without
//! `allow-same-origin`, so it runs in an opaque origin of its own — no cookies,
//! no storage, no reach into another lesson or the node's pages. Passive files
//! (images, media, fonts, PDF, JSON, scripts, styles) carry no sandbox: a PDF
//! opened from a lesson still shows in the browser's viewer.
//!
//! A sandboxed page is cross-origin even to its own bundle, so bundle answers
//! carry anonymous CORS. Lessons may be framed anywhere by default (a school's
//! ENT or Moodle); the node's own pages (listings, errors, health) never are.
//!
//! ```toml
//! [lessons]
//! # Sandbox flags of lesson documents. `allow-same-origin` is refused: it would
//! # give every lesson the node's origin, its cookies and every other lesson's
//! # storage. Default: the list below.
//! sandbox = ["allow-scripts", "allow-forms", "allow-modals", "allow-downloads",
//!            "allow-presentation", "allow-popups", "allow-popups-to-escape-sandbox",
//!            "allow-top-navigation-by-user-activation"]
//! # Pages that may show lessons in a frame (CSP frame-ancestors sources).
//! # Default: none listed, so any page may.
//! frame_ancestors = ["https://ent.example.org", "https://*.moodle.example.org"]
//! ```

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Deserialize;

use super::body::Body;

/// What lessons need by default: scripts, forms, dialogs, downloads, full
/// screen, pop-ups that open outside sites normally, and links that replace the
/// whole tab (how a PDF leaves a framed lesson for the browser's viewer).
const DEFAULT_SANDBOX: &[&str] = &[
    "allow-scripts",
    "allow-forms",
    "allow-modals",
    "allow-downloads",
    "allow-presentation",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-top-navigation-by-user-activation",
];
/// Sandbox flags a deployment may choose from: the HTML standard's, less
/// `allow-same-origin`.
const KNOWN_FLAGS: &[&str] = &[
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-scripts",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
];
/// The node's own pages load nothing, run nothing and are never framed.
const NODE_PAGE_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
/// What lesson players read from a cross-origin answer.
const EXPOSED: &str = "Content-Range, Content-Length, ETag, Accept-Ranges";
/// How long browsers may reuse a preflight answer (Chromium caps it at 2 h).
const PREFLIGHT_MAX_AGE: &str = "7200";

/// The `[lessons]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLessons {
    sandbox: Option<Vec<String>>,
    frame_ancestors: Option<Vec<String>>,
}

/// The checked policy: the `Content-Security-Policy` of lesson documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LessonPolicy {
    csp: HeaderValue,
}

impl Default for LessonPolicy {
    fn default() -> Self {
        FileLessons::default()
            .check()
            .expect("the defaults are valid")
    }
}

impl FileLessons {
    /// Checks every flag and source and builds the header.
    pub fn check(&self) -> anyhow::Result<LessonPolicy> {
        let sandbox = match &self.sandbox {
            Some(flags) => flags.iter().map(String::as_str).collect(),
            None => DEFAULT_SANDBOX.to_vec(),
        };
        for flag in &sandbox {
            anyhow::ensure!(
                *flag != "allow-same-origin",
                "lessons.sandbox: allow-same-origin would let every lesson read the \
                 others' storage and cookies and rewrite their pages"
            );
            anyhow::ensure!(
                KNOWN_FLAGS.contains(flag),
                "lessons.sandbox: unknown flag {flag:?} (known: {})",
                KNOWN_FLAGS.join(", ")
            );
        }
        let mut csp = String::from("sandbox");
        for flag in sandbox {
            csp = format!("{csp} {flag}");
        }
        if let Some(sources) = &self.frame_ancestors {
            anyhow::ensure!(
                !sources.is_empty(),
                "lessons.frame_ancestors: list at least one source, or leave it out \
                 to let any page frame lessons"
            );
            for source in sources {
                anyhow::ensure!(
                    is_source(source),
                    "lessons.frame_ancestors: {source:?} is not a CSP source \
                     (e.g. \"https://ent.example.org\" or \"'self'\")"
                );
            }
            csp = format!("{csp}; frame-ancestors {}", sources.join(" "));
        }
        let csp = HeaderValue::from_str(&csp)?;
        Ok(LessonPolicy { csp })
    }
}

/// A host source, scheme source, `'self'` or `'none'`: visible ASCII with no
/// separator that would end the directive or start another.
fn is_source(source: &str) -> bool {
    matches!(source, "'self'" | "'none'")
        || (!source.is_empty()
            && source
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\'')))
}

impl LessonPolicy {
    /// Headers of a bundle file of `content_type`: the sandbox unless the file
    /// is passive.
    pub fn apply(&self, headers: &mut HeaderMap, content_type: &str) {
        if !is_passive(content_type) {
            headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        }
    }
}

/// Whether a browser shows this type without running it as a page. Unknown and
/// malformed types are not passive: a browser may render them (SVG, XML, XSLT,
/// `multipart/x-mixed-replace`) and would then run them on the node's origin.
fn is_passive(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    // Asked on every request: types are almost always lower case already.
    let essence: Cow<str> = if essence.bytes().any(|b| b.is_ascii_uppercase()) {
        essence.to_ascii_lowercase().into()
    } else {
        essence.into()
    };
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    if subtype.is_empty() || subtype.contains("xml") {
        return false;
    }
    matches!(kind, "image" | "audio" | "video" | "font")
        || matches!(
            essence.as_ref(),
            "application/pdf"
                | "application/json"
                | "application/javascript"
                | "application/wasm"
                | "application/octet-stream"
                | "application/zip"
                | "text/javascript"
                | "text/css"
                | "text/plain"
                | "text/csv"
                | "text/vtt"
        )
        || (kind == "application" && subtype.ends_with("+json"))
}

/// Anonymous CORS on an answer about bundle content: any page may read it,
/// never with the browser's credentials.
pub fn allow_any_origin(headers: &mut HeaderMap) {
    insert_all(
        headers,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED),
        ],
    );
}

/// The answer to a CORS preflight (`OPTIONS`) for bundle content.
pub fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    allow_any_origin(h);
    insert_all(
        h,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD"),
            // Without credentials `*` means any header: players send Range, If-Range…
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
            (header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE),
        ],
    );
    response
}

/// Headers of the node's own pages (listings, errors, health): loaded by no
/// frame, in a browsing context group of their own.
pub fn node_page(headers: &mut HeaderMap) {
    insert_all(
        headers,
        [
            (header::CONTENT_SECURITY_POLICY, NODE_PAGE_CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                "same-origin",
            ),
        ],
    );
}

fn insert_all<const N: usize>(headers: &mut HeaderMap, pairs: [(HeaderName, &'static str); N]) {
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csp(policy: &LessonPolicy, content_type: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        policy.apply(&mut h, content_type);
        h.get(header::CONTENT_SECURITY_POLICY)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn documents_are_sandboxed_and_passive_files_are_not() {
        let policy = LessonPolicy::default();
        for document in [
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "text/xsl",
            "multipart/x-mixed-replace; boundary=x",
            "application/x-unknown",
            "",
            "garbage",
        ] {
            let csp = csp(&policy, document).unwrap_or_default();
            assert!(
                csp.starts_with("sandbox allow-scripts "),
                "{document}: {csp}"
            );
            assert!(!csp.contains("allow-same-origin"), "{csp}");
        }
        for passive in [
            "application/pdf",
            "image/png",
            "video/mp4",
            "font/woff2",
            "application/json",
            "application/manifest+json",
            "text/javascript; charset=utf-8",
            "text/css",
        ] {
            assert_eq!(csp(&policy, passive), None, "{passive}");
        }
    }

    #[test]
    fn the_policy_is_configurable_and_checked() {
        let parse = |text: &str| -> anyhow::Result<LessonPolicy> {
            toml::from_str::<FileLessons>(text)?.check()
        };
        let strict = parse(
            "sandbox = [\"allow-scripts\"]\nframe_ancestors = [\"'self'\", \"https://ent.example.org\"]",
        )
        .unwrap();
        assert_eq!(
            csp(&strict, "text/html").unwrap(),
            "sandbox allow-scripts; frame-ancestors 'self' https://ent.example.org"
        );
        let none = parse("sandbox = []").unwrap();
        assert_eq!(csp(&none, "text/html").unwrap(), "sandbox");
        for (bad, why) in [
            (
                "sandbox = [\"allow-same-origin\"]",
                "allow-same-origin would",
            ),
            ("sandbox = [\"allow-everything\"]", "unknown flag"),
            (
                "frame_ancestors = [\"https://a; script-src *\"]",
                "not a CSP source",
            ),
            ("frame_ancestors = []", "at least one source"),
            ("sandboxed = []", "unknown field"),
        ] {
            let error = format!("{:#}", parse(bad).unwrap_err());
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
