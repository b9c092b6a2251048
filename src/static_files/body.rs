//! Response bodies of static files: in-memory bytes, files streamed in fixed-size chunks
//! (memory per response stays bounded by [`CHUNK`] whatever the file size), and on-the-fly
//! compression, either once for a cached file or streamed for a large one.

use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use async_compression::Level;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
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

/// Responses compressed while they stream, at most at once in the process. An encoder holds
/// ~0.5 MiB (gzip) to ~1.7 MiB (brotli) until its response is done, and a client that
/// stops reading keeps it until the stall timer: 128 stalled HTTP/2 streams held ~217 MiB.
/// Past the cap a large file goes out uncompressed (its stored identity, by sendfile where
/// it can), which costs bandwidth, not memory.
pub const MAX_STREAMING_ENCODERS: usize = 32;

static STREAMING_ENCODERS: AtomicUsize = AtomicUsize::new(0);

/// One of the [`MAX_STREAMING_ENCODERS`] slots, held by the compressed body.
pub struct EncoderSlot(&'static AtomicUsize);

impl EncoderSlot {
    pub fn try_take() -> Option<EncoderSlot> {
        Self::take_from(&STREAMING_ENCODERS, MAX_STREAMING_ENCODERS)
    }

    fn take_from(counter: &'static AtomicUsize, max: usize) -> Option<EncoderSlot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| EncoderSlot(counter))
    }
}

impl Drop for EncoderSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reader of exactly `len` bytes: ending sooner is an error, not an end. A file cut short
/// while it is served (a deploy rewriting it) would otherwise end a compressed stream
/// cleanly, a whole-looking response under the old file's ETag.
struct Exact<R> {
    inner: tokio::io::Take<R>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Exact<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = read {
            if buf.filled().len() == before && self.inner.limit() > 0 && buf.remaining() > 0 {
                return std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file got shorter while it was being sent",
                )));
            }
        }
        read
    }
}

fn exact<R: AsyncRead>(reader: R, len: u64) -> Exact<R> {
    Exact {
        inner: reader.take(len),
    }
}

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
    let reader = exact(tokio::fs::File::from_std(file), len);
    Ok(stream(reader, None))
}

/// Streams `len` bytes of `file`, compressed with `encoding` as they are read; `slot` is
/// held until the body is done.
pub fn compressed_file(
    file: std::fs::File,
    len: u64,
    encoding: Encoding,
    slot: EncoderSlot,
) -> GatewayBody {
    let reader = BufReader::with_capacity(CHUNK, exact(tokio::fs::File::from_std(file), len));
    let slot = Some(slot);
    match encoding {
        Encoding::Br => {
            let params = async_compression::brotli::EncoderParams::default()
                .quality(Level::Precise(STREAM_BR_QUALITY))
                .window_size(STREAM_BR_WINDOW);
            stream(BrotliEncoder::with_params(reader, params), slot)
        }
        Encoding::Gzip => stream(
            GzipEncoder::with_quality(reader, Level::Precise(STREAM_GZIP_LEVEL)),
            slot,
        ),
        Encoding::Identity => stream(reader, slot),
    }
}

fn stream<R: AsyncRead + Send + 'static>(reader: R, slot: Option<EncoderSlot>) -> GatewayBody {
    let frames = ReaderStream::with_capacity(reader, CHUNK).map(move |chunk| {
        let _held = &slot;
        chunk
            .map(Frame::data)
            .map_err(|e| -> BoxError { Box::new(e) })
    });
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

    #[test]
    fn encoder_slots_are_capped_and_come_back() {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let held: Vec<_> = (0..3)
            .map(|_| EncoderSlot::take_from(&COUNTER, 3).unwrap())
            .collect();
        assert!(EncoderSlot::take_from(&COUNTER, 3).is_none());
        drop(held);
        assert_eq!(COUNTER.load(Ordering::Acquire), 0);
        assert!(EncoderSlot::take_from(&COUNTER, 3).is_some());
    }

    /// A file that gets shorter while it is sent ends its body with an error, compressed or
    /// not, never with a clean end.
    #[tokio::test]
    async fn a_file_cut_short_while_sent_is_an_error() {
        let data = text(3000);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let claimed = data.len() as u64 * 4;
        for encoding in [Encoding::Br, Encoding::Gzip, Encoding::Identity] {
            let mut g = f.try_clone().unwrap();
            std::io::Seek::rewind(&mut g).unwrap();
            let slot = EncoderSlot::try_take().unwrap();
            let result = compressed_file(g, claimed, encoding, slot).collect().await;
            assert!(result.is_err(), "{encoding:?} ended cleanly");
        }
        let mut g = f.try_clone().unwrap();
        std::io::Seek::rewind(&mut g).unwrap();
        assert!(file(g, 0, claimed).unwrap().collect().await.is_err());
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
            let slot = EncoderSlot::try_take().unwrap();
            let packed = collect(compressed_file(g, len, encoding, slot)).await;
            assert!(packed.len() < data.len() / 3);
            assert_eq!(decode(&packed, encoding).await, data);
        }
    }
}
