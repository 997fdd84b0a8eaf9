//! Live events packed into NOTIFY payloads and unpacked
//! (`tally_collector::events`): arbitrary notices (`Outbox::push`) and
//! arbitrary lines (`Outbox::push_json`, some of them several KiB long),
//! in any order. Nothing may panic. Every payload is within PostgreSQL's
//! limit and headed by its part number; payloads are as full as the limit
//! allows; every event that fits comes out of the payloads unchanged and
//! in order, those that do not fit are the only ones left out; unpacking
//! gives exactly the lines that are events of a known type. Unpacking an
//! arbitrary string never panics either, and gives only lines of it that
//! are JSON objects of a known `type`.
//!
//! The first byte says what the rest is: 0, a NOTIFY payload as it may
//! arrive (lossy UTF-8), to unpack; anything else, events to pack.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use chrono::{DateTime, NaiveDateTime};
use libfuzzer_sys::fuzz_target;
use tally_collector::{
    billing::Mode,
    events::{Event, Load, MAX_PAYLOAD, NodeChange, Notice, Outbox, TrafficCounters, unpack},
};

#[derive(Debug, Arbitrary)]
enum Item {
    Notice(NoticeInput),
    /// `text` `repeat` times over, as one line.
    Line {
        text: String,
        repeat: u16,
    },
}

#[derive(Debug, Arbitrary)]
struct TrafficInput {
    total_upload: i64,
    total_download: i64,
    period_upload: i64,
    period_download: i64,
    period_start_ms: i64,
}

#[derive(Debug, Arbitrary)]
enum NoticeInput {
    Heartbeat {
        node_id: String,
        last_seen_ms: i64,
        load: (f64, f64, f64),
        traffic: TrafficInput,
    },
    PeriodReset {
        node_id: String,
        traffic: TrafficInput,
    },
    AnomalyHeld {
        node_id: String,
        interface: String,
        upload: i64,
        download: i64,
    },
    Quota {
        node_id: String,
        node_name: String,
        period_start_ms: i64,
        threshold: i32,
        usage: i64,
        quota: i64,
        mode: u8,
        at_ms: i64,
    },
    Calibration {
        node_id: String,
        calibration_id: i64,
        traffic: TrafficInput,
    },
    AnomalyDecided {
        node_id: String,
        anomaly_id: i64,
        status: String,
        upload: i64,
        download: i64,
        credited: String,
        traffic: TrafficInput,
    },
    Stale {
        node_id: String,
        reason: String,
        run: i32,
        stale_heartbeats: i64,
    },
    Nodes {
        node_id: String,
        added: bool,
    },
}

fn time(unix_ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .naive_utc()
}

fn traffic(t: &TrafficInput) -> TrafficCounters {
    TrafficCounters {
        total_upload: t.total_upload,
        total_download: t.total_download,
        period_upload: t.period_upload,
        period_download: t.period_download,
        period_start: time(t.period_start_ms),
    }
}

