//! Write coalescing for a served HTTP/2 connection: one `writev` for the frames many streams
//! queue in one scheduler round, instead of one per stream.
//!
//! Why: hyper runs each HTTP/2 stream's body in a task of its own, and each `send_data`
//! wakes the connection task, which tokio runs next (its LIFO slot), so the connection wrote
//! and flushed one frame at a time. A write fanned out to 100 watchers over 10 connections
//! took ~84 `writev`s where etcd's gRPC (one writer per connection that drains its queue)
//! takes ~20, and a third of the leader's CPU was in `tcp_sendmsg`.
//!
//! How: writes are copied into a buffer (up to [`MAX_BUFFERED`] bytes). The first flush
//! after new bytes does not write, while fewer than [`YIELD_BELOW`] bytes wait: it wakes its
//! own task and returns `Pending`, which tokio treats as a yield, so the connection task runs
//! again after the tasks already queued, the other streams' frames among them. The next flush
//! writes the whole buffer. Each batch of bytes is held back for at most one scheduler round;
//! nothing waits on a timer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes out without waiting for the flush (and the size above which
/// a write into an empty buffer goes straight through, uncopied).
pub const MAX_BUFFERED: usize = 64 * 1024;
/// A flush yields only while fewer bytes than this wait: small frames (watch events, unary
/// answers) are worth batching, while a large answer goes out at once. h2 flushes after each
/// DATA payload it cannot copy (over 256 bytes with vectored writes), so yielding there too
/// would cost a scheduler round per 16 KiB frame of a large range.
pub const YIELD_BELOW: usize = 16 * 1024;

