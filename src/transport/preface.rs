//! Knowing when the server has spoken.
//!
//! An HTTP/2 server's first bytes are its preface, a SETTINGS frame. gRPC
//! reports a connection READY only once that preface has arrived (grpc-go's
//! transport waits for it before the subchannel leaves CONNECTING); an `h2`
//! client handshake does not wait for it. The difference matters when a
//! server dies: for a moment its kernel may still accept connections that
//! no process will ever serve, and calls sent there fail. [`PrefaceWatch`]
//! wraps the connection's socket and signals the first byte the server
//! sends; until then the subchannel stays CONNECTING.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A socket that tells, once, when the peer first sends data. If the socket
/// is dropped first (the connection ended), the receiver sees an error.
pub(crate) struct PrefaceWatch<IO> {
    io: IO,
    spoke: Option<oneshot::Sender<()>>,
}

impl<IO> PrefaceWatch<IO> {
    /// Wraps `io`; the receiver completes when the peer first sends data.
    pub(crate) fn new(io: IO) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            PrefaceWatch {
                io,
                spoke: Some(tx),
            },
            rx,
        )
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
        if buf.filled().len() > before {
            if let Some(spoke) = self.spoke.take() {
                let _ = spoke.send(());
            }
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

    #[tokio::test]
    async fn signals_the_first_byte_from_the_peer_only() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut watched, mut spoke) = PrefaceWatch::new(client);
        watched.write_all(b"client preface").await.unwrap();
        let mut got = [0u8; 14];
        server.read_exact(&mut got).await.unwrap();
        assert!(spoke.try_recv().is_err(), "our own writes do not count");
        server.write_all(b"settings").await.unwrap();
        let mut buf = [0u8; 8];
        watched.read_exact(&mut buf).await.unwrap();
        spoke.await.expect("the peer spoke");
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
}