/// Calls `f` with the notice `input` describes.
fn with_notice<R>(input: &NoticeInput, f: impl FnOnce(&Notice<'_>) -> R) -> R {
    let notice = match input {
        NoticeInput::Heartbeat {
            node_id,
            last_seen_ms,
            load,
            traffic: t,
        } => Notice::Heartbeat {
            node_id,
            last_seen: time(*last_seen_ms),
            load: Load {
                one: load.0,
                five: load.1,
                fifteen: load.2,
            },
            traffic: traffic(t),
        },
        NoticeInput::PeriodReset {
            node_id,
            traffic: t,
        } => Notice::PeriodReset {
            node_id,
            traffic: traffic(t),
        },
        NoticeInput::AnomalyHeld {
            node_id,
            interface,
            upload,
            download,
        } => Notice::AnomalyHeld {
            node_id,
            interface,
            upload: *upload,
            download: *download,
        },
        NoticeInput::Quota {
            node_id,
            node_name,
            period_start_ms,
            threshold,
            usage,
            quota,
            mode,
            at_ms,
        } => Notice::Quota {
            node_id,
            node_name,
            period_start: time(*period_start_ms),
            threshold: *threshold,
            usage: *usage,
            quota: *quota,
            mode: [
                Mode::Sum,
                Mode::Max,
                Mode::Upload,
                Mode::Download,
                Mode::P95,
            ][usize::from(*mode) % 5]
                .as_str(),
            at: time(*at_ms),
        },
        NoticeInput::Calibration {
            node_id,
            calibration_id,
            traffic: t,
        } => Notice::Calibration {
            node_id,
            calibration_id: *calibration_id,
            traffic: traffic(t),
        },
        NoticeInput::AnomalyDecided {
            node_id,
            anomaly_id,
            status,
            upload,
            download,
            credited,
            traffic: t,
        } => Notice::AnomalyDecided {
            node_id,
            anomaly_id: *anomaly_id,
            status,
            upload: *upload,
            download: *download,
            credited,
            traffic: traffic(t),
        },
        NoticeInput::Stale {
            node_id,
            reason,
            run,
            stale_heartbeats,
        } => Notice::Stale {
            node_id,
            reason,
            run: *run,
            stale_heartbeats: *stale_heartbeats,
        },
        NoticeInput::Nodes { node_id, added } => Notice::Nodes {
            node_id,
            change: if *added {
                NodeChange::Added
            } else {
                NodeChange::Removed
            },
        },
    };
    f(&notice)
}

/// The notice's JSON: one line.
fn notice_line(input: &NoticeInput) -> String {
    let line =
        with_notice(input, |notice| serde_json::to_string(notice)).expect("a notice serializes");
    assert!(!line.contains('\n'), "a notice is one line: {line}");
    line
}

/// `event` is a JSON object of its kind whose data is one of `lines`.
fn check_event(event: &Event, lines: &[&str]) {
    assert!(
        lines.contains(&&*event.data),
        "{:?} is no line of the payload",
        event.data
    );
    let value: serde_json::Value = serde_json::from_str(&event.data).expect("an event is JSON");
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{:?} is not a JSON object", event.data));
    assert_eq!(
        object.get("type").and_then(|t| t.as_str()),
        Some(event.kind.name()),
        "{:?}",
        event.data
    );
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

fuzz_target!(|input: &[u8]| {
    match input.split_first() {
        Some((0, payload)) => unpack_any(&String::from_utf8_lossy(payload)),
        Some((_, items)) => {
            if let Ok(items) = Vec::<Item>::arbitrary_take_rest(Unstructured::new(items)) {
                pack_and_unpack(&items);
            }
        }
        None => {}
    }
});

fn unpack_any(payload: &str) {
    let lines: Vec<&str> = payload.split('\n').skip(1).collect();
    for event in unpack(payload) {
        check_event(&event, &lines);
    }
}

fn pack_and_unpack(items: &[Item]) {
    let mut outbox = Outbox::new();
    // What was pushed, in order: the line, and whether it is a notice.
    let mut pushed: Vec<(String, bool)> = Vec::new();
    for item in items.iter().take(64) {
        match item {
            Item::Notice(notice) => {
                with_notice(notice, |notice| outbox.push(notice));
                pushed.push((notice_line(notice), true));
            }
            Item::Line { text, repeat } => {
                let line = text.repeat(usize::from(*repeat % 2048).min(16_384 / text.len().max(1)));
                outbox.push_json(&line);
                pushed.push((line, false));
            }
        }
    }
    let payloads = outbox.payloads();
    assert_eq!(outbox.is_empty(), payloads.is_empty());
    let mut kept: Vec<&str> = Vec::new();
    for (part, payload) in payloads.iter().enumerate() {
        assert!(payload.len() <= MAX_PAYLOAD, "{} bytes", payload.len());
        let (head, body) = payload.split_once('\n').expect("a part number and events");
        assert_eq!(head, part.to_string(), "headed by its part number");
        let lines: Vec<&str> = body.split('\n').collect();
        assert!(lines.iter().all(|l| !l.is_empty()));
        if let Some(next) = payloads.get(part + 1) {
            let first = next.split('\n').nth(1).expect("an event");
            assert!(
                payload.len() + 1 + first.len() > MAX_PAYLOAD,
                "part {part} had room for the next event"
            );
        }
        let events: Vec<Event> = unpack(payload).collect();
        for event in &events {
            check_event(event, &lines);
        }
        let expected = lines
            .iter()
            .filter(|line| is_event(line))
            .map(|line| line.to_string());
        assert!(
            events.iter().map(|e| e.data.to_string()).eq(expected),
            "unpack gives the lines that are events"
        );
        kept.extend(lines);
    }
    // Every line that fits comes out, in order; only those that cannot fit
    // are left out.
    let mut out = kept.iter().peekable();
    let widest_head = digits(payloads.len().max(1));
    for (line, notice) in &pushed {
        if out.peek() == Some(&&line.as_str()) {
            out.next();
            assert!(line.len() + 2 <= MAX_PAYLOAD);
            continue;
        }
        let one_line = !line.is_empty() && !line.contains('\n');
        assert!(
            !one_line || line.len() + 1 + widest_head > MAX_PAYLOAD,
            "a line of {} bytes was left out",
            line.len()
        );
        assert!(!notice, "a notice was left out: {line}");
    }
    assert!(out.next().is_none(), "a payload holds a line nobody pushed");
}

/// A line `unpack` takes for an event: JSON with a known `type`.
fn is_event(line: &str) -> bool {
    const KNOWN: [&str; 9] = [
        "heartbeat",
        "period_reset",
        "nodes",
        "quota",
        "calibration",
        "anomaly_held",
        "anomaly",
        "stale",
        "resync",
    ];
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(object)) => object
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| KNOWN.contains(&t)),
        _ => false,
    }
}
