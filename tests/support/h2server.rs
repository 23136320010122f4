//! Misbehaving HTTP/2 servers on 127.0.0.1, for the faults a real network
//! produces: a server that goes silent after the response headers, one that
//! refuses every stream, one that sends GOAWAY before processing anything,
//! one that never speaks HTTP/2 at all. Each counts the connections and
//! streams it saw. Dropping the server stops accepting (connections already
//! open stay as they are until the test ends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers each call's HEADERS (200, `application/grpc`) and then never
    /// sends anything else on that stream.
    HeadersThenSilence,
    /// Sends `messages` gRPC messages (`EchoMessage { data: "m" }`) on each
    /// stream, then goes silent (a server-streaming call stalled mid-stream).
    StallAfterMessages(usize),
    /// Answers every stream with RST_STREAM(REFUSED_STREAM).
    RefuseEveryStream,
    /// Reads `bytes` of each stream's request body (or all of it, if
    /// shorter), then answers RST_STREAM(REFUSED_STREAM).
    RefuseAfterReading(usize),
    /// On the first request HEADERS of a connection, sends
    /// GOAWAY(last_stream_id = 0, NO_ERROR) and closes the connection
    /// shortly after: no stream was processed.
    GoAwayOnFirstHeaders,
    /// Sends its SETTINGS and then GOAWAY(0) at once on every connection,
    /// then closes it.
    SettingsThenGoAway,
    /// Accepts TCP and never sends a byte (it reads and discards what the
    /// client sends, and counts the connection in [`Seen::closed`] when the
    /// client closes it).
    Silent,
}

/// Counters of what the server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub streams: AtomicUsize,
    /// Connections the client closed (counted by `Silent` only).
    pub closed: AtomicUsize,
    /// Streams the client reset with RST_STREAM(CANCEL) while the server
    /// held them open (after answering their headers).
    pub cancelled: AtomicUsize,
}

/// A running misbehaving server.
pub struct H2Server {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Server {
    /// Starts a server with `behaviour` on a free port of 127.0.0.1.
    pub async fn start(behaviour: Behaviour) -> H2Server {
        H2Server::start_on("127.0.0.1:0".parse().unwrap(), behaviour).await
    }

    /// Starts a server with `behaviour` on `addr`.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> H2Server {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let counters = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                counters.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, behaviour, counters.clone()));
            }
        });
        H2Server { addr, seen, task }
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn streams(&self) -> usize {
        self.seen.streams.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.seen.closed.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.seen.cancelled.load(Ordering::SeqCst)
    }
}

impl Drop for H2Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: TcpStream, behaviour: Behaviour, seen: Arc<Seen>) {
    match behaviour {
        Behaviour::Silent => silent(socket, seen).await,
        Behaviour::GoAwayOnFirstHeaders => raw_goaway(socket, true, seen).await,
        Behaviour::SettingsThenGoAway => raw_goaway(socket, false, seen).await,
        _ => with_h2(socket, behaviour, seen).await,
    }
}

/// Never writes; reads until the client closes the connection.
async fn silent(mut socket: TcpStream, seen: Arc<Seen>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    seen.closed.fetch_add(1, Ordering::SeqCst);
}

/// Serves with `h2`'s server side.
async fn with_h2(socket: TcpStream, behaviour: Behaviour, seen: Arc<Seen>) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        seen.streams.fetch_add(1, Ordering::SeqCst);
        match behaviour {
            Behaviour::RefuseEveryStream => respond.send_reset(h2::Reason::REFUSED_STREAM),
            Behaviour::RefuseAfterReading(bytes) => {
                tokio::spawn(refuse_after_reading(request.into_body(), respond, bytes));
            }
            Behaviour::HeadersThenSilence => {
                if let Ok(stream) = respond.send_response(grpc_response(), false) {
                    tokio::spawn(hold(stream, seen.clone()));
                }
            }
            Behaviour::StallAfterMessages(n) => {
                if let Ok(mut stream) = respond.send_response(grpc_response(), false) {
                    for _ in 0..n {
                        let _ = stream.send_data(echo_message(b"m"), false);
                    }
                    tokio::spawn(hold(stream, seen.clone()));
                }
            }
            _ => unreachable!("raw behaviours are served elsewhere"),
        }
    }
}

/// Keeps a stream open without sending on it; counts a CANCEL from the
/// client.
async fn hold(mut stream: h2::SendStream<Bytes>, seen: Arc<Seen>) {
    let reset = std::future::poll_fn(|cx| stream.poll_reset(cx)).await;
    if let Ok(h2::Reason::CANCEL) = reset {
        seen.cancelled.fetch_add(1, Ordering::SeqCst);
    }
}

async fn refuse_after_reading(
    mut body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    bytes: usize,
) {
    let mut read = 0;
    while read < bytes {
        match body.data().await {
            Some(Ok(data)) => {
                read += data.len();
                let _ = body.flow_control().release_capacity(data.len());
            }
            _ => break,
        }
    }
    respond.send_reset(h2::Reason::REFUSED_STREAM);
}

fn grpc_response() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

/// A gRPC message frame holding `EchoMessage { data }`.
pub fn echo_message(data: &[u8]) -> Bytes {
    let mut message = vec![0x0a, data.len() as u8];
    message.extend_from_slice(data);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

/// A hand-written HTTP/2 server that sends GOAWAY(last_stream_id = 0),
/// something `h2`'s server never does once it has seen a stream.
async fn raw_goaway(mut socket: TcpStream, wait_for_headers: bool, seen: Arc<Seen>) {
    let mut preface = [0u8; 24];
    if socket.read_exact(&mut preface).await.is_err() {
        return;
    }
    // Our SETTINGS (empty), as every HTTP/2 server starts.
    if socket.write_all(&frame_header(0, 0x4, 0, 0)).await.is_err() {
        return;
    }
    if wait_for_headers {
        loop {
            let mut header = [0u8; 9];
            if socket.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let kind = header[3];
            let mut payload = vec![0u8; len];
            if socket.read_exact(&mut payload).await.is_err() {
                return;
            }
            if kind == 0x4 && header[4] & 0x1 == 0 {
                // Acknowledge the client's SETTINGS.
                let _ = socket.write_all(&frame_header(0, 0x4, 0x1, 0)).await;
            }
            if kind == 0x1 {
                seen.streams.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    let mut goaway = frame_header(8, 0x7, 0, 0).to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes()); // last_stream_id
    goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
    let _ = socket.write_all(&goaway).await;
    let _ = socket.flush().await;
    // Give the client a moment to read the GOAWAY, then close.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn frame_header(len: u32, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let l = len.to_be_bytes();
    let s = stream.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
}
