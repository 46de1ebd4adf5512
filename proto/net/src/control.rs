//! A node's side of the control protocol ([`cartable_proto::control`]): one
//! request to the coordinator on its own stream, one answer.

use std::time::Duration;

use anyhow::Context;
use cartable_proto::control::{self, ControlRequest, ControlResponse};

use crate::peer::frame;

/// How long the coordinator has to answer a join or a heartbeat.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one control request and reads its answer.
pub async fn ask(
    conn: &quinn::Connection,
    request: &ControlRequest,
) -> anyhow::Result<ControlResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_frame(&mut send, &control::encode(request)).await?;
    let _ = send.finish();
    let body = tokio::time::timeout(
        ANSWER_TIMEOUT,
        frame::read_body(&mut recv, control::MAX_FRAME_BYTES),
    )
    .await
    .context("no answer from the coordinator within 30 s")??;
    Ok(control::decode(&body)?)
}
