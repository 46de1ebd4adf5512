//! The HTML listing of a bundle folder that has no `index.html`.

use std::collections::BTreeMap;
use std::fmt::Write;

use cartable_proto::Manifest;

use super::target::encode_segment;

/// A page listing the subfolders and files directly in `folder` ("" for the root).
pub fn render(manifest: &Manifest, folder: &str) -> String {
    // name → Some(size) for a file, None for a subfolder.
    let mut items: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    let skip = if folder.is_empty() {
        0
    } else {
        folder.len() + 1
    };
    for e in manifest.files_under(folder) {
        let rest = &e.path.as_str()[skip..];
        match rest.split_once('/') {
            Some((sub, _)) => items.insert(sub, None),
            None => items.insert(rest, Some(e.size)),
        };
    }
    let title = escape(&format!("/{folder}"));
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<ul>\n"
    );
    for (name, size) in items {
        let (href, label, note) = match size {
            Some(size) => (
                encode_segment(name),
                escape(name),
                format!(" ({size} bytes)"),
            ),
            None => (
                format!("{}/", encode_segment(name)),
                format!("{}/", escape(name)),
                String::new(),
            ),
        };
        let _ = writeln!(html, "<li><a href=\"{href}\">{label}</a>{note}</li>");
    }
    html.push_str("</ul>\n</body></html>\n");
    html
}

/// Text as HTML: the five characters that could end a text or an attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use cartable_proto::{BlobHash, BundlePath, ManifestEntry};

    use super::*;

    #[test]
    fn lists_one_level_with_escaped_names() {
        let entry = |p: &str| ManifestEntry {
            path: BundlePath::new(p).unwrap(),
            hash: BlobHash::of(p.as_bytes()),
            size: 7,
            content_type: "text/plain".into(),
        };
        let m = Manifest::new(vec![
            entry("a<b>.txt"),
            entry("media/x.png"),
            entry("media/y/z"),
        ])
        .unwrap();
        let root = render(&m, "");
        assert!(
            root.contains("<a href=\"a%3Cb%3E.txt\">a&lt;b&gt;.txt</a> (7 bytes)"),
            "{root}"
        );
        assert!(root.contains("<a href=\"media/\">media/</a>"));
        assert!(!root.contains("x.png"));
        let media = render(&m, "media");
        assert!(
            media.contains("href=\"x.png\"") && media.contains("href=\"y/\""),
            "{media}"
        );
    }
}
