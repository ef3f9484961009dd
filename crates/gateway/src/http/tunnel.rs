//! Byte tunnel for upgraded connections (WebSocket) with an idle timeout.
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::base::clock::now_nanos;

/// Copy buffer per direction of a tunnel.
const TUNNEL_BUF: usize = 2048;

/// An I/O object that stamps `last` whenever bytes move through it.
struct Activity<'a, T> {
    inner: &'a mut T,
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.store(now_nanos(), Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                this.last.store(now_nanos(), Relaxed);
            }
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Copy both ways until both sides have closed (an EOF on one side is passed
/// on as a shutdown of the other), an error, or `idle` without a byte.
pub(crate) async fn copy_bidirectional_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(now_nanos());
    let mut a = Activity {
        inner: a,
        last: &last,
    };
    let mut b = Activity {
        inner: b,
        last: &last,
    };
    let idle_ns = idle.as_nanos() as u64;
    let watch = async {
        loop {
            let deadline = last.load(Relaxed).saturating_add(idle_ns);
            let now = now_nanos();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_nanos(deadline - now)).await;
        }
    };
    tokio::select! {
        // 2 KiB per direction rather than tokio's 8 KiB: chat traffic is
        // small frames, and an idle tunnel's buffers are most of its memory
        // (17 KiB per tunnel with 8 KiB buffers, bench/gateway/run.sh).
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, TUNNEL_BUF, TUNNEL_BUF) => r,
        _ = watch => Err(io::Error::new(io::ErrorKind::TimedOut, format!("tunnel idle for {idle:?}"))),
    }
}
