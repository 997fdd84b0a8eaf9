//! Traffic of a known size between two namespaces ([`Netns`]), and only
//! between them: [`tcp_transfer`] sends an exact number of bytes over TCP
//! and returns once the receiver has read them all; [`udp_burst`] sends
//! datagrams paced so that a veth's backlog never overflows.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{Netns, NetnsError};

/// How long a [`tcp_transfer`] may go on sending.
pub const TCP_DEADLINE: Duration = Duration::from_secs(60);
/// How long a [`tcp_transfer`] waits for its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per `write` of a [`tcp_transfer`] (and per `read` at most).
const CHUNK: usize = 1 << 16;
/// A [`udp_burst`] pauses for a millisecond after this many datagrams.
const UDP_PACE_EVERY: usize = 200;

/// What can go wrong with traffic between namespaces.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A socket could not be made, connected, written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The sender was still sending at [`TCP_DEADLINE`].
    #[error("the TCP transfer of {bytes} bytes took longer than {} s ({sent} sent)", TCP_DEADLINE.as_secs())]
    TooSlow {
        /// The bytes to send.
        bytes: usize,
        /// The bytes sent by then.
        sent: usize,
    },
    /// The receiver saw the end of the stream before all was read.
    #[error("the receiver got {got} of {bytes} bytes")]
    Short {
        /// The bytes received.
        got: usize,
        /// The bytes sent.
        bytes: usize,
    },
    /// The receiving thread panicked.
    #[error("the receiving thread of a TCP transfer panicked")]
    ReceiverPanicked,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> TrafficError {
    let what = what.into();
    move |source| TrafficError::Io { what, source }
}

/// Sends `bytes` over TCP from a socket in `from` to a listener on
/// `to_addr` in `to`, and returns once the receiver has read them all.
/// `pace` is slept between writes of 64 KiB; the sending must be over
/// within [`TCP_DEADLINE`].
pub fn tcp_transfer(
    from: &Netns,
    to: &Netns,
    to_addr: impl Into<IpAddr>,
    bytes: usize,
    pace: Duration,
) -> Result<(), TrafficError> {
    let bind = SocketAddr::new(to_addr.into(), 0);
    let listener = to.enter(|| {
        TcpListener::bind(bind).map_err(io_error(format!("cannot listen on {bind} in {}", to.name)))
    })?;
    let target = listener
        .local_addr()
        .map_err(io_error("cannot read the listener's address"))?;
    let mut stream = from.enter(|| {
        TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).map_err(io_error(format!(
            "cannot connect from {} to {target}",
            from.name
        )))
    })?;
    // The kernel completed the handshake already; accept takes it.
    let (receiving, _) = listener
        .accept()
        .map_err(io_error(format!("cannot accept on {target}")))?;
    thread::scope(|scope| {
        let receiver = scope.spawn(move || receive_all(receiving));
        let sent = send(&mut stream, bytes, pace);
        // Also after a failure, so that the receiver sees the end.
        let shutdown = stream
            .shutdown(Shutdown::Write)
            .map_err(io_error("cannot end the stream"));
        let got = receiver
            .join()
            .map_err(|_| TrafficError::ReceiverPanicked)?;
        sent?;
        shutdown?;
        let got = got?;
        if got != bytes {
            return Err(TrafficError::Short { got, bytes });
        }
        Ok(())
    })
}

/// Writes `bytes` in chunks, `pace` apart, until done or past the deadline.
fn send(stream: &mut TcpStream, bytes: usize, pace: Duration) -> Result<(), TrafficError> {
    let chunk = vec![0x5a_u8; CHUNK];
    let deadline = Instant::now() + TCP_DEADLINE;
    let mut sent = 0;
    while sent < bytes {
        if Instant::now() >= deadline {
            return Err(TrafficError::TooSlow { bytes, sent });
        }
        let n = chunk.len().min(bytes - sent);
        stream
            .write_all(&chunk[..n])
            .map_err(io_error(format!("cannot send (after {sent} bytes)")))?;
        sent += n;
        if !pace.is_zero() {
            thread::sleep(pace);
        }
    }
    Ok(())
}

