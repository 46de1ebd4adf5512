//! The one place where failures become HTTP statuses. Reasons are short, fixed
//! texts: internal error details go to the log, never to a browser.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::Body;
use super::policy;

/// A request that cannot be answered with content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed id, path, or header: 400.
    BadRequest(&'static str),
    /// No credential, or one that does not parse: 401.
    Unauthorized(&'static str),
    /// A credential that does not allow this request: 403.
    Forbidden(&'static str),
    /// No such bundle, file or route: 404.
    NotFound(&'static str),
    /// A method other than GET, HEAD or OPTIONS: 405.
    MethodNotAllowed,
    /// An upload body of unknown length: 411.
    LengthRequired,
    /// An upload body over its limit: 413.
    TooLarge(&'static str),
    /// A range outside the file: 416.
    RangeNotSatisfiable {
        /// The file's length, for `Content-Range: bytes */len`.
        len: u64,
    },
    /// The content is here but cannot be served now (damaged, pending repair),
    /// or too many uploads are in progress: 503.
    Unavailable(&'static str),
    /// A peer's answer contradicts what this node verified (a manifest giving
    /// a held blob another size): 502.
    BadGateway(&'static str),
    /// An upload that would overrun the node's capacity or its disk: 507.
    InsufficientStorage(&'static str),
    /// Something failed on our side: 500.
    Internal,
}

impl HttpError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(r)
            | Self::Unauthorized(r)
            | Self::Forbidden(r)
            | Self::NotFound(r)
            | Self::TooLarge(r)
            | Self::Unavailable(r)
            | Self::BadGateway(r)
            | Self::InsufficientStorage(r) => r,
            Self::MethodNotAllowed => "only GET, HEAD and OPTIONS are allowed",
            Self::LengthRequired => "Content-Length required",
            Self::RangeNotSatisfiable { .. } => "range not satisfiable",
            Self::Internal => "internal error",
        }
    }

    /// The response: the status and its reason as a one-line text body.
    pub fn into_response(self) -> Response<Body> {
        let mut response = text(self.status(), format!("{}\n", self.reason()));
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        policy::node_page(headers);
        match self {
            Self::MethodNotAllowed => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, OPTIONS"),
                );
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RangeNotSatisfiable { len } => {
                let value = HeaderValue::from_str(&format!("bytes */{len}"))
                    .expect("digits are a valid header value");
                headers.insert(header::CONTENT_RANGE, value);
            }
            Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        response
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
