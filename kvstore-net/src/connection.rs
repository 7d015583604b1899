//! One client connection: its buffers, the read/parse/execute/write loop,
//! the limits, EOF and the idle timeout.
//!
//! The loop reads once, answers every complete request in the buffer into
//! one output buffer, and writes it once when no complete request is left,
//! so a pipeline of requests costs one `read` and one `write`. Bytes a
//! rejected request asked to discard (an oversized data block) are dropped
//! as they arrive, never buffered whole.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

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

/// The byte stream of a connection: plain TCP, or TLS over TCP. The
/// connection loop reads and writes through it and reaches the socket
/// under it for timeouts and the final close.
pub(crate) trait Stream: Read + Write {
    /// The TCP socket under the stream.
    fn socket(&self) -> &TcpStream;
    /// Says goodbye in the stream's own terms before the socket closes
    /// (TLS: a close_notify alert); plain TCP has nothing to say.
    fn close_notify(&mut self) {}
}

impl Stream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
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

    /// Writes everything buffered.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.stream.write_all(&self.buf)?;
            self.stream.flush()?;
            self.io.writes += 1;
            self.io.bytes_written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
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
/// caller logs them); nothing half-received is ever executed.
pub(crate) fn serve(
    stream: &mut dyn Stream,
    handler: &mut dyn Handler,
    idle_timeout: Option<Duration>,
) -> io::Result<End> {
    stream.socket().set_read_timeout(idle_timeout)?;
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    let mut skip: u64 = 0;
    let mut out = Output {
        buf: Vec::new(),
        stream,
        io: IoCounts::default(),
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
        out.flush()?;
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
            let end = serve(&mut server, &mut echo, None).unwrap();
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
