//! The admin API seen from the CLI: [`ApiClient`] adds the admin token and the
//! JSON conventions of [`cartable_proto::api`] to an [`HttpsClient`].

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cartable_net::client::{HttpsClient, full, parse_answer};
use cartable_net::pin::Pin;
use http::{Method, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Admin API calls are small: a coordinator silent this long is stuck.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of the admin API: bearer token, JSON answers, `{"error"}` as errors.
#[derive(Debug)]
pub struct ApiClient {
    http: HttpsClient,
    token: String,
}

impl ApiClient {
    /// A client of the coordinator at `base_url`.
    pub fn new(base_url: &str, pin: Pin, token: String) -> anyhow::Result<Self> {
        Ok(Self {
            http: HttpsClient::new(base_url, pin)?,
            token,
        })
    }

    /// The full URL of `path` on the coordinator.
    pub fn url(&self, path: &str) -> String {
        self.http.url(path)
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with no body.
    pub async fn post<T: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        self.call(Method::POST, path, None).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&mut self, path: &str) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, None).await
    }

    /// `method path` with a JSON body.
    pub async fn send_json<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let body = ("application/json", Bytes::from(serde_json::to_vec(body)?));
        self.call(method, path, Some(body)).await
    }

    /// `POST path` with raw bytes.
    pub async fn post_bytes<T: DeserializeOwned>(
        &mut self,
        path: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<T> {
        let body = ("application/octet-stream", Bytes::from(bytes));
        self.call(Method::POST, path, Some(body)).await
    }

    /// `POST path` with no body, for an answer that is not JSON (a backup
    /// file): its bytes, or the error the API answered.
    pub async fn post_for_bytes(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let (status, answer) = self.exchange(Method::POST, path, None).await?;
        if !status.is_success() {
            return parse_answer::<serde_json::Value>(status, &answer).map(|_| Bytes::new());
        }
        Ok(answer)
    }

    async fn call<T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<T> {
        let url = self.url(path);
        let (status, answer) = self.exchange(method.clone(), path, body).await?;
        // An error answer is printed as it is (`error: 404 no such node`); only a
        // success that is not the expected JSON needs the route to be understood.
        if !status.is_success() {
            return parse_answer(status, &answer);
        }
        parse_answer(status, &answer).with_context(|| format!("{method} {url}"))
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<(http::StatusCode, Bytes)> {
        let mut headers = vec![(header::AUTHORIZATION, format!("Bearer {}", self.token))];
        let body = match body {
            Some((content_type, bytes)) => {
                headers.push((header::CONTENT_TYPE, content_type.to_owned()));
                full(bytes)
            }
            None => full(Bytes::new()),
        };
        let url = self.url(path);
        let sent = self.http.send(method.clone(), path, &headers, body);
        tokio::time::timeout(API_TIMEOUT, sent)
            .await
            .map_err(|_| anyhow::anyhow!("{method} {url}: no answer in {API_TIMEOUT:?}"))?
    }
}
