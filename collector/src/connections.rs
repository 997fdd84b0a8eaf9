//! Which TCP connections the collector's listeners take, and for how long
//! one may stay without asking anything.
//!
//! Each listener (the node channel, the HTTP side) admits at most
//! [`Limits::max`] connections at once and [`Limits::max_per_address`] from
//! one source address; a connection over a limit is closed as soon as it is
//! accepted. An admitted connection must send its first bytes (a TLS
//! ClientHello, the HTTP/2 preface, a request line) within
//! [`Limits::first_bytes_within`], or it is closed: connections that only
//! hold a socket cannot pile up until file descriptors run out. (The TLS
//! handshake that follows has its own timeout, the same value; HTTP/1
//! request headers too, see `http::listener`. A connection that spoke may
//! stay idle: HTTP/2 clients and load balancers keep connections pooled.) Refusals are counted in the metrics and logged at
//! most every [`LOG_EVERY`] per address.

use std::{
    collections::HashMap,
    future::Future as _,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    log_pace::{LOG_EVERY, LogPace},
    metrics::Metrics,
};

/// Pause after an `accept` that failed for want of file descriptors (or
/// memory), so that the loop does not spin while none is free.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one source address.
    pub max_per_address: usize,
    /// A connection that has sent nothing this long after it was accepted
    /// is closed.
    pub first_bytes_within: Duration,
}

/// Why the listener closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The listener had [`Limits::max`] connections open.
    Full,
    /// The source address had [`Limits::max_per_address`] connections open.
    AddressFull,
    /// Nothing came within [`Limits::first_bytes_within`].
    Silent,
}

impl Closed {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Closed::Full => "full",
            Closed::AddressFull => "address_full",
            Closed::Silent => "silent",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Closed::Full => "the listener has its maximum of connections open",
            Closed::AddressFull => "this address has its maximum of connections open",
            Closed::Silent => "nothing came within the handshake timeout",
        }
    }
}

/// The connections of one listener: counts and limits.
#[derive(Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

struct Shared {
    /// `grpc` or `http`: the metric label and the log's word.
    listener: &'static str,
    limits: Limits,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: usize,
    per_address: HashMap<IpAddr, usize>,
    /// The pace of the refusals' log lines, per address.
    logged: LogPace<IpAddr>,
}

impl Admission {
    pub fn new(listener: &'static str, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                listener,
                limits,
                metrics,
                state: Mutex::default(),
            }),
        }
    }

    /// A place for a connection from `address`, held until the returned
    /// ticket is dropped.
    pub fn admit(&self, address: IpAddr) -> Result<Ticket, Closed> {
        let limits = &self.shared.limits;
        let mut state = self.state();
        if state.open >= limits.max {
            return Err(Closed::Full);
        }
        let from_address = state.per_address.entry(address).or_insert(0);
        if *from_address >= limits.max_per_address {
            return Err(Closed::AddressFull);
        }
        *from_address += 1;
        state.open += 1;
        let open = state.open;
        drop(state);
        self.shared
            .metrics
            .connections_open(self.shared.listener, open);
        Ok(Ticket {
            admission: self.clone(),
            address,
        })
    }

    /// Connections open now (the tests' view; the metrics count them).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.state().open
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, address: IpAddr) {
        let mut state = self.state();
        state.open = state.open.saturating_sub(1);
        if let Some(count) = state.per_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_address.remove(&address);
            }
        }
        let open = state.open;
        drop(state);
        self.shared
            .metrics
            .connections_open(self.shared.listener, open);
    }

    /// Counts a refusal and logs it, paced per address.
    pub fn refused(&self, address: IpAddr, refusal: Closed) {
        self.shared
            .metrics
            .connection_refused(self.shared.listener, refusal.label());
        let Some(closed) = self.state().logged.event(address, Instant::now()) else {
            return;
        };
        tracing::warn!(
            listener = self.shared.listener,
            source = %address,
            closed,
            "connections closed: {} (logged at most every {}s per address)",
            refusal.describe(),
            LOG_EVERY.as_secs()
        );
    }

    /// Accepts connections from `listener` for ever, closing those over a
    /// limit; the admitted ones come out with their ticket and their
    /// first-bytes deadline running.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Admitted<TcpStream>>> + Send + 'static {
        futures_util::stream::unfold((self, listener), |(admission, listener)| async move {
            let admitted = admission.next(&listener).await;
            Some((Ok(admitted), (admission, listener)))
        })
    }

    /// The next connection within the limits.
    pub async fn next(&self, listener: &TcpListener) -> Admitted<TcpStream> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    if out_of_resources(&error) {
                        tracing::warn!(
                            listener = self.shared.listener,
                            %error,
                            "cannot accept a connection (raise the open-file limit, or lower \
                             the connection limits)"
                        );
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                    continue;
                }
            };
            match self.admit(peer.ip()) {
                Ok(ticket) => {
                    // Heartbeats are small: send each at once.
                    let _ = stream.set_nodelay(true);
                    return Admitted::new(stream, ticket, self.shared.limits.first_bytes_within);
                }
                Err(refusal) => {
                    self.refused(peer.ip(), refusal);
                    drop(stream);
                }
            }
        }
    }
}

