//! Request bodies on their way upstream: read whole before the upstream is contacted
//! (`request_buffering: true`, shielding Gunicorn's sync workers from slow clients: in memory
//! up to [`MEMORY_THRESHOLD`], spilled to an unnamed temporary file beyond it), or streamed
//! through with the size limit enforced as bytes pass.

use std::io::{Seek, SeekFrom};

use crate::listener::RequestBody;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use tokio::io::AsyncWriteExt;

use crate::error::{full_body, BoxError, GatewayBody, GatewayError};

/// Bodies up to this size stay in memory; larger ones go to a temporary file.
pub const MEMORY_THRESHOLD: usize = 1024 * 1024;
const FILE_READ_CHUNK: usize = 64 * 1024;

/// A request body read in full before the upstream is contacted.
#[derive(Debug)]
pub enum Buffered {
    Empty,
    Memory(Bytes),
    File { file: std::fs::File, len: u64 },
}

/// Rejects up front a body whose declared length is over `limit`.
pub fn check_declared_length(body: &RequestBody, limit: u64) -> Result<(), GatewayError> {
    match body.size_hint().exact() {
        Some(len) if len > limit => Err(GatewayError::BodyTooLarge(limit)),
        _ => Ok(()),
    }
}

/// Reads the whole body (never more than `limit` bytes) before anything is sent upstream.
pub async fn buffer(mut body: RequestBody, limit: u64) -> Result<Buffered, GatewayError> {
    if body.is_end_stream() {
        return Ok(Buffered::Empty);
    }
    let mut memory = BytesMut::new();
    let mut spill: Option<(std::fs::File, tokio::fs::File)> = None;
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(GatewayError::ClientBody)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        total += data.len() as u64;
        if total > limit {
            return Err(GatewayError::BodyTooLarge(limit));
        }
        match &mut spill {
            Some((_, file)) => file.write_all(&data).await.map_err(spill_error)?,
            None if memory.len() + data.len() <= MEMORY_THRESHOLD => {
                memory.extend_from_slice(&data)
            }
            None => {
                let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                    .await
                    .map_err(|e| GatewayError::Internal(e.to_string()))?
                    .map_err(spill_error)?;
                let mut file =
                    tokio::fs::File::from_std(std_file.try_clone().map_err(spill_error)?);
                file.write_all(&memory).await.map_err(spill_error)?;
                file.write_all(&data).await.map_err(spill_error)?;
                memory = BytesMut::new();
                spill = Some((std_file, file));
            }
        }
    }
    Ok(match spill {
        Some((std_file, mut file)) => {
            file.flush().await.map_err(spill_error)?;
            Buffered::File {
                file: std_file,
                len: total,
            }
        }
        None if total == 0 => Buffered::Empty,
        None => Buffered::Memory(memory.freeze()),
    })
}

fn spill_error(e: std::io::Error) -> GatewayError {
    GatewayError::Internal(format!(
        "could not buffer request body to a temporary file: {e}"
    ))
}

impl Buffered {
    pub fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::Memory(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body that sends this buffer upstream (a retry on another server gets the same
    /// body back unread, so it is built once). Not async: a rewind only moves the file
    /// offset (no I/O), and an `await` here would put tokio's file state into every
    /// request's future.
    pub fn into_body(self) -> Result<GatewayBody, GatewayError> {
        Ok(match self {
            Self::Empty => empty_body(),
            Self::Memory(bytes) => full_body(bytes),
            Self::File { mut file, .. } => {
                // The writing handle shared this descriptor's offset: rewind it.
                file.seek(SeekFrom::Start(0)).map_err(spill_error)?;
                let file = tokio::fs::File::from_std(file);
                let stream = tokio_util::io::ReaderStream::with_capacity(file, FILE_READ_CHUNK)
                    .map_ok(Frame::data)
                    .map_err(BoxError::from);
                StreamBody::new(stream).boxed_unsync()
            }
        })
    }
}

/// A body with no bytes (boxing it allocates nothing).
pub fn empty_body() -> GatewayBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Streams the client's body upstream, cutting it off once it passes `limit`.
pub fn streaming(body: RequestBody, limit: u64) -> GatewayBody {
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync()
}

/// Whether an error (from the upstream client) was caused by the body passing its limit.
pub fn is_length_limit_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}
