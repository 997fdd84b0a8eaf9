//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`)
//! from tally's own types and formats: real encoded heartbeats, a real
//! reboot journal and generation file, real packed event payloads, calendar
//! inputs around daylight-saving changes, and, for the targets that read
//! structured input, a few fixed pseudo-random inputs.
//!
//! `cargo xtask fuzz --write-seeds` runs it; the files are committed.

use std::{fs, path::Path};

use chrono::{DateTime, NaiveDateTime};
use prost::Message as _;
use tally_agent::{generation::Generations, journal};
use tally_collector::events::{Load, NodeChange, Notice, Outbox, TrafficCounters};
use tally_proto::v1::{
    FamilyCounters, HeartbeatRequest, InterfaceCounters, InterfaceState, LinkKind, LoadAverage,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = std::env::args_os()
        .nth(1)
        .ok_or("usage: write_seeds <corpus dir>")?;
    let corpus = Path::new(&corpus);
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    // heartbeat_decode: heartbeats as agents send them.
    let full = heartbeat("boot-7f3a", "epoch-1", 41);
    write("heartbeat_decode", "full", &full.encode_to_vec())?;
    let minimal = HeartbeatRequest {
        boot_id: "b".into(),
        epoch: "e".into(),
        load: Some(LoadAverage::default()),
        ..HeartbeatRequest::default()
    };
    write("heartbeat_decode", "minimal", &minimal.encode_to_vec())?;
    let refused = HeartbeatRequest {
        hostname: "bad\0host".into(),
        ..full.clone()
    };
    write(
        "heartbeat_decode",
        "control_character",
        &refused.encode_to_vec(),
    )?;
    write("heartbeat_decode", "empty", b"")?;

    // journal_parse: 0 + a journal file, 1 + a journal's payload, 2 + a
    // generation file.
    let entries = [
        heartbeat("boot-7f3a", "epoch-1", 41),
        heartbeat("boot-8c01", "epoch-2", 3),
    ];
    let file = journal::encode(&entries)?;
    write("journal_parse", "journal", &[&[0u8][..], &file].concat())?;
    let torn = &file[..file.len() - 7];
    write(
        "journal_parse",
        "journal_torn",
        &[&[0u8][..], torn].concat(),
    )?;
    write(
        "journal_parse",
        "journal_payload",
        &[&[1u8][..], &file[20..]].concat(),
    )?;
    let state = std::env::temp_dir().join(format!("tally-write-seeds-{}", std::process::id()));
    fs::create_dir_all(&state)?;
    let mut generations = Generations::load(&state);
    generations.of("boot-7f3a", "epoch-1");
    generations.seen(6);
    generations.of("boot-8c01", "epoch-2");
    let generation_file = fs::read(state.join(tally_agent::generation::FILE_NAME))?;
    fs::remove_dir_all(&state)?;
    write(
        "journal_parse",
        "generation",
        &[&[2u8][..], &generation_file].concat(),
    )?;

    // event_payload: 0 + payloads as NOTIFY delivers them; other first
    // bytes: events to pack, from pseudo-random bytes.
    let mut outbox = Outbox::new();
    let at = time(1_796_000_000_123);
    let traffic = TrafficCounters {
        total_upload: 1_234_567,
        total_download: i64::MAX,
        period_upload: 0,
        period_download: 42,
        period_start: time(1_793_000_000_000),
    };
    outbox.push(&Notice::Heartbeat {
        node_id: "node-1",
        last_seen: at,
        load: Load {
            one: 0.5,
            five: 0.25,
            fifteen: 2.0,
        },
        traffic,
    });
    outbox.push(&Notice::PeriodReset {
        node_id: "node-2",
        traffic,
    });
    outbox.push(&Notice::Nodes {
        node_id: "node-3",
        change: NodeChange::Added,
    });
    let payload = outbox.payloads().first().ok_or("no payload")?;
    write(
        "event_payload",
        "payload",
        &[&[0u8][..], payload.as_bytes()].concat(),
    )?;
    let odd = "3\n{\"type\":\"future_kind\"}\nnot json\n[\"nodes\"]\n{\"type\":\"stale\",\"nodeId\":\"n\"}";
    write(
        "event_payload",
        "payload_odd_lines",
        &[&[0u8][..], odd.as_bytes()].concat(),
    )?;
    for (i, len) in [64usize, 512, 2048].into_iter().enumerate() {
        let mut bytes = vec![1u8];
        bytes.extend(pseudo_random(len, 11 + i as u64));
        write("event_payload", &format!("pack_{len}"), &bytes)?;
    }

    // accounting_decide: structured input from pseudo-random bytes.
    for (i, len) in [128usize, 512, 2048].into_iter().enumerate() {
        write(
            "accounting_decide",
            &format!("history_{len}"),
            &pseudo_random(len, 23 + i as u64),
        )?;
    }

    // billing_calendar: zone index (u16 LE), day, Unix seconds (i64 LE),
    // nanoseconds (u32 LE), as `arbitrary` reads them.
    let cases = [
        ("UTC", 31, "2025-03-01T00:00:00Z"),
        ("Europe/Berlin", 1, "2025-03-30T01:30:00Z"),
        ("America/New_York", 10, "2024-03-10T07:00:00Z"),
        ("America/Santiago", 8, "2024-09-08T04:00:00Z"),
        ("Australia/Lord_Howe", 29, "2024-02-29T13:00:00Z"),
        ("Pacific/Apia", 30, "2011-12-30T10:00:00Z"),
    ];
    for (zone, day, at) in cases {
        let index = chrono_tz::TZ_VARIANTS
            .iter()
            .position(|tz| tz.name() == zone)
            .ok_or("unknown zone")?;
        let seconds = DateTime::parse_from_rfc3339(at)?.timestamp();
        let mut bytes = u16::try_from(index)?.to_le_bytes().to_vec();
        bytes.push(day);
        bytes.extend(seconds.to_le_bytes());
        bytes.extend(0u32.to_le_bytes());
        let name = format!("{}_{day}", zone.replace('/', "_"));
        write("billing_calendar", &name, &bytes)?;
    }
    Ok(())
}

