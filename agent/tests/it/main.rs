//! The agent's integration tests, in one test binary (one link of the
//! dependency tree instead of one per file): a module per subject, and
//! `common`, the test hosts they share (network namespaces joined by veth
//! pairs, the real agent in them, the kernel's own view, a real collector).
//!
//! Run one subject with `cargo test -p tally-agent --test it -- journal::`.

mod common;

mod cli;
mod count_rules;
mod end_to_end;
mod exact_counting;
mod family_split;
mod heartbeat;
mod journal;
mod layout_upgrade;
mod lifecycle;
mod link_classes;
mod wire_frames;
