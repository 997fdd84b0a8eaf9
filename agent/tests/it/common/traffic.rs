//! Traffic between two test namespaces, and only between them: a TCP
//! transfer of an exact number of bytes that returns once the receiver has
//! read them all, and a paced burst of UDP datagrams that never overflows the
//! veth's backlog.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use super::NetNs;

/// Sends `bytes` over TCP from a socket in `from` to `to_ip` in `to`; returns
/// when the receiver has read them all. `pace` sleeps between 64 KiB writes.
pub fn tcp_transfer(from: &NetNs, to: &NetNs, to_ip: Ipv4Addr, bytes: usize, pace: Duration) {
    let listener = to.run(move || TcpListener::bind(SocketAddr::from((to_ip, 0))).expect("bind"));
    let addr = listener.local_addr().expect("addr");
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut stream = from
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"));
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < bytes {
        assert!(
            Instant::now() < deadline,
            "TCP transfer took longer than 60 s"
        );
        let n = chunk.len().min(bytes - sent);
        stream.write_all(&chunk[..n]).expect("write");
        sent += n;
        if !pace.is_zero() {
            thread::sleep(pace);
        }
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let got = receiver.join().expect("receiver");
    assert_eq!(got, bytes, "the receiver got every byte");
    drop(stream);
}

/// Sends `count` UDP datagrams of `size` bytes from `from` to `to_ip` in `to`,
/// paced so that the veth's backlog never overflows.
pub fn udp_burst(
    from: &NetNs,
    to: &NetNs,
    to_ip: Ipv4Addr,
    from_ip: Ipv4Addr,
    count: usize,
    size: usize,
) {
    let receiver = to.run(move || UdpSocket::bind(SocketAddr::from((to_ip, 0))).expect("bind"));
    let target = receiver.local_addr().expect("addr");
    let sender = from.run(move || UdpSocket::bind(SocketAddr::from((from_ip, 0))).expect("bind"));
    let payload = vec![0xa5u8; size];
    for i in 0..count {
        sender.send_to(&payload, target).expect("send");
        if i % 200 == 199 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    drop(receiver);
}