/// A heartbeat as an agent sends it: a physical interface with both
/// families, a bridge, and loopback.
fn heartbeat(boot_id: &str, epoch: &str, sequence: u64) -> HeartbeatRequest {
    let family = |rx, tx| FamilyCounters {
        rx_bytes: rx,
        rx_packets: rx / 1000,
        tx_bytes: tx,
        tx_packets: tx / 1000,
    };
    let interface = |name: &str, ifindex, kind: LinkKind, rx, tx| InterfaceCounters {
        name: name.into(),
        ifindex,
        rx_bytes: rx,
        rx_packets: rx / 900,
        tx_bytes: tx,
        tx_packets: tx / 900,
        state: InterfaceState::Attached as i32,
        kind: kind as i32,
        ..InterfaceCounters::default()
    };
    HeartbeatRequest {
        boot_id: boot_id.into(),
        epoch: epoch.into(),
        epoch_created_unix_ns: 1_796_000_000_000_000_000,
        counters_start_at_zero: true,
        sequence: sequence * 1_000_000_000,
        agent_time_unix_ns: 1_796_000_041_000_000_000,
        interfaces: vec![
            InterfaceCounters {
                ipv4: Some(family(900_000, 400_000)),
                ipv6: Some(family(90_000, 40_000)),
                default_route: true,
                ..interface("eth0", 2, LinkKind::Physical, 1_000_000, 500_000)
            },
            InterfaceCounters {
                master_ifindex: 0,
                ..interface("docker0", 3, LinkKind::ContainerBridge, 5_000, 7_000)
            },
            interface("lo", 1, LinkKind::Other, 123_456, 123_456),
        ],
        load: Some(LoadAverage {
            one: 0.42,
            five: 0.3,
            fifteen: 0.25,
        }),
        hostname: "node-1.example".into(),
        kernel_release: "6.1.0-28-amd64".into(),
        agent_version: "0.1.0".into(),
        source: "ebpf".into(),
        last_of_boot: false,
        generation: 3,
    }
}

fn time(unix_ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .naive_utc()
}

/// `len` bytes of xorshift64 from `seed`: the same on every run.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}
