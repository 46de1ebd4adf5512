//! Length-prefixed frames on QUIC streams. The length is checked against the
//! cap before anything is allocated.

use cartable_proto::wire::{self, Request, Response};
use quinn::{RecvStream, SendStream};

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended early.
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Writing failed.
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// The frame is over its cap or does not decode.
    #[error("bad frame: {0}")]
    Decode(#[from] cartable_proto::DecodeError),
}

/// Reads one frame body of at most `max` bytes.
pub async fn read_body(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = wire::frame_len(prefix, max)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

/// Reads one request frame.
pub async fn read_request(recv: &mut RecvStream) -> Result<Request, FrameError> {
    Ok(Request::decode(
        &read_body(recv, wire::MAX_REQUEST_BYTES).await?,
    )?)
}

/// Reads one response frame.
pub async fn read_response(recv: &mut RecvStream) -> Result<Response, FrameError> {
    Ok(Response::decode(
        &read_body(recv, wire::MAX_RESPONSE_BYTES).await?,
    )?)
}

/// Writes one frame.
pub async fn write_frame(send: &mut SendStream, body: &[u8]) -> Result<(), FrameError> {
    send.write_all(&wire::frame_prefix(body.len())).await?;
    send.write_all(body).await?;
    Ok(())
}