/// `inner` with its writes coalesced as the module docs say; reads pass straight through.
pub struct CoalescedWrites<S> {
    inner: S,
    /// Bytes accepted from the writer and not yet written to `inner`, from `buf[written..]`.
    buf: Vec<u8>,
    written: usize,
    /// A flush already yielded once for the bytes in `buf`: the next one writes them.
    yielded: bool,
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        CoalescedWrites {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes everything buffered to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        if self.buf.capacity() > 2 * MAX_BUFFERED {
            self.buf = Vec::new(); // a large write came through a partial drain: give it back
        }
        self.written = 0;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Makes room for more bytes: drains first if the buffer is full. The bytes a partial
    /// drain already wrote are dropped first, so the buffer stays within its bound.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.pending() >= MAX_BUFFERED {
            ready!(self.poll_drain(cx))?;
        }
        if self.written > 0 {
            self.buf.drain(..self.written);
            self.written = 0;
        }
        Poll::Ready(Ok(MAX_BUFFERED - self.pending()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending() == 0 && data.len() >= MAX_BUFFERED {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        let room = ready!(this.poll_room(cx))?;
        let n = room.min(data.len());
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending() == 0 && total >= MAX_BUFFERED {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let mut room = ready!(this.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let take = room.min(b.len());
            this.buf.extend_from_slice(&b[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() > 0 {
            if !this.yielded && this.pending() < YIELD_BELOW {
                // Let the tasks queued behind this one add their frames first.
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// An inner stream that records each write call, takes at most `max_write` bytes a call
    /// and answers `Pending` (waking at once) every `pending_every`-th call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        max_write: Option<usize>,
        pending_every: Option<usize>,
        calls: usize,
        flushed: usize,
        shut: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            if self
                .pending_every
                .is_some_and(|k| self.calls.is_multiple_of(k))
            {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.max_write.unwrap_or(usize::MAX).min(data.len());
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushed += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<CountWakes>, std::task::Waker) {
        let w = Arc::new(CountWakes(AtomicUsize::new(0)));
        (w.clone(), std::task::Waker::from(w))
    }

    fn write_all(c: &mut CoalescedWrites<Recorder>, cx: &mut Context<'_>, mut data: &[u8]) {
        while !data.is_empty() {
            if let Poll::Ready(n) = Pin::new(&mut *c).poll_write(cx, data) {
                data = &data[n.unwrap()..];
            }
        }
    }

    fn flush(c: &mut CoalescedWrites<Recorder>, cx: &mut Context<'_>) -> usize {
        let mut polls = 1;
        while Pin::new(&mut *c).poll_flush(cx).is_pending() {
            polls += 1;
            assert!(polls < 100_000, "flush never finished");
        }
        polls
    }

    #[test]
    fn frames_written_before_a_flush_leave_in_one_write_after_one_yield() {
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = CoalescedWrites::new(Recorder::default());
        write_all(&mut c, &mut cx, b"frame one;");
        // The first flush yields (wakes itself, nothing written); the next frames join.
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(c.get_ref().writes.is_empty());
        write_all(&mut c, &mut cx, b"frame two;");
        let bufs = [io::IoSlice::new(b"three"), io::IoSlice::new(b";")];
        assert!(matches!(
            Pin::new(&mut c).poll_write_vectored(&mut cx, &bufs),
            Poll::Ready(Ok(6))
        ));
        assert_eq!(flush(&mut c, &mut cx), 1);
        assert_eq!(
            c.get_ref().writes,
            vec![b"frame one;frame two;three;".to_vec()]
        );
        assert_eq!(c.get_ref().flushed, 1);
        // Nothing buffered: a flush goes straight through, without yielding.
        assert_eq!(flush(&mut c, &mut cx), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn short_and_pending_inner_writes_lose_and_reorder_nothing() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = CoalescedWrites::new(Recorder {
            max_write: Some(1000),
            pending_every: Some(3),
            ..Default::default()
        });
        let data: Vec<u8> = (0..3 * MAX_BUFFERED + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        for chunk in data.chunks(1000) {
            write_all(&mut c, &mut cx, chunk);
        }
        flush(&mut c, &mut cx);
        write_all(&mut c, &mut cx, b"last");
        // Shutdown writes what is buffered first (an inner Pending: it is polled again).
        let mut polls = 0;
        while Pin::new(&mut c).poll_shutdown(&mut cx).is_pending() {
            polls += 1;
            assert!(polls < 100_000, "shutdown never finished");
        }
        assert!(c.get_ref().shut);
        let out: Vec<u8> = c.get_ref().writes.concat();
        assert_eq!(out, [&data[..], b"last"].concat());
    }

    #[test]
    fn a_flush_of_a_large_batch_writes_at_once() {
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = CoalescedWrites::new(Recorder::default());
        write_all(&mut c, &mut cx, &vec![3u8; YIELD_BELOW]);
        assert_eq!(flush(&mut c, &mut cx), 1, "no yield");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(c.get_ref().writes.len(), 1);
    }

    #[test]
    fn partial_drains_keep_the_buffer_within_its_bound() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = CoalescedWrites::new(Recorder {
            max_write: Some(MAX_BUFFERED / 3),
            pending_every: Some(2),
            ..Default::default()
        });
        for _ in 0..100 {
            write_all(&mut c, &mut cx, &[5u8; 1000]);
            assert!(c.buf.len() <= MAX_BUFFERED, "{} bytes held", c.buf.len());
        }
        flush(&mut c, &mut cx);
        assert_eq!(c.get_ref().writes.concat(), vec![5u8; 100 * 1000]);
    }

    #[test]
    fn the_buffer_is_bounded_and_large_writes_pass_straight_through() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut c = CoalescedWrites::new(Recorder::default());
        let big = vec![7u8; MAX_BUFFERED + 1];
        assert!(matches!(
            Pin::new(&mut c).poll_write(&mut cx, &big),
            Poll::Ready(Ok(n)) if n == big.len()
        ));
        assert_eq!(c.get_ref().writes.len(), 1, "written uncopied, at once");
        // Small writes fill the buffer up to its bound, then drain before taking more.
        let small = vec![1u8; 1000];
        let mut accepted = 0;
        while accepted < 2 * MAX_BUFFERED {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut c).poll_write(&mut cx, &small) {
                accepted += n;
            }
            assert!(c.pending() <= MAX_BUFFERED);
        }
        assert!(c.get_ref().writes.len() >= 2);
    }
}
