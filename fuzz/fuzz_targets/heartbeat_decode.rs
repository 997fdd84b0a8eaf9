//! Bytes from the network as a heartbeat: the collector's own gRPC codec
//! (`tally_proto::codec`, its wire check before prost decodes anything)
//! behind tonic's framing, then `validate::heartbeat`. Nothing may panic; a
//! message that does not decode must be `INVALID_ARGUMENT`; a heartbeat
//! that passes validation must hold what validation promises.

#![no_main]

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tally_collector::validate::{self, Heartbeat};
use tally_proto::{
    codec::Codec,
    limits,
    v1::{HeartbeatReply, HeartbeatRequest},
};
use tonic::codec::{Codec as _, Streaming};

/// The collector's clock at receipt (2027-01-15).
const NOW_UNIX_NS: i64 = 1_800_000_000_000_000_000;

fuzz_target!(|encoded: &[u8]| {
    let Some(request) = decode_as_the_server_does(encoded) else {
        return;
    };
    // The codec decodes exactly what prost does (compared encoded: a NaN
    // load is not equal to itself).
    let by_prost = HeartbeatRequest::decode(encoded).expect("prost decodes what the codec did");
    assert_eq!(
        by_prost.encode_to_vec(),
        request.encode_to_vec(),
        "the codec and prost disagree"
    );
    assert!(request.interfaces.len() <= limits::MAX_INTERFACES);
    if let Ok(heartbeat) = validate::heartbeat(request.clone(), NOW_UNIX_NS) {
        check_promises(&request, &heartbeat);
    }
});

/// `encoded` as one gRPC message of a request stream, decoded by the
/// server's codec with the server's size limit; `None` when refused (then
/// with `INVALID_ARGUMENT`).
fn decode_as_the_server_does(encoded: &[u8]) -> Option<HeartbeatRequest> {
    let length = u32::try_from(encoded.len()).ok()?;
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(encoded);
    let body = http_body_util::Full::new(Bytes::from(frame));
    let decoder = Codec::<HeartbeatReply, HeartbeatRequest>::default().decoder();
    let mut stream = Streaming::new_request(decoder, body, None, Some(limits::MAX_MESSAGE_BYTES));
    // The body is all there: the first poll finishes.
    let message = pin!(stream.message());
    let Poll::Ready(result) = message.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("decoding a complete body is pending");
    };
    match result {
        Ok(Some(request)) => Some(request),
        Ok(None) => panic!("a complete frame decoded as no message"),
        Err(status) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "a message that does not decode is the caller's fault: {status:?}"
            );
            None
        }
    }
}

/// What `validate::heartbeat` promises of a heartbeat it passed.
fn check_promises(request: &HeartbeatRequest, heartbeat: &Heartbeat) {
    let texts = [
        (
            "boot_id",
            &heartbeat.reading.set.boot_id,
            limits::MAX_BOOT_ID,
        ),
        ("epoch", &heartbeat.reading.set.epoch, limits::MAX_EPOCH),
        ("hostname", &heartbeat.hostname, limits::MAX_HOSTNAME),
        ("kernel", &heartbeat.kernel, limits::MAX_KERNEL_RELEASE),
        (
            "agent_version",
            &heartbeat.agent_version,
            limits::MAX_AGENT_VERSION,
        ),
        ("source", &heartbeat.source, limits::MAX_SOURCE),
    ];
    for (what, text, max) in texts {
        assert!(text.len() <= max, "{what} longer than {max}");
        assert!(!text.chars().any(char::is_control), "{what}: {text:?}");
    }
    assert!(!heartbeat.reading.set.boot_id.is_empty());
    assert!(!heartbeat.reading.set.epoch.is_empty());
    assert_eq!(heartbeat.reading.set.boot_id, request.boot_id);
    assert_eq!(heartbeat.reading.set.epoch, request.epoch);
    assert!(heartbeat.reading.sequence >= 0 && heartbeat.reading.generation >= 0);
    assert!(heartbeat.agent_time_unix_ns >= 0 && heartbeat.epoch_created_unix_ns >= 0);
    assert!(heartbeat.load.iter().all(|l| l.is_finite() && *l >= 0.0));
    assert_eq!(heartbeat.interfaces.len(), request.interfaces.len());
    assert!(heartbeat.interfaces.len() <= limits::MAX_INTERFACES);

    let (mut rx, mut tx) = (0i128, 0i128);
    for interface in &heartbeat.interfaces {
        let name = &interface.name;
        assert!(!name.is_empty() && name.len() <= limits::MAX_INTERFACE_NAME);
        assert!(!name.chars().any(char::is_control), "{name:?}");
        let counters = [
            interface.rx_bytes,
            interface.rx_packets,
            interface.tx_bytes,
            interface.tx_packets,
        ];
        assert!(counters.iter().all(|c| *c >= 0), "{name:?}: {counters:?}");
        for family in [interface.ipv4, interface.ipv6].into_iter().flatten() {
            assert!(family.rx_bytes >= 0 && family.rx_bytes <= interface.rx_bytes);
            assert!(family.rx_packets >= 0 && family.rx_packets <= interface.rx_packets);
            assert!(family.tx_bytes >= 0 && family.tx_bytes <= interface.tx_bytes);
            assert!(family.tx_packets >= 0 && family.tx_packets <= interface.tx_packets);
        }
        if let (Some(v4), Some(v6)) = (interface.ipv4, interface.ipv6) {
            assert!(
                i128::from(v4.rx_bytes) + i128::from(v6.rx_bytes) <= i128::from(interface.rx_bytes)
            );
            assert!(
                i128::from(v4.tx_bytes) + i128::from(v6.tx_bytes) <= i128::from(interface.tx_bytes)
            );
        }
        // Loopback is shown, never summed.
        if !tally_proto::is_loopback(name) {
            rx += i128::from(interface.rx_bytes);
            tx += i128::from(interface.tx_bytes);
        }
    }
    assert_eq!(
        i128::from(heartbeat.reading.rx),
        rx,
        "rx is the sum of the counted interfaces"
    );
    assert_eq!(
        i128::from(heartbeat.reading.tx),
        tx,
        "tx is the sum of the counted interfaces"
    );
}
