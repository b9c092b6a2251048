//! Response bodies of static files: in-memory bytes, files streamed in fixed-size chunks
//! (memory per response stays bounded by [`CHUNK`] whatever the file size), and on-the-fly
//! compression, either once for a cached file or streamed for a large one.

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use async_compression::Level;
use bytes::Bytes;
use futures_util::{FutureExt, TryStreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::ReaderStream;

use super::negotiate::Encoding;
use crate::error::{full_body, BoxError, GatewayBody};

/// Read size of streamed files.
pub const CHUNK: usize = 64 * 1024;

/// Brotli quality for files compressed once and cached (spent once per file version).
const CACHED_BR_QUALITY: i32 = 9;
/// Brotli quality and window (2^18 = 256 KiB) for streamed responses: fast, and the
/// encoder's memory stays bounded per response.
const STREAM_BR_QUALITY: i32 = 4;
const STREAM_BR_WINDOW: i32 = 18;
const STREAM_GZIP_LEVEL: i32 = 6;

pub fn memory(bytes: Bytes) -> GatewayBody {
    full_body(bytes)
}

pub fn empty() -> GatewayBody {
    full_body(Bytes::new())
}

/// Streams `len` bytes of `file` starting at `start`.
pub fn file(mut file: std::fs::File, start: u64, len: u64) -> std::io::Result<GatewayBody> {
    if start > 0 {
        // lseek only moves the offset: no disk I/O, safe on the runtime thread.
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start))?;
    }
    let reader = tokio::fs::File::from_std(file).take(len);
    Ok(stream(reader))
}

/// Streams `len` bytes of `file`, compressed with `encoding` as they are read.
pub fn compressed_file(file: std::fs::File, len: u64, encoding: Encoding) -> GatewayBody {
    let reader = BufReader::with_capacity(CHUNK, tokio::fs::File::from_std(file).take(len));
    match encoding {
        Encoding::Br => {
            let params = async_compression::brotli::EncoderParams::default()
                .quality(Level::Precise(STREAM_BR_QUALITY))
                .window_size(STREAM_BR_WINDOW);
            stream(BrotliEncoder::with_params(reader, params))
        }
        Encoding::Gzip => stream(GzipEncoder::with_quality(
            reader,
            Level::Precise(STREAM_GZIP_LEVEL),
        )),
        Encoding::Identity => stream(reader),
    }
}

fn stream<R: AsyncRead + Send + 'static>(reader: R) -> GatewayBody {
    let frames = ReaderStream::with_capacity(reader, CHUNK)
        .map_ok(Frame::data)
        .map_err(|e| -> BoxError { Box::new(e) });
    StreamBody::new(frames).boxed_unsync()
}

/// Compresses a whole in-memory file (blocking: call on `spawn_blocking`). `None` when the
/// result would not be smaller.
pub fn compress_bytes(data: &[u8], encoding: Encoding) -> Option<Bytes> {
    let out = match encoding {
        Encoding::Br => {
            let params = async_compression::brotli::EncoderParams::default()
                .quality(Level::Precise(CACHED_BR_QUALITY))
                .size_hint(data.len());
            read_all(BrotliEncoder::with_params(data, params))
        }
        Encoding::Gzip => read_all(GzipEncoder::with_quality(data, Level::Best)),
        Encoding::Identity => None,
    }?;
    (out.len() < data.len()).then(|| Bytes::from(out))
}

/// Drives an encoder over an in-memory reader to the end. Such a reader is always ready,
/// so the future completes on its first poll; no runtime is needed.
fn read_all(mut encoder: impl AsyncRead + Unpin) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match encoder.read_to_end(&mut out).now_or_never() {
        Some(Ok(_)) => Some(out),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder};

    use super::*;

    async fn decode(data: &[u8], encoding: Encoding) -> Vec<u8> {
        let mut out = Vec::new();
        match encoding {
            Encoding::Br => BrotliDecoder::new(data).read_to_end(&mut out).await,
            Encoding::Gzip => GzipDecoder::new(data).read_to_end(&mut out).await,
            Encoding::Identity => return data.to_vec(),
        }
        .unwrap();
        out
    }

    async fn collect(body: GatewayBody) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("line {i} of some css .a{{color:red}}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[tokio::test]
    async fn compressed_bytes_round_trip() {
        let data = text(200);
        for encoding in [Encoding::Br, Encoding::Gzip] {
            let packed = compress_bytes(&data, encoding).unwrap();
            assert!(packed.len() < data.len() / 3);
            assert_eq!(decode(&packed, encoding).await, data);
        }
        // Incompressible or tiny input is not worth a variant.
        assert!(compress_bytes(b"ab", Encoding::Gzip).is_none());
        assert!(compress_bytes(b"ab", Encoding::Identity).is_none());
    }

    #[tokio::test]
    async fn files_stream_whole_ranges_and_compressed() {
        let data = text(5000);
        assert!(data.len() > 2 * CHUNK);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let len = data.len() as u64;

        let body = file(f.try_clone().unwrap(), 0, len).unwrap();
        assert_eq!(collect(body).await, data);
        let body = file(f.try_clone().unwrap(), 100, 50).unwrap();
        assert_eq!(collect(body).await, &data[100..150]);
        for encoding in [Encoding::Br, Encoding::Gzip] {
            let mut g = f.try_clone().unwrap();
            std::io::Seek::rewind(&mut g).unwrap();
            let packed = collect(compressed_file(g, len, encoding)).await;
            assert!(packed.len() < data.len() / 3);
            assert_eq!(decode(&packed, encoding).await, data);
        }
    }
}
