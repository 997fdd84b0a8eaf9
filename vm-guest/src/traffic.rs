//! Traffic of a known size between the root namespace and the peer's: a
//! TCP transfer (one direction's payload, checked on arrival) and a paced
//! burst of UDP datagrams.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::net::Netns;

/// Which side sends.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// From the root namespace to the peer: the counted veth transmits.
    Out,
    /// From the peer to the root namespace: the counted veth receives.
    In,
}

/// The two ends: the root namespace's address and the peer's (in `peer`).
pub struct Ends<'a> {
    pub root: IpAddr,
    pub peer: IpAddr,
    pub peer_ns: &'a Netns,
}

impl Ends<'_> {
    /// Sends `bytes` over one TCP connection in `direction`; the receiver
    /// checks it got them all.
    pub fn tcp(&self, direction: Direction, bytes: usize) -> anyhow::Result<()> {
        let (listen_on, in_peer) = match direction {
            Direction::Out => (self.peer, true),
            Direction::In => (self.root, false),
        };
        let bind = || TcpListener::bind((listen_on, 0)).context("binding the TCP receiver");
        let listener = if in_peer {
            self.peer_ns.run(bind)?
        } else {
            bind()?
        };
        let addr = listener.local_addr().context("receiver address")?;
        let receiver = thread::spawn(move || -> anyhow::Result<usize> {
            let (mut stream, _) = listener.accept().context("accept")?;
            let mut buf = vec![0; 64 * 1024];
            let mut total = 0;
            loop {
                let n = stream.read(&mut buf).context("TCP read")?;
                if n == 0 {
                    return Ok(total);
                }
                total += n;
            }
        });
        let send = move || -> anyhow::Result<()> {
            let mut stream = TcpStream::connect(addr).context("TCP connect")?;
            let chunk = vec![0x5a; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                stream.write_all(&chunk[..n]).context("TCP write")?;
                left -= n;
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .context("TCP shutdown")?;
            Ok(())
        };
        if in_peer {
            send()?;
        } else {
            self.peer_ns.run(send)?;
        }
        let got = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the TCP receiver panicked"))??;
        if got != bytes {
            bail!("the TCP receiver got {got} bytes of {bytes}");
        }
        Ok(())
    }

    /// Sends `count` UDP datagrams of `size` bytes in `direction`, 32 at a
    /// time with a pause, so that no queue overflows.
    pub fn udp(&self, direction: Direction, count: usize, size: usize) -> anyhow::Result<()> {
        let (from, to, from_peer) = match direction {
            Direction::Out => (self.root, self.peer, false),
            Direction::In => (self.peer, self.root, true),
        };
        let bind = |addr: IpAddr| move || UdpSocket::bind((addr, 0)).context("binding UDP");
        let receiver = if from_peer {
            bind(to)()?
        } else {
            self.peer_ns.run(bind(to))?
        };
        let target: SocketAddr = receiver.local_addr().context("receiver address")?;
        let send = move || -> anyhow::Result<()> {
            let socket = UdpSocket::bind((from, 0)).context("binding UDP")?;
            let payload = vec![0xa5; size];
            for i in 0..count {
                socket.send_to(&payload, target).context("UDP send")?;
                if i % 32 == 31 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(())
        };
        if from_peer {
            self.peer_ns.run(send)?;
        } else {
            send()?;
        }
        drop(receiver);
        Ok(())
    }

    /// Sends `sends` buffers of `segments` datagrams of `size` bytes each
    /// with UDP segmentation offload (`UDP_SEGMENT`) in `direction`, to a
    /// socket that takes GRO-merged datagrams (`UDP_GRO`); returns the
    /// datagrams received and the reads they took.
    pub fn udp_segmented(
        &self,
        direction: Direction,
        sends: usize,
        segments: usize,
        size: usize,
    ) -> anyhow::Result<(usize, usize)> {
        let (from, to, from_peer) = match direction {
            Direction::Out => (self.root, self.peer, false),
            Direction::In => (self.peer, self.root, true),
        };
        let bind_receiver = move || -> anyhow::Result<UdpSocket> {
            let socket = UdpSocket::bind((to, 0)).context("binding UDP")?;
            set_udp_option(&socket, libc::UDP_GRO, 1).context("UDP_GRO")?;
            socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .context("read timeout")?;
            Ok(socket)
        };
        let receiver = if from_peer {
            bind_receiver()?
        } else {
            self.peer_ns.run(bind_receiver)?
        };
        let target: SocketAddr = receiver.local_addr().context("receiver address")?;
        let segment = libc::c_int::try_from(size).context("segment size")?;
        let send = move || -> anyhow::Result<UdpSocket> {
            let socket = UdpSocket::bind((from, 0)).context("binding UDP")?;
            set_udp_option(&socket, libc::UDP_SEGMENT, segment).context("UDP_SEGMENT")?;
            Ok(socket)
        };
        let sender = if from_peer {
            self.peer_ns.run(send)?
        } else {
            send()?
        };
        let buffer = vec![0x3c; segments * size];
        let mut buf = vec![0; 64 * 1024];
        let (mut datagrams, mut reads) = (0, 0);
        for _ in 0..sends {
            sender.send_to(&buffer, target).context("UDP GSO send")?;
            // One buffer at a time: read it before the next one.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let want = datagrams + segments;
            while datagrams < want && std::time::Instant::now() < deadline {
                match receiver.recv(&mut buf) {
                    Ok(n) => {
                        reads += 1;
                        datagrams += n.div_ceil(size);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    Err(e) => return Err(e).context("UDP receive"),
                }
            }
        }
        if datagrams != sends * segments {
            bail!("received {datagrams} of {} datagrams", sends * segments);
        }
        Ok((datagrams, reads))
    }
}

/// `setsockopt(SOL_UDP, option, value)`.
pub fn set_udp_option(
    socket: &UdpSocket,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
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
        Err(std::io::Error::last_os_error())
    }
}