/// Descriptors the collector needs besides its connections (database
/// pools, listeners, files), as a margin.
const OTHER_FILES: u64 = 1024;

/// Raises the soft open-file limit to the hard one (as many servers do at
/// start) and warns when `connections` (the listeners' limits together)
/// and a margin do not fit in it: past it, connections would be refused by
/// the kernel rather than by the limits.
pub fn fit_open_files(connections: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit = raised;
        }
    }
    let needed = connections.saturating_add(OTHER_FILES);
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "the open-file limit is below the connection limits: raise it (LimitNOFILE= in \
             the systemd unit, ulimit -n) or lower --max-connections and \
             --max-http-connections"
        );
    } else {
        tracing::debug!(open_files = limit.rlim_cur, "open-file limit");
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the next accept fails as well until
/// something is freed.
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A connection's place in its listener's counts.
pub struct Ticket {
    admission: Admission,
    address: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.address);
    }
}

/// An admitted connection: closed (reads fail) if its first bytes do not
/// come in time; gives its place back when dropped.
pub struct Admitted<IO> {
    io: IO,
    /// Until the first bytes came.
    deadline: Option<Pin<Box<Sleep>>>,
    ticket: Ticket,
}

impl<IO> Admitted<IO> {
    fn new(io: IO, ticket: Ticket, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            ticket,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.deadline = None;
                this.ticket
                    .admission
                    .refused(this.ticket.address, Closed::Silent);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    Closed::Silent.describe(),
                )))
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.deadline = None;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Admitted<TcpStream> {
    /// The client's address and port (unspecified if the socket cannot say).
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.io
            .peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::new(self.ticket.address, 0))
    }
}

impl Connected for Admitted<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, max_per_address: usize) -> Admission {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        Admission::new(
            "test",
            Limits {
                max,
                max_per_address,
                first_bytes_within: Duration::from_secs(1),
            },
            metrics,
        )
    }

    #[test]
    fn connections_are_counted_in_total_and_per_address() {
        let admission = admission(3, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = admission.admit(a).expect("first from a");
        let second = admission.admit(a).expect("second from a");
        assert_eq!(admission.admit(a).err(), Some(Closed::AddressFull));
        let third = admission.admit(b).expect("first from b");
        assert_eq!(admission.admit(b).err(), Some(Closed::Full));
        assert_eq!(admission.open(), 3);
        drop(first);
        assert_eq!(admission.open(), 2);
        let again = admission.admit(a).expect("a has a place again");
        drop((second, third, again));
        assert_eq!(admission.open(), 0);
        assert!(admission.state().per_address.is_empty());
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_deadline() {
        use tokio::io::AsyncReadExt as _;
        let admission = admission(10, 10);
        let ticket = admission
            .admit(IpAddr::from([10, 0, 0, 1]))
            .expect("ticket");
        let (_client, server) = tokio::io::duplex(64);
        let mut admitted = Admitted::new(server, ticket, Duration::from_millis(100));
        let mut buf = [0u8; 8];
        let error = admitted
            .read(&mut buf)
            .await
            .expect_err("nothing came: the read fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_connection_that_spoke_may_be_idle() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let admission = admission(10, 10);
        let ticket = admission
            .admit(IpAddr::from([10, 0, 0, 1]))
            .expect("ticket");
        let (mut client, server) = tokio::io::duplex(64);
        let mut admitted = Admitted::new(server, ticket, Duration::from_millis(100));
        client.write_all(b"PRI").await.expect("write");
        let mut buf = [0u8; 8];
        let n = admitted.read(&mut buf).await.expect("first bytes");
        assert_eq!(&buf[..n], b"PRI");
        let reader = tokio::spawn(async move {
            let n = admitted.read(&mut buf).await;
            n.map(|n| buf[..n].to_vec())
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(b"late").await.expect("write");
        let read = reader.await.expect("reader").expect("kept open");
        assert_eq!(read, b"late");
    }
}
