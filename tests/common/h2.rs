//! Raw HTTP/2 frames over a plain socket (prior knowledge), for tests that need what no
//! client library sends: split or never-ended header blocks, resets, floods.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 prior-knowledge preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const H2_DATA: u8 = 0x0;
pub const H2_HEADERS: u8 = 0x1;
pub const H2_RST_STREAM: u8 = 0x3;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_PING: u8 = 0x6;
pub const H2_GOAWAY: u8 = 0x7;
pub const H2_CONTINUATION: u8 = 0x9;
pub const H2_END_STREAM: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;
/// HPACK for `GET http://127.0.0.1/`, cut in two: `:method GET`, `:scheme http` | `:path /`,
/// `:authority 127.0.0.1`.
pub const GET_FIRST_HALF: &[u8] = &[0x82, 0x86];
pub const GET_SECOND_HALF: &[u8] = &[
    0x84, 0x01, 0x09, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1',
];

/// One HTTP/2 frame as a client writes it.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A whole `GET http://127.0.0.1PATH` request on `stream`: one HEADERS frame ending the
/// stream (`:path` a literal with the static table's name 4).
pub fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = GET_FIRST_HALF.to_vec();
    block.extend_from_slice(&[0x04, u8::try_from(path.len()).unwrap()]);
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&GET_SECOND_HALF[1..]);
    h2_frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, stream, &block)
}

/// One HTTP/2 frame as a server wrote it: type, flags, stream, payload.
pub type H2Frame<'a> = (u8, u8, u32, &'a [u8]);

/// Each whole frame at the start of `bytes`, and how many bytes they take.
pub fn h2_parse(bytes: &[u8]) -> (Vec<H2Frame<'_>>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 9) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        frames.push((head[3], head[4], stream, payload));
        at += 9 + len;
    }
    (frames, at)
}

/// The (type, stream) of each whole frame in `bytes`, a server's output from its start.
pub fn h2_frames(bytes: &[u8]) -> Vec<(u8, u32)> {
    let (frames, _) = h2_parse(bytes);
    frames
        .iter()
        .map(|&(kind, _, stream, _)| (kind, stream))
        .collect()
}

/// The error code of the first GOAWAY in `bytes` (a server's output from its start).
pub fn h2_goaway_code(bytes: &[u8]) -> Option<u32> {
    let (frames, _) = h2_parse(bytes);
    frames
        .iter()
        .find(|&&(kind, ..)| kind == H2_GOAWAY)
        .and_then(|(_, _, _, payload)| payload.get(4..8))
        .map(|code| u32::from_be_bytes(code.try_into().unwrap()))
}

/// Reads into `got` (what the server sent so far) until a frame of `kind` arrives on `stream`
/// (true) or the connection closes or 3 s pass (false).
pub async fn h2_frame_arrives(
    conn: &mut TcpStream,
    got: &mut Vec<u8>,
    kind: u8,
    stream: u32,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !h2_frames(got).contains(&(kind, stream)) {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

/// Reads everything the server sends until it closes (true) or `within` has passed
/// (false), answering each PING the way a live client does.
pub async fn h2_read_answering_pings(conn: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut parsed = 0;
    loop {
        let mut buf = [0u8; 16384];
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        let (frames, used) = h2_parse(&got[parsed..]);
        let acks: Vec<Vec<u8>> = frames
            .iter()
            .filter(|&&(kind, flags, ..)| kind == H2_PING && flags == 0)
            .map(|&(_, _, _, payload)| h2_frame(H2_PING, 0x1, 0, payload))
            .collect();
        parsed += used;
        for ack in acks {
            let _ = conn.write_all(&ack).await;
        }
    }
}