/// Reads until the end of the stream: how many bytes came.
fn receive_all(mut stream: TcpStream) -> Result<usize, TrafficError> {
    let mut buf = vec![0_u8; CHUNK];
    let mut total = 0;
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(io_error(format!("cannot receive (after {total} bytes)")))?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

/// Sends `count` UDP datagrams of `size` bytes from a socket on `from_addr`
/// in `from` to one on `to_addr` in `to`, pausing a millisecond after every
/// 200 so that the veth's backlog never overflows. The receiving socket is
/// closed at the end, without reading.
pub fn udp_burst(
    from: &Netns,
    from_addr: impl Into<IpAddr>,
    to: &Netns,
    to_addr: impl Into<IpAddr>,
    count: usize,
    size: usize,
) -> Result<(), TrafficError> {
    let (from_addr, to_addr) = (
        SocketAddr::new(from_addr.into(), 0),
        SocketAddr::new(to_addr.into(), 0),
    );
    let receiver = to.enter(|| {
        UdpSocket::bind(to_addr).map_err(io_error(format!("cannot bind {to_addr} in {}", to.name)))
    })?;
    let target = receiver
        .local_addr()
        .map_err(io_error("cannot read the receiver's address"))?;
    let sender = from.enter(|| {
        UdpSocket::bind(from_addr).map_err(io_error(format!(
            "cannot bind {from_addr} in {}",
            from.name
        )))
    })?;
    let payload = vec![0xa5_u8; size];
    for i in 0..count {
        sender
            .send_to(&payload, target)
            .map_err(io_error(format!("cannot send datagram {i} to {target}")))?;
        if i % UDP_PACE_EVERY == UDP_PACE_EVERY - 1 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    drop(receiver);
    Ok(())
}

/// What a [`udp_segmented`] run moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Datagrams the receiver got (each of the size sent).
    pub datagrams: usize,
    /// Reads it took: fewer than `datagrams` when GRO merged datagrams
    /// before the receiving socket (and so before the TC ingress hook).
    pub reads: usize,
}

/// Sends `sends` buffers of `segments` UDP datagrams of `size` bytes each
/// with UDP segmentation offload (`UDP_SEGMENT`: the kernel keeps each
/// buffer as one socket buffer until it is segmented, in software or by
/// the NIC) from `from_addr` in `from` to a socket on `to_addr` in `to`
/// that accepts GRO-merged datagrams (`UDP_GRO`), and reads until every
/// datagram has come (at most 5 s).
#[allow(
    clippy::too_many_arguments,
    reason = "two ends and the shape of the traffic"
)]
pub fn udp_segmented(
    from: &Netns,
    from_addr: impl Into<IpAddr>,
    to: &Netns,
    to_addr: impl Into<IpAddr>,
    sends: usize,
    segments: usize,
    size: usize,
) -> Result<Segmented, TrafficError> {
    let (from_addr, to_addr) = (
        SocketAddr::new(from_addr.into(), 0),
        SocketAddr::new(to_addr.into(), 0),
    );
    let receiver = to.enter(|| {
        UdpSocket::bind(to_addr).map_err(io_error(format!("cannot bind {to_addr} in {}", to.name)))
    })?;
    set_udp_option(&receiver, libc::UDP_GRO, 1).map_err(io_error("cannot set UDP_GRO"))?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(io_error("cannot set a read timeout"))?;
    let target = receiver
        .local_addr()
        .map_err(io_error("cannot read the receiver's address"))?;
    let sender = from.enter(|| {
        UdpSocket::bind(from_addr).map_err(io_error(format!(
            "cannot bind {from_addr} in {}",
            from.name
        )))
    })?;
    let segment = i32::try_from(size).map_err(|_| TrafficError::Io {
        what: format!("a segment of {size} bytes"),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    set_udp_option(&sender, libc::UDP_SEGMENT, segment)
        .map_err(io_error("cannot set UDP_SEGMENT"))?;
    let expected = sends * segments;
    let buffer = vec![0x3c_u8; segments * size];
    let mut got = Segmented {
        datagrams: 0,
        reads: 0,
    };
    let mut read = vec![0_u8; 1 << 16];
    for i in 0..sends {
        sender
            .send_to(&buffer, target)
            .map_err(io_error(format!("cannot send buffer {i} to {target}")))?;
        // Read as it comes, so the receive buffer never overflows.
        drain(&receiver, &mut read, size, &mut got, false)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.datagrams < expected && Instant::now() < deadline {
        drain(&receiver, &mut read, size, &mut got, true)?;
    }
    if got.datagrams != expected {
        return Err(TrafficError::Short {
            got: got.datagrams,
            bytes: expected,
        });
    }
    Ok(got)
}

/// Reads what is there (or, when `wait`, waits for one read up to the
/// socket's timeout), counting datagrams of `size` bytes and reads.
fn drain(
    socket: &UdpSocket,
    buf: &mut [u8],
    size: usize,
    got: &mut Segmented,
    wait: bool,
) -> Result<(), TrafficError> {
    socket
        .set_nonblocking(!wait)
        .map_err(io_error("cannot switch the receiver's blocking"))?;
    loop {
        match socket.recv(buf) {
            Ok(n) => {
                got.reads += 1;
                got.datagrams += n.div_ceil(size);
                if wait {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(io_error("cannot receive")(e)),
        }
    }
}

fn set_udp_option(socket: &UdpSocket, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setsockopt on a socket we own, with an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::netns::{VethPair, namespaces_named};

    /// Whether namespaces can be made here (says why not otherwise).
    fn privileged(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        crate::skip::skip(test, "needs root to make network namespaces");
        false
    }

    #[test]
    fn known_traffic_crosses_a_veth_pair_and_the_namespaces_go_afterwards() {
        let test = "known_traffic_crosses_a_veth_pair_and_the_namespaces_go_afterwards";
        if !privileged(test) {
            return;
        }
        let prefix = format!("tally-kit-{}-", std::process::id());
        {
            let a = Netns::create_host(format!("{prefix}a")).expect("namespace a");
            let b = Netns::create_host(format!("{prefix}b")).expect("namespace b");
            let pair = VethPair::new("tka", "tkb", [10, 214, 7], [0x02, 0x7a, 0x4b, 7]);
            pair.create(&a, &b).expect("veth pair");
            assert_eq!(pair.a.mac_text(), "02:7a:4b:07:00:01");
            assert_eq!(pair.b.addr, Ipv4Addr::new(10, 214, 7, 2));
            // Static neighbours: no ARP will cross the pair.
            let neighbours = a.ip(&["neigh", "show", "dev", "tka"]).expect("neigh");
            assert!(
                neighbours.contains("10.214.7.2 lladdr 02:7a:4b:07:00:02 PERMANENT"),
                "{neighbours}"
            );
            pair.set_up(&a, &b).expect("up");
            let start = a.settle("tka").expect("stats");

            tcp_transfer(&b, &a, pair.a.addr, 1 << 20, Duration::ZERO).expect("TCP");
            udp_burst(&a, pair.a.addr, &b, pair.b.addr, 500, 100).expect("UDP");

            let moved = a
                .settle("tka")
                .expect("stats")
                .checked_since(&start)
                .expect("counters only grow");
            assert!(moved.rx_bytes > 1 << 20, "{moved:?}");
            assert!(moved.tx_packets >= 500, "{moved:?}");
            // Sockets made by `run` are the namespace's: b's address is not
            // a's.
            let bound = a
                .run(|| UdpSocket::bind((pair.b.addr, 0)).is_ok())
                .expect("enter a");
            assert!(!bound, "a has no address of b");
            assert_eq!(
                a.exec("cat", &["/sys/class/net/tka/mtu"])
                    .expect("exec")
                    .trim(),
                "1500"
            );

            // An address b does not have: a clear error.
            let failed = tcp_transfer(&a, &b, Ipv4Addr::new(10, 214, 8, 2), 1, Duration::ZERO);
            assert!(matches!(failed, Err(TrafficError::Io { .. })), "{failed:?}");
        }
        assert_eq!(
            namespaces_named(&prefix).expect("ip netns list"),
            Vec::<String>::new()
        );
    }
}
