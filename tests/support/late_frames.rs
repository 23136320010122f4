//! A hand-written HTTP/2 server that answers `proto.Simple/Route` calls and,
//! when a call asks, sends DATA frames on streams it already ended: frames
//! an `h2` client answers with RST_STREAM(STREAM_CLOSED) of its own and
//! counts toward its per-connection limit of such resets.
//!
//! What a call's request data asks for:
//! - `hold`: no answer until [`LateFrameServer::release`];
//! - `late:N`: first N empty DATA frames, each on another stream this
//!   connection already ended (as many as there are), then the answer;
//! - anything else: the answer at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// Counters of what the server did.
#[derive(Debug, Default)]
pub struct LateSeen {
    pub connections: AtomicUsize,
    pub held: AtomicUsize,
    pub late_frames: AtomicUsize,
}

/// A running server; dropping it stops accepting.
pub struct LateFrameServer {
    pub addr: SocketAddr,
    pub seen: Arc<LateSeen>,
    release: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl LateFrameServer {
    pub async fn start() -> LateFrameServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(LateSeen::default());
        let (release, released) = watch::channel(0);
        let counters = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                counters.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, counters.clone(), released.clone()));
            }
        });
        LateFrameServer {
            addr,
            seen,
            release,
            task,
        }
    }

    /// Answers every held call.
    pub fn release(&self) {
        self.release.send_modify(|generation| *generation += 1);
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn held(&self) -> usize {
        self.seen.held.load(Ordering::SeqCst)
    }

    pub fn late_frames(&self) -> usize {
        self.seen.late_frames.load(Ordering::SeqCst)
    }
}

impl Drop for LateFrameServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// One connection: a reader task parses frames, this task answers.
async fn serve(socket: TcpStream, seen: Arc<LateSeen>, mut release: watch::Receiver<u64>) {
    let (read, mut write) = socket.into_split();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(read, frames_tx));
    if write
        .write_all(&frame_bytes(SETTINGS, 0, 0, &[]))
        .await
        .is_err()
    {
        return;
    }
    let mut bodies: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    let mut ended: Vec<u32> = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            changed = release.changed() => {
                if changed.is_err() {
                    break;
                }
                for stream in std::mem::take(&mut held) {
                    seen.held.fetch_sub(1, Ordering::SeqCst);
                    if answer(&mut write, stream).await.is_err() {
                        return;
                    }
                    ended.push(stream);
                }
                continue;
            }
        };
        let reply = match frame.kind {
            SETTINGS if frame.flags & ACK == 0 => frame_bytes(SETTINGS, ACK, 0, &[]),
            PING if frame.flags & ACK == 0 => frame_bytes(PING, ACK, 0, &frame.payload),
            HEADERS => {
                bodies.push((frame.stream, Vec::new()));
                Vec::new()
            }
            RST_STREAM => {
                if let Some(i) = held.iter().position(|s| *s == frame.stream) {
                    held.remove(i);
                    seen.held.fetch_sub(1, Ordering::SeqCst);
                }
                Vec::new()
            }
            DATA => {
                let mut out = Vec::new();
                if !frame.payload.is_empty() {
                    // Give the connection's flow-control credit back.
                    let credit = u32::try_from(frame.payload.len()).unwrap_or(0);
                    out = frame_bytes(WINDOW_UPDATE, 0, 0, &credit.to_be_bytes());
                }
                if let Some(body) = bodies.iter_mut().find(|(s, _)| *s == frame.stream) {
                    body.1.extend_from_slice(&frame.payload);
                }
                if frame.flags & END_STREAM != 0 {
                    if let Some(i) = bodies.iter().position(|(s, _)| *s == frame.stream) {
                        let (stream, body) = bodies.remove(i);
                        let request = String::from_utf8_lossy(&body).into_owned();
                        if request.contains("hold") {
                            held.push(stream);
                            seen.held.fetch_add(1, Ordering::SeqCst);
                        } else {
                            if let Some(n) = late_count(&request) {
                                for old in ended.iter().rev().take(n) {
                                    out.extend(frame_bytes(DATA, 0, *old, &[]));
                                    seen.late_frames.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            out.extend(response(stream));
                            ended.push(stream);
                        }
                    }
                }
                out
            }
            _ => Vec::new(),
        };
        if !reply.is_empty() && write.write_all(&reply).await.is_err() {
            break;
        }
    }
    reader.abort();
}

/// `late:N` anywhere in the request's bytes.
fn late_count(request: &str) -> Option<usize> {
    let rest = &request[request.find("late:")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn read_frames(mut read: OwnedReadHalf, frames: mpsc::UnboundedSender<Frame>) {
    let mut preface = [0u8; 24];
    if read.read_exact(&mut preface).await.is_err() {
        return;
    }
    loop {
        let mut header = [0u8; 9];
        if read.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let frame = Frame {
            kind: header[3],
            flags: header[4],
            stream,
            payload,
        };
        if frames.send(frame).is_err() {
            return;
        }
    }
}

async fn answer(write: &mut OwnedWriteHalf, stream: u32) -> std::io::Result<()> {
    write.write_all(&response(stream)).await
}

/// HEADERS (200, application/grpc), one `SimpleResponse { code: 200,
/// value: "ok" }` message and the trailers (`grpc-status: 0`), in HPACK
/// that uses no dynamic table.
fn response(stream: u32) -> Vec<u8> {
    let mut headers = vec![0x88]; // :status 200, static table index 8
    headers.extend_from_slice(&[0x0f, 0x10, 0x10]); // content-type (31), 16 bytes
    headers.extend_from_slice(b"application/grpc");
    let message = [0x08, 0xc8, 0x01, 0x12, 0x02, b'o', b'k'];
    let mut data = vec![0u8];
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(&message);
    let mut trailers = vec![0x00, 0x0b];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[0x01, b'0']);
    let mut out = frame_bytes(HEADERS, END_HEADERS, stream, &headers);
    out.extend(frame_bytes(DATA, 0, stream, &data));
    out.extend(frame_bytes(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &trailers,
    ));
    out
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}
