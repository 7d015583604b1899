//! One client connection: its buffers, the read/parse/execute/write loop,
//! the limits, EOF and the idle timeout.
//!
//! The loop reads once, answers every complete request in the buffer into
//! one output buffer, and writes it once when no complete request is left,
//! so a pipeline of requests costs one `read` and one `write`. Bytes a
//! rejected request asked to discard (an oversized data block) are dropped
//! as they arrive, never buffered whole.
//!
//! Over a `Durability::Always` store, the replies of a batch are written
//! only once the journal entries behind them are durable: the store's
//! calls return at once ([`kvstore_core::Store::defer_acks`]), and the
//! batch waits once. On plain TCP it does not even wait: the store's
//! syncer thread writes the replies right after its flush, and this
//! thread goes back to reading, so a request costs one sleep and wake-up
//! of its thread (for the next request), not two.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::{DeferredAcks, Unsynced};
use parking_lot::{Condvar, Mutex};

/// Initial size of a connection's read buffer; it grows for large values
/// and shrinks back when idle.
const READ_BUF_BYTES: usize = 8 * 1024;
/// The read buffer is shrunk back when it grew past this and is empty.
const READ_BUF_KEEP_BYTES: usize = 64 * 1024;
/// Replies larger than this are written before the request is complete
/// (a multi-get of many large values is streamed, not buffered whole).
const OUT_FLUSH_BYTES: usize = 256 * 1024;
/// How long a closing connection drains what its client still sends, so
/// the last reply is not lost to a reset.
const LINGER: Duration = Duration::from_millis(200);
/// The most bytes drained when closing.
const LINGER_BYTES: usize = 1 << 20;
/// Replies up to this size are handed to the store's syncer to write
/// (larger ones are written by the connection's thread after its wait).
const HAND_OFF_MAX_BYTES: usize = 64 * 1024;

/// The byte stream of a connection: plain TCP, or TLS over TCP. The
/// connection loop reads and writes through it and reaches the socket
/// under it for timeouts and the final close.
pub(crate) trait Stream: Read + Write {
    /// The TCP socket under the stream.
    fn socket(&self) -> &TcpStream;
    /// Says goodbye in the stream's own terms before the socket closes
    /// (TLS: a close_notify alert); plain TCP has nothing to say.
    fn close_notify(&mut self) {}
    /// The socket, for another thread to write replies to directly: plain
    /// TCP shared with [`SharedTcp`] only (TLS records are written by the
    /// connection's own thread).
    fn shared(&self) -> Option<&Arc<TcpStream>> {
        None
    }
}

impl Stream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

/// A plain TCP connection whose replies the store's syncer thread may
/// write (see [`Output::flush_batch`]).
pub(crate) struct SharedTcp(pub(crate) Arc<TcpStream>);

impl Read for SharedTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for SharedTcp {
    fn socket(&self) -> &TcpStream {
        &self.0
    }

    fn shared(&self) -> Option<&Arc<TcpStream>> {
        Some(&self.0)
    }
}

impl Stream for crate::tls::TlsStream {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn close_notify(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// The reply buffer of a connection, written to its stream.
pub(crate) struct Output<'s> {
    buf: Vec<u8>,
    stream: &'s mut dyn Stream,
    io: IoCounts,
    /// Over an `Always` store: the journal entries the replies buffered
    /// so far acknowledge.
    acks: Option<DeferredAcks>,
    /// Replies handed to the store's syncer and maybe not yet written:
    /// nothing else is written before they are.
    handed_off: Option<Arc<HandOff>>,
}

/// Replies that the store's syncer writes once the changes they
/// acknowledge are durable, and how that went.
#[derive(Default)]
struct HandOff {
    outcome: Mutex<Option<io::Result<()>>>,
    done: Condvar,
}

impl HandOff {
    fn finish(&self, outcome: io::Result<()>) {
        *self.outcome.lock() = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> io::Result<()> {
        let mut outcome = self.outcome.lock();
        loop {
            if let Some(outcome) = outcome.take() {
                return outcome;
            }
            self.done.wait(&mut outcome);
        }
    }
}

/// Replies not sent because the changes they acknowledge could not be
/// made durable (the store turned read-only): the connection ends, and
/// its client learns nothing of them, as after a timeout.
fn unacknowledged(e: kvstore_core::Error) -> io::Error {
    io::Error::other(format!("replies withheld, the journal flush failed: {e}"))
}

/// Writes `bytes` to `sock` without blocking (on the syncer's thread):
/// the bytes written, fewer when the socket's buffer is full.
fn send_now(sock: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: `rest` is valid for `rest.len()` bytes, and the socket
        // is open: `sock` holds it.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => break,
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// The syncer's part of a hand-off: writes the replies once durable. A
/// client whose socket buffer is full gets the rest from a thread of its
/// own, so that the syncer never waits for one client.
fn send_when_durable(
    durable: kvstore_core::Result<()>,
    sock: Arc<TcpStream>,
    bytes: Vec<u8>,
    hand_off: Arc<HandOff>,
) {
    let sent = durable
        .map_err(unacknowledged)
        .and_then(|()| send_now(&sock, &bytes));
    match sent {
        Ok(n) if n < bytes.len() => {
            let finisher = hand_off.clone();
            let spawned = std::thread::Builder::new()
                .name("kvstore-reply".into())
                .spawn(move || finisher.finish((&*sock).write_all(&bytes[n..])));
            if let Err(e) = spawned {
                hand_off.finish(Err(e));
            }
        }
        sent => hand_off.finish(sent.map(drop)),
    }
}

/// Socket calls and bytes of a connection since the last batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IoCounts {
    /// `read` calls that returned data.
    pub reads: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// `write_all` calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

impl Output<'_> {
    /// The reply bytes buffered so far.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes the buffer if it grew past [`OUT_FLUSH_BYTES`].
    pub(crate) fn flush_if_large(&mut self) -> io::Result<()> {
        if self.buf.len() >= OUT_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes everything buffered, once the changes it acknowledges are
    /// durable (waiting for that here).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.finish_hand_off()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(unsynced) = self.unsynced() {
            unsynced.wait().map_err(unacknowledged)?;
        }
        self.write_buffered()
    }

