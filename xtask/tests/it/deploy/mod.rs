//! The deployment kit under `deploy/`: the systemd units parse with
//! `systemd-analyze verify` and keep the privileges the design promises, the
//! Kubernetes manifests are well-formed and consistent with each other and
//! with the binaries, and every setting they name is one the binaries read.

mod common;
mod fields;
mod kubernetes;
mod manifest_check;
mod systemd;
