//! The `Content-Type` of a file, from its extension. Recorded in the manifest at
//! import, so every node serves a file with the same type.

/// The type for files whose extension is unknown: browsers will not sniff it
/// (nodes send `nosniff`), so unknown files download instead of rendering.
pub const FALLBACK: &str = "application/octet-stream";

/// The content type for `path`, by its extension (case-insensitive).
pub fn for_path(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((_, ext)) = name.rsplit_once('.') else {
        return FALLBACK;
    };
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "pdf" => "application/pdf",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "oga" | "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "vtt" => "text/vtt; charset=utf-8",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "zip" => "application/zip",
        "epub" => "application/epub+zip",
        "odt" => "application/vnd.oasis.opendocument.text",
        "ods" => "application/vnd.oasis.opendocument.spreadsheet",
        "odp" => "application/vnd.oasis.opendocument.presentation",
        _ => FALLBACK,
    }
}

/// Whether `value` can be sent as a header value: visible ASCII and spaces only.
/// Manifests come from peers, so their content types are checked before use.
pub fn is_valid(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lesson_files_get_their_types() {
        assert_eq!(for_path("index.html"), "text/html; charset=utf-8");
        assert_eq!(for_path("media/VIDEO.MP4"), "video/mp4");
        assert_eq!(for_path("fiche.pdf"), "application/pdf");
        assert_eq!(for_path("dir.png/noext"), FALLBACK);
        assert_eq!(for_path(".bashrc"), FALLBACK);
    }

    #[test]
    fn header_unsafe_types_are_invalid() {
        assert!(is_valid("text/html; charset=utf-8"));
        assert!(!is_valid("text/html\r\nX-Evil: 1"));
        assert!(!is_valid(""));
    }
}