    /// The end of a batch: like [`Output::flush`], but replies that wait
    /// for a journal flush are handed to the store's syncer thread to
    /// write right after it (plain TCP, a small batch), and this thread
    /// goes on at once. Anything written later waits for them.
    fn flush_batch(&mut self) -> io::Result<()> {
        self.finish_hand_off()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(unsynced) = self.unsynced() else {
            return self.write_buffered();
        };
        match self.stream.shared() {
            Some(sock) if self.buf.len() <= HAND_OFF_MAX_BYTES => {
                let sock = sock.clone();
                let bytes = std::mem::take(&mut self.buf);
                self.io.writes += 1;
                self.io.bytes_written += bytes.len() as u64;
                let hand_off = Arc::new(HandOff::default());
                self.handed_off = Some(hand_off.clone());
                unsynced.then(move |durable| send_when_durable(durable, sock, bytes, hand_off));
                Ok(())
            }
            _ => {
                unsynced.wait().map_err(unacknowledged)?;
                self.write_buffered()
            }
        }
    }

    /// What the buffered replies wait for, if anything.
    fn unsynced(&self) -> Option<Unsynced> {
        self.acks.as_ref().and_then(DeferredAcks::take)
    }

    /// Waits until replies handed off are written.
    fn finish_hand_off(&mut self) -> io::Result<()> {
        match self.handed_off.take() {
            Some(hand_off) => hand_off.wait(),
            None => Ok(()),
        }
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.buf)?;
        self.stream.flush()?;
        self.io.writes += 1;
        self.io.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Drop for Output<'_> {
    /// A connection ends only once its last replies are written (or their
    /// writing failed): the socket must not close under them.
    fn drop(&mut self) {
        let _ = self.finish_hand_off();
    }
}

/// What a dialect did with the buffered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A request was answered; it used this many bytes.
    Consumed(usize),
    /// No complete request is buffered.
    Incomplete,
    /// A request was rejected; discard this many bytes (perhaps more than
    /// are buffered) and go on.
    Discard(u64),
    /// Send what is buffered and close (the client asked, or the input
    /// cannot be resynchronized).
    Close,
}

/// A dialect: parses and answers one request at a time.
pub(crate) trait Handler {
    /// Parses the first request in `buf` and appends its reply to `out`.
    fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step>;
    /// Called once per batch, after the replies were written, with the
    /// socket calls and bytes since the last call.
    fn batch_done(&mut self, _io: &IoCounts) {}
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed the connection between requests.
    Eof,
    /// The client closed the connection inside a request.
    EofMidRequest,
    /// The connection was idle longer than the idle timeout.
    Idle,
    /// The dialect closed it (quit, line too long, HTTP).
    Closed,
}

