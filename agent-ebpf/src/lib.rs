//! This library target exists so that `tally-agent` can name this crate as a
//! build dependency (cargo then rebuilds the agent when it changes); the eBPF
//! programs are the `tally` binary target, built for `bpfel-unknown-none`.
#![no_std]
