//! The collector's integration tests, in one test binary (one link of the
//! dependency tree instead of one per file): a module per subject, and
//! `common`, the helpers they share (throwaway PostgreSQL clusters, a
//! fleet of real collectors, an HTTP client, a headless browser).
//!
//! Run one subject with `cargo test -p tally-collector --test it -- grpc::`.

mod common;

mod accounting;
mod api_admin;
mod api_openapi;
mod api_rankings;
mod api_read;
mod api_schemathesis;
mod billing_api;
mod browser;
mod cli;
mod corrections;
mod counter_sets;
mod database_tls;
mod events;
mod grpc;
mod hostile;
mod http;
mod http_tokens;
mod https;
mod ingest_rules;
mod metrics;
mod period;
mod quota;
mod quota_heartbeats;
mod replicas;
mod schema;
mod tls;
mod token_rotation;
mod top;
