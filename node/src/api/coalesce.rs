//! Fewer, larger socket writes on a busy connection: while other streams of the
//! connection are still being answered, a write waits one turn of the scheduler before it
//! reaches the socket.
//!
//! hyper's HTTP/2 connection writes and flushes whatever its streams have queued each time
//! one of them wakes it. Under load each response went out alone: one `writev` per
//! response, the HEADERS, DATA and trailers of a single small reply, where etcd's grpc-go
//! writer sends about eight replies per write. A socket write on loopback costs more CPU
//! than the reply it carries (the kernel runs the receiver's side too). Yielding once
//! before the first write of a flush puts the connection behind the tasks already queued,
//! the other streams' handlers among them, so their replies go out in the same write. A
//! connection with no other stream open writes at once: a lone client would only pay
//! the yield (an extra poll, and a wake-up of an idle worker).
//!
//! h2 itself writes a reply of 256 B or more alone when told the socket takes vectored
//! writes (it keeps such a DATA payload out of its buffer and must write it before
//! buffering another frame), so the connection is reported as not vectored: payloads
//! under 1 KiB are then copied into one buffer with the others (see `is_write_vectored`).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 streams of one connection still being answered. hyper runs each stream as a
/// task it spawns through this executor; a stream's task ends once its reply is queued.
/// Counting from the spawn matters: under load a connection reads a burst of requests
/// and spawns their tasks before any runs, and they are the replies worth waiting for.
/// A watch or keep-alive stream's task lasts as long as the stream, so a connection that
/// carries one yields once per flush.
#[derive(Clone, Default)]
pub struct Streams(Arc<AtomicUsize>);

impl Streams {
    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

impl<F> hyper::rt::Executor<F> for Streams
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.fetch_add(1, Ordering::Relaxed);
        let answering = Answering(self.0.clone());
        tokio::spawn(async move {
            stream.await;
            drop(answering);
        });
    }
}

/// A stream counted in [`Streams`] until its task ends or is dropped.
struct Answering(Arc<AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's byte stream whose writes yield once per flush while streams of the
/// connection are being answered.
pub struct Coalesce<I> {
    inner: I,
    streams: Streams,
    /// Whether this flush's writes have yielded already.
    yielded: bool,
}

impl<I> Coalesce<I> {
    pub fn new(inner: I, streams: Streams) -> Coalesce<I> {
        Coalesce {
            inner,
            streams,
            yielded: false,
        }
    }

    /// `Pending` (having woken the task, so it is polled again after the tasks queued
    /// before it) the first time a flush writes while streams are being answered; `Ready`
    /// otherwise.
    fn take_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded || !self.streams.any() {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesce<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesce<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.take_turn(cx));
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.take_turn(cx));
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    /// Not vectored, whatever the socket is: h2 then copies a DATA payload under 1 KiB
    /// into its write buffer beside other frames. Told the writes are vectored, it keeps
    /// every payload of 256 B or more apart and writes it out before it buffers the next
    /// frame: one `writev` per reply for a one-key range of a 256 B value, whatever else
    /// is waiting. A payload over 1 KiB is still kept apart (no copy of large replies).
    fn is_write_vectored(&self) -> bool {
        false
    }

    /// Ends a flush: the next write yields again.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use tokio::io::AsyncReadExt as _;

    fn write(io: &mut Coalesce<tokio::io::DuplexStream>) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(io).poll_write(&mut cx, b"reply")
    }

    fn flush(io: &mut Coalesce<tokio::io::DuplexStream>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(io).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn writes_wait_one_turn_only_while_other_streams_are_answered() {
        let (client, server) = tokio::io::duplex(1024);
        let streams = Streams::default();
        let mut io = Coalesce::new(server, streams.clone());
        assert!(
            matches!(write(&mut io), Poll::Ready(Ok(5))),
            "alone: at once"
        );

        let (open, close) = tokio::sync::oneshot::channel::<()>();
        streams.execute(async move { drop(close.await) });
        assert!(
            write(&mut io).is_pending(),
            "first write of the flush yields"
        );
        assert!(matches!(write(&mut io), Poll::Ready(Ok(5))), "then it goes");
        assert!(
            matches!(write(&mut io), Poll::Ready(Ok(5))),
            "once per flush"
        );
        flush(&mut io);
        assert!(write(&mut io).is_pending(), "the next flush yields again");

        drop(open);
        while streams.any() {
            tokio::task::yield_now().await;
        }
        flush(&mut io);
        assert!(matches!(write(&mut io), Poll::Ready(Ok(5))), "stream ended");
        drop(io);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"reply".repeat(4), "every write arrived once");
    }
}
