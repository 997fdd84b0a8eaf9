//! tally's collector: authenticates nodes, turns their raw cumulative
//! counters into exact totals in PostgreSQL (DESIGN.md, "Counting rules"),
//! and serves people.

pub mod accounting;
pub mod auth;
pub mod billing;
pub mod calendar;
pub mod connections;
pub mod corrections;
pub mod db;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod log_pace;
pub mod metrics;
pub mod node_tokens;
pub mod nodes;
pub mod period;
pub mod quota;
pub mod serve;
pub mod validate;
pub mod views;
pub mod webhook;
