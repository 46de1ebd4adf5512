//! `GET /`: the node's status page ([`crate::status`]), with the headers of
//! the node's own pages (no script, no style, no framing) and never cached.
//! It is admitted and shed like every other request, and costs one snapshot
//! every few seconds however often it is asked for.

use http::{HeaderValue, Response, header};

use super::ServeContext;
use super::body::Body;
use super::error::HttpError;
use super::respond::html_page;
use crate::status::page;

/// The status page, or 404 on a server without one.
pub async fn answer(ctx: &ServeContext, head: bool) -> Result<Response<Body>, HttpError> {
    let sources = ctx
        .status
        .as_ref()
        .ok_or(HttpError::NotFound("not found"))?;
    let snapshot = sources.snapshot().await.map_err(|e| {
        tracing::error!(error = %e, "status page: cannot read the store");
        HttpError::Internal
    })?;
    let html = page::render(&sources.id.to_string(), &snapshot, sources.traffic());
    let mut response = html_page(html, head, "no-store");
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}
