//! The outbound side of a WebSocket connection: the socket as the outbox writes to it, and the
//! writer task that takes over when the socket is full.
//!
//! Most frames never see the writer task: the thread that queued them writes them at the end of
//! its turn (see `kaiwa_actors::outbox`). The task only waits for room on the socket of a slow
//! reader, writes the close frame, and ends the connection.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use kaiwa_actors::outbox::{Flushed, Outbox, Wire};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A connection's TCP socket, shared by its reader, its writer task and every thread that
/// flushes frames to it.
pub struct TcpWire {
    sock: Arc<TcpStream>,
    /// The socket's descriptor, kept beside the handle: a fan-out writes thousands of sockets
    /// in a row, and reaching the descriptor through the runtime's socket object was a cache
    /// miss per socket (3.5% of the node with 10,000 members).
    fd: RawFd,
}

impl TcpWire {
    /// Wraps the connection's socket.
    pub fn new(sock: Arc<TcpStream>) -> TcpWire {
        let fd = sock.as_raw_fd();
        TcpWire { sock, fd }
    }
}

impl Wire for TcpWire {
    /// One `send` or `sendmsg` of everything queued. A socket written with `writev` goes through the
    /// file layer first (a position lock and a write notification on every call), which cost
    /// the node a tenth of its kernel time in fan-out to 10,000 members.
    ///
    /// The first attempt skips the runtime's readiness record: reading it is a cache miss per
    /// socket (4% of the node in a 10,000-member fan-out), and a socket with room does not need
    /// it. Only a full socket goes through `try_io`, which sends again and clears the readiness
    /// if the socket is still full, so that the writer task's `writable()` waits for the next
    /// edge (a wakeup that arrives in between is kept: `try_io` clears only the readiness it
    /// read before its own attempt).
    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let sock = &*self.sock;
        // SAFETY: `self.sock` owns the descriptor and lives as long as `self`.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        // One buffer (a fan-out's usual case) goes by `send`, which skips copying a message
        // header and an iovec array in from user space.
        let send = || match bufs {
            [one] => socket2::SockRef::from(&fd).send_with_flags(one, libc::MSG_NOSIGNAL),
            _ => socket2::SockRef::from(&fd).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL),
        };
        match send() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.try_io(Interest::WRITABLE, send)
            }
            other => other,
        }
    }

    fn shutdown(&self) {
        // Errors mean the socket is gone already, which is what was asked.
        let _ = socket2::SockRef::from(&*self.sock).shutdown(Shutdown::Both);
    }
}

/// Runs until the connection is over: writes whatever no producer could, waiting for room on
/// the socket when it is full.
pub async fn run_writer(sock: &TcpStream, outbox: &Outbox) {
    loop {
        match outbox.flush() {
            Flushed::Done => return,
            Flushed::Blocked => {
                if sock.writable().await.is_err() {
                    // The runtime is going away; so is the connection.
                    let _ = socket2::SockRef::from(sock).shutdown(Shutdown::Both);
                    return;
                }
            }
            Flushed::Empty => poll_fn(|cx| outbox.poll_needed(cx)).await,
        }
    }
}