/// Serves one connection until it ends. Socket errors are returned (the
/// caller logs them); nothing half-received is ever executed. `acks`: the
/// deferral of the store's acknowledgements on this thread, whose replies
/// are then written once durable (see the module's doc).
pub(crate) fn serve(
    stream: &mut dyn Stream,
    handler: &mut dyn Handler,
    idle_timeout: Option<Duration>,
    acks: Option<DeferredAcks>,
) -> io::Result<End> {
    stream.socket().set_read_timeout(idle_timeout)?;
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut skip: u64 = 0;
    let mut out = Output {
        buf: Vec::new(),
        stream,
        io: IoCounts::default(),
        acks,
        handed_off: None,
    };
    loop {
        // Answer everything complete in the buffer.
        loop {
            if skip > 0 {
                let n = skip.min((end - start) as u64) as usize;
                start += n;
                skip -= n as u64;
                if skip > 0 {
                    break;
                }
            }
            if start == end {
                break;
            }
            match handler.step(&buf[start..end], &mut out)? {
                Step::Consumed(n) => start += n,
                Step::Discard(n) => skip = n,
                Step::Incomplete => break,
                Step::Close => {
                    out.flush()?;
                    handler.batch_done(&out.io);
                    out.stream.close_notify();
                    linger_close(out.stream.socket());
                    return Ok(End::Closed);
                }
            }
        }
        out.flush_batch()?;
        handler.batch_done(&std::mem::take(&mut out.io));

        // Make room for the next read.
        if start == end {
            start = 0;
            end = 0;
            if buf.len() > READ_BUF_KEEP_BYTES {
                buf = vec![0u8; READ_BUF_BYTES];
            }
        } else if start > 0 && buf.len() - end < READ_BUF_BYTES {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if buf.len() - end < READ_BUF_BYTES / 2 {
            // A request nearly as large as the buffer: grow rather than read
            // in slivers (bounded by the parser's limits on lines and
            // values, since only an incomplete request stays buffered).
            let new_len = buf.len() * 2;
            buf.resize(new_len, 0);
        }

        let n = match out.stream.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(End::Idle)
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(if start == end && skip == 0 {
                End::Eof
            } else {
                End::EofMidRequest
            });
        }
        end += n;
        out.io.reads += 1;
        out.io.bytes_read += n as u64;
    }
}

/// Closes after a final reply: stop sending, drain what the client still
/// sends for a moment (so the reply is not destroyed by a reset), close.
pub(crate) fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match (&*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A dialect answering `x\n` with `y\n`, closing on `q\n`, and
    /// discarding 10 bytes after `s\n`.
    struct Echo {
        batches: Vec<IoCounts>,
    }

    impl Handler for Echo {
        fn step(&mut self, buf: &[u8], out: &mut Output<'_>) -> io::Result<Step> {
            let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
                return Ok(Step::Incomplete);
            };
            match &buf[..nl] {
                b"q" => Ok(Step::Close),
                b"s" => Ok(Step::Discard(nl as u64 + 1 + 10)),
                _ => {
                    out.buf().extend_from_slice(b"y\n");
                    Ok(Step::Consumed(nl + 1))
                }
            }
        }
        fn batch_done(&mut self, io: &IoCounts) {
            if *io != IoCounts::default() {
                self.batches.push(*io);
            }
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn pipelined_requests_get_one_write_and_skips_cross_reads() {
        let (mut client, mut server) = pair();
        let t = std::thread::spawn(move || {
            let mut echo = Echo {
                batches: Vec::new(),
            };
            let end = serve(&mut server, &mut echo, None, None).unwrap();
            (end, echo.batches)
        });
        client.write_all(b"x\nx\nx\n").unwrap();
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"y\ny\ny\n");
        client.write_all(b"s\n01234").unwrap();
        client.write_all(b"56789x\n").unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"y\n");
        client.write_all(b"q\n").unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let (end, batches) = t.join().unwrap();
        assert_eq!(end, End::Closed);
        // Three pipelined requests sent at once were answered with one
        // write.
        assert_eq!(
            batches[0],
            IoCounts {
                reads: 1,
                bytes_read: 6,
                writes: 1,
                bytes_written: 6
            }
        );
    }

    #[test]
    fn eof_inside_a_request_is_reported() {
        let (mut client, mut server) = pair();
        let t = std::thread::spawn(move || {
            serve(
                &mut server,
                &mut Echo {
                    batches: Vec::new(),
                },
                None,
                None,
            )
            .unwrap()
        });
        client.write_all(b"partial").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(t.join().unwrap(), End::EofMidRequest);
    }

    #[test]
    fn idle_connections_end() {
        let (_client, mut server) = pair();
        let end = serve(
            &mut server,
            &mut Echo {
                batches: Vec::new(),
            },
            Some(Duration::from_millis(50)),
            None,
        )
        .unwrap();
        assert_eq!(end, End::Idle);
    }

    #[test]
    fn large_requests_grow_the_buffer() {
        let (mut client, mut server) = pair();
        let t = std::thread::spawn(move || {
            serve(
                &mut server,
                &mut Echo {
                    batches: Vec::new(),
                },
                None,
                None,
            )
            .unwrap()
        });
        let mut big = vec![b'a'; 100_000];
        big.push(b'\n');
        client.write_all(&big).unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"y\n");
        drop(client);
        assert_eq!(t.join().unwrap(), End::Eof);
    }
}
