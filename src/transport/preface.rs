//! Knowing when the server has spoken HTTP/2.
//!
//! An HTTP/2 server's first bytes are its preface, a SETTINGS frame
//! (RFC 9113 §3.4). gRPC reports a connection READY only once that preface
//! has arrived (grpc-go's transport waits for it before the subchannel
//! leaves CONNECTING); an `h2` client handshake does not wait for it. The
//! difference matters when a server dies: for a moment its kernel may still
//! accept connections that no process will ever serve, and calls sent there
//! fail. It matters too when the peer is not an HTTP/2 server at all (a TLS
//! server reached without TLS answers with an alert, an HTTP/1 server with
//! a status line): that is a failed connection attempt, retried on the
//! backoff schedule, not a READY connection lost at once.
//!
//! [`PrefaceWatch`] wraps the connection's IO (the TLS stream when there is
//! one) and checks the first 9 bytes the server sends: a SETTINGS frame
//! header (type 4, no ACK flag, stream 0) is the preface; anything else is
//! reported with what it looks like.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
/// The SETTINGS frame type.
const SETTINGS: u8 = 0x4;
/// SETTINGS' ACK flag: a preface never carries it.
const ACK: u8 = 0x1;

/// What the server's first bytes were, when they were not its preface.
pub(crate) type NotHttp2 = String;

/// An IO that tells, once, whether the peer's first bytes are an HTTP/2
/// server preface. If the IO is dropped before the peer sent anything, the
/// receiver sees an error; if it is dropped after a few bytes that were
/// not a preface, it gets `Err` with what they looked like.
pub(crate) struct PrefaceWatch<IO> {
    io: IO,
    spoke: Option<oneshot::Sender<Result<(), NotHttp2>>>,
    head: [u8; FRAME_HEADER],
    got: usize,
}

impl<IO> PrefaceWatch<IO> {
    /// Wraps `io`; the receiver completes when the peer's first frame
    /// header has arrived (or its first bytes show it is not HTTP/2).
    pub(crate) fn new(io: IO) -> (Self, oneshot::Receiver<Result<(), NotHttp2>>) {
        let (tx, rx) = oneshot::channel();
        (
            PrefaceWatch {
                io,
                spoke: Some(tx),
                head: [0; FRAME_HEADER],
                got: 0,
            },
            rx,
        )
    }

    /// Takes the peer's newest bytes into the header being checked.
    fn saw(&mut self, bytes: &[u8]) {
        if self.spoke.is_none() {
            return;
        }
        let take = bytes.len().min(FRAME_HEADER - self.got);
        self.head[self.got..self.got + take].copy_from_slice(&bytes[..take]);
        self.got += take;
        if self.got == FRAME_HEADER {
            let verdict = check(&self.head);
            if let Some(spoke) = self.spoke.take() {
                let _ = spoke.send(verdict);
            }
        }
    }
}

impl<IO> Drop for PrefaceWatch<IO> {
    fn drop(&mut self) {
        // A few bytes and then the end: say what they were (a TLS alert is
        // 7 bytes). Nothing at all: the receiver sees the sender dropped.
        if self.got > 0 {
            if let Some(spoke) = self.spoke.take() {
                let _ = spoke.send(Err(describe(&self.head[..self.got])));
            }
        }
    }
}

/// `Ok` when `header` is a server preface's frame header.
fn check(header: &[u8; FRAME_HEADER]) -> Result<(), NotHttp2> {
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if header[3] == SETTINGS && header[4] & ACK == 0 && stream == 0 {
        Ok(())
    } else {
        Err(describe(header))
    }
}

/// What a peer that is not an HTTP/2 server sent first, in words.
fn describe(bytes: &[u8]) -> NotHttp2 {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let first = hex.join(" ");
    if matches!(bytes, [0x15 | 0x16, 0x03, ..]) {
        format!(
            "the server answered with TLS, not HTTP/2 (first bytes {first}): \
             it expects TLS; give the channel `.tls(...)`"
        )
    } else if bytes.starts_with(b"HTTP/") {
        format!(
            "the server answered with HTTP/1 ({:?}), not HTTP/2",
            String::from_utf8_lossy(bytes)
        )
    } else {
        format!("the server's first bytes ({first}) are not an HTTP/2 SETTINGS frame")
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefaceWatch<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.spoke.is_some() && buf.filled().len() > before {
            let this = &mut *self;
            this.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefaceWatch<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An empty SETTINGS frame: a server's preface.
    const PREFACE: [u8; 9] = [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];

    #[tokio::test]
    async fn signals_the_servers_settings_frame_only() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, mut spoke) = PrefaceWatch::new(client);
        watched.write_all(b"client preface").await.unwrap();
        let mut got = [0u8; 14];
        server.read_exact(&mut got).await.unwrap();
        assert!(spoke.try_recv().is_err(), "our own writes do not count");
        // The frame header arrives in two reads.
        server.write_all(&PREFACE[..4]).await.unwrap();
        let mut buf = [0u8; 4];
        watched.read_exact(&mut buf).await.unwrap();
        assert!(spoke.try_recv().is_err(), "not a whole frame header yet");
        server.write_all(&PREFACE[4..]).await.unwrap();
        let mut buf = [0u8; 5];
        watched.read_exact(&mut buf).await.unwrap();
        assert_eq!(spoke.await.expect("the peer spoke"), Ok(()));
    }

    #[tokio::test]
    async fn a_connection_that_ends_silently_never_signals() {
        let (client, server) = tokio::io::duplex(64);
        let (mut watched, spoke) = PrefaceWatch::new(client);
        drop(server);
        let mut buf = [0u8; 8];
        assert_eq!(watched.read(&mut buf).await.unwrap(), 0, "EOF");
        drop(watched);
        assert!(spoke.await.is_err());
    }

    async fn verdict(server_says: &[u8]) -> Result<(), NotHttp2> {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, spoke) = PrefaceWatch::new(client);
        server.write_all(server_says).await.unwrap();
        drop(server);
        let mut buf = Vec::new();
        let _ = watched.read_to_end(&mut buf).await;
        drop(watched);
        spoke.await.expect("a verdict")
    }

    #[tokio::test]
    async fn a_peer_that_is_not_an_http2_server_is_named() {
        // A TLS alert (7 bytes, then the server closes).
        let tls = verdict(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46]).await;
        assert!(tls.unwrap_err().contains("answered with TLS"));
        let http1 = verdict(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        assert!(http1.unwrap_err().contains("HTTP/1"));
        // A frame, but not SETTINGS (a PING), and a SETTINGS ACK.
        let ping = verdict(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]).await;
        assert!(ping.unwrap_err().contains("not an HTTP/2 SETTINGS frame"));
        let ack = verdict(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]).await;
        assert!(ack.is_err());
        assert_eq!(verdict(&PREFACE).await, Ok(()));
    }
}
