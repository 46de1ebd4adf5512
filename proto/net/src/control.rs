//! A node's side of the control protocol ([`cartable_proto::control`]): one
//! request to the coordinator on its own stream, one answer. Requests go at
//! [`Protocol::CURRENT`]; an answer of a version this build does not speak is
//! an error naming both versions (the node goes on with its last orders).

use std::time::Duration;

use anyhow::Context;
use cartable_proto::control::{self, ControlRequest, ControlResponse, Protocol};

use crate::peer::frame;

/// How long the coordinator has to answer a join or a heartbeat.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends one control request and reads its answer.
pub async fn ask(
    conn: &quinn::Connection,
    request: &ControlRequest,
) -> anyhow::Result<ControlResponse> {
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_frame(
        &mut send,
        &control::encode_versioned(Protocol::CURRENT, request),
    )
    .await?;
    let _ = send.finish();
    let body = tokio::time::timeout(
        ANSWER_TIMEOUT,
        frame::read_body(&mut recv, control::MAX_FRAME_BYTES),
    )
    .await
    .context("no answer from the coordinator within 30 s")??;
    let (_, answer) =
        control::decode_versioned(&body).context("the coordinator's answer could not be read")?;
    Ok(answer)
}
