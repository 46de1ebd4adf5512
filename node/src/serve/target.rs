//! From a request path to what it names: the status page `/`, `/healthz`, a
//! bundle's root, a folder or a file. Every path spelling is decoded here, once, and checked against the
//! path rules, so nothing outside a bundle can be named.

use cartable_proto::{BundleId, BundlePath};

use super::error::HttpError;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/`: the node's status page.
    Status,
    /// `/healthz`
    Health,
    /// `/n/{name}/{path}`: the rest of the path, as sent (names are URL-safe).
    Name(String),
    /// `/b/{id}` without the slash: redirected to `/b/{id}/`.
    BundleRoot(BundleId),
    /// `/b/{id}/` or `/b/{id}/{folder}/`; `folder` is empty for the root.
    Folder(BundleId, String),
    /// `/b/{id}/{path}`.
    File(BundleId, BundlePath),
}

/// Decodes and checks a raw request path (without the query).
pub fn parse(raw: &str) -> Result<Target, HttpError> {
    match raw {
        "/" => return Ok(Target::Status),
        "/healthz" => return Ok(Target::Health),
        _ => {}
    }
    if let Some(rest) = raw.strip_prefix("/n/") {
        return Ok(Target::Name(rest.to_owned()));
    }
    let rest = raw
        .strip_prefix("/b/")
        .ok_or(HttpError::NotFound("not found"))?;
    let (id_text, path) = match rest.split_once('/') {
        Some((id, path)) => (id, Some(path)),
        None => (rest, None),
    };
    let id: BundleId = id_text
        .parse()
        .map_err(|_| HttpError::BadRequest("malformed bundle id"))?;
    let Some(path) = path else {
        return Ok(Target::BundleRoot(id));
    };
    if path.is_empty() {
        return Ok(Target::Folder(id, String::new()));
    }
    let (path, is_folder) = match path.strip_suffix('/') {
        Some(folder) => (folder, true),
        None => (path, false),
    };
    // Without a `%` nothing is encoded: the path is its own decoding.
    let decoded = if path.contains('%') {
        path.split('/')
            .map(decode_segment)
            .collect::<Result<Vec<_>, _>>()?
            .join("/")
    } else {
        path.to_owned()
    };
    let checked = BundlePath::new(decoded)
        .map_err(|_| HttpError::BadRequest("path breaks the path rules"))?;
    Ok(if is_folder {
        Target::Folder(id, checked.to_string())
    } else {
        Target::File(id, checked)
    })
}

/// Percent-decodes one segment; an encoded `/` would smuggle a separator in.
fn decode_segment(segment: &str) -> Result<String, HttpError> {
    let out = cartable_proto::hex::percent_decode(segment)
        .ok_or(HttpError::BadRequest("malformed percent-encoding"))?;
    let text = String::from_utf8(out).map_err(|_| HttpError::BadRequest("path is not UTF-8"))?;
    if text.contains('/') {
        return Err(HttpError::BadRequest("encoded slash in path"));
    }
    Ok(text)
}

/// Percent-encodes a path segment for a link: everything but unreserved characters.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn id() -> BundleId {
        ID.parse().unwrap()
    }

    #[test]
    fn routes_resolve() {
        assert_eq!(parse("/healthz"), Ok(Target::Health));
        assert_eq!(parse(&format!("/b/{ID}")), Ok(Target::BundleRoot(id())));
        assert_eq!(
            parse(&format!("/b/{ID}/")),
            Ok(Target::Folder(id(), String::new()))
        );
        assert_eq!(
            parse(&format!("/b/{ID}/media/")),
            Ok(Target::Folder(id(), "media".into()))
        );
        assert_eq!(
            parse(&format!("/b/{ID}/le%C3%A7on%201.pdf")),
            Ok(Target::File(id(), BundlePath::new("leçon 1.pdf").unwrap()))
        );
        assert_eq!(parse("/elsewhere"), Err(HttpError::NotFound("not found")));
        assert_eq!(
            parse("/b/zz/x"),
            Err(HttpError::BadRequest("malformed bundle id"))
        );
    }

    #[test]
    fn every_traversal_spelling_is_refused() {
        for evil in [
            "../../etc/passwd",
            "a/../../x",
            "%2e%2e/%2e%2e/etc/passwd",
            "%2E%2E/x",
            "a%2f..%2f..%2fx",
            "a%2F..",
            "..%5c..%5cx",
            "a\\..\\x",
            "a%00b",
            "/etc/passwd",
            "./index.html",
            "a//b",
            "%",
            "%zz",
            "%ff",
        ] {
            let got = parse(&format!("/b/{ID}/{evil}"));
            assert!(
                matches!(got, Err(HttpError::BadRequest(_))),
                "{evil}: {got:?}"
            );
        }
    }

    #[test]
    fn percent_escapes_take_two_hex_digits_and_nothing_else() {
        assert_eq!(decode_segment("%41%6a%6A"), Ok("Ajj".into()));
        // `u8::from_str_radix` reads a sign: these decoded to control bytes.
        for bad in ["%+a", "a%+0b", "%-1", "%4", "%4g", "%é"] {
            assert_eq!(
                decode_segment(bad),
                Err(HttpError::BadRequest("malformed percent-encoding")),
                "{bad}"
            );
        }
    }

    #[test]
    fn links_are_encoded() {
        assert_eq!(encode_segment("leçon 1.pdf"), "le%C3%A7on%201.pdf");
        assert_eq!(encode_segment("a<b>"), "a%3Cb%3E");
    }
}
