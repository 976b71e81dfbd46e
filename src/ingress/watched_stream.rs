//! A client connection with a watch on its bytes: a Pingora `Stream` whose reads (and, where a
//! watch wants them, writes) pass through a [`StreamWatch`] before Pingora's codecs see them.
//! Everything else (TLS, socket and timing digests, peek, shutdown) is the inner stream's.
//!
//! This is how the front door keeps rules on the bytes after a request head, which Pingora's
//! HTTP/1 and HTTP/2 codecs would otherwise read on their own: strict chunked framing, the pace
//! of request bodies and of a client taking its response in ([`super::body_guard`]), HTTP/2
//! frame budgets ([`super::h2_frames`]).

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a watch does with the bytes of one connection. Each method gets the inner stream, so a
/// watch may read, write or refuse on its own; the defaults pass everything through.
pub trait StreamWatch: Debug + Send + Sync + Unpin + 'static {
    /// Read from `inner` into `buf`, looking at (or refusing) what arrives.
    fn poll_read(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;

    /// Write `data` to `inner`.
    fn poll_write(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(inner).poll_write(cx, data)
    }

    /// Write several buffers to `inner` at once (only called when [`Self::vectored_writes`]).
    fn poll_write_vectored(
        &mut self,
        inner: &mut Stream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(inner).poll_write_vectored(cx, bufs)
    }

    /// Whether writers may hand over several buffers at once; when not, each write goes through
    /// [`Self::poll_write`] with one buffer.
    fn vectored_writes(&self) -> bool {
        true
    }
}

/// A client connection whose bytes pass through `W`.
#[derive(Debug)]
pub struct Watched<W> {
    inner: Stream,
    /// The watch: the ingress sets it up per request between Pingora sessions.
    pub watch: W,
}

impl<W: StreamWatch> Watched<W> {
    /// Watch `inner` with `watch`.
    pub fn new(inner: Stream, watch: W) -> Self {
        Watched { inner, watch }
    }

    /// Back from a Pingora session: the stream it was given, if it is still this type.
    pub fn recover(stream: Stream) -> Option<Self> {
        stream.into_any().downcast::<Self>().ok().map(|b| *b)
    }
}

impl<W: StreamWatch> AsyncRead for Watched<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.watch.poll_read(&mut this.inner, cx, buf)
    }
}

impl<W: StreamWatch> AsyncWrite for Watched<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.watch.poll_write(&mut this.inner, cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.vectored_writes() {
            return this.watch.poll_write_vectored(&mut this.inner, cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        this.watch.poll_write(&mut this.inner, cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.watch.vectored_writes() && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<W: StreamWatch> Shutdown for Watched<W> {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl<W> UniqueID for Watched<W> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<W> Ssl for Watched<W> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<W> GetTimingDigest for Watched<W> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<W> GetProxyDigest for Watched<W> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<W> GetSocketDigest for Watched<W> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl<W: StreamWatch> Peek for Watched<W> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
