//! `cargo xtask`: tally's developer workflows.

mod architecture;
mod bench;
mod cargo_tool;
mod demo;
mod disk;
mod dist;
mod docs;
mod fuzz;
mod lint;
mod packages;
mod schemathesis;
mod testrun;
mod toolchain;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// tally's developer workflows.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Set up the eBPF toolchain: the nightly pinned in
    /// agent-ebpf/rust-toolchain.toml with its rust-src, and bpf-linker built
    /// against that nightly's own LLVM. Does nothing when all is there.
    /// (A build of the agent only checks this, and names this command.)
    Setup,
    /// Build the eBPF object (`target/bpfel-unknown-none/release/tally`).
    BuildEbpf,
    /// Run every test (unit and privileged integration tests; as root, with
    /// TALLY_REQUIRE_PRIVILEGED=1 a privileged test fails instead of skipping),
    /// and check that `cargo doc --workspace --no-deps` gives no warning.
    /// Builds the release artefacts first (`dist`, twice: target/tally-dist and
    /// target/tally-dist-again), which the dist:: tests check; after the
    /// tests on this machine, runs `vm-test` on both Debian kernels.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo fmt --check; every crate takes the workspace's lints and
    /// rustfmt.toml is there; no import cycle between modules (beyond those
    /// in xtask/import-cycles.allow); clippy on the workspace, on the eBPF
    /// crate and on the fuzz targets (fuzz/, with the pinned nightly), and
    /// cargo doc (workspace, and the eBPF crate for its target) with rustdoc
    /// warnings as errors.
    Lint {
        /// Only the checks that need no build (rustfmt, the crates' set-up,
        /// import cycles, stale paths): seconds instead of minutes.
        #[arg(long)]
        quick: bool,
    },
    /// Rewrite the generated part of docs/architecture.md (tables,
    /// commands, modules) from the code; `cargo xtask test` fails while it
    /// is stale.
    Architecture {
        /// Only check (against the binaries already built under
        /// target/debug): fail when the block is stale, change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run tally end to end on this machine (as root): a throwaway
    /// PostgreSQL, the collector with its dashboard, and three test hosts
    /// (network namespaces) each with its agent, exchanging traffic. Prints
    /// the dashboard's URL and a live summary; Ctrl-C (or --duration)
    /// stops it and removes everything it made.
    Demo(demo::DemoArgs),
    /// Run the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer, the nightly
    /// with AddressSanitizer), each for --seconds over a scratch copy of its
    /// seed corpus in target/fuzz/ (fuzz/corpus/ stays as committed): the
    /// heartbeat's decoding and validation, the accounting decision on
    /// arbitrary histories, the reboot journal's and the generation file's
    /// parsers, event payload packing and unpacking, the billing calendar.
    /// Installs cargo-fuzz if missing. Prints the inputs each target ran;
    /// fails with the crashing input's path if a target crashes.
    Fuzz(fuzz::FuzzArgs),
    /// Build the release artefacts for x86_64 and aarch64 (musl, fully
    /// static, stripped, the dependency list embedded with cargo-auditable)
    /// into target/tally-dist: per target a tarball (both binaries, CycloneDX
    /// SBOMs, systemd units, environment examples, INSTALL), .deb and .rpm
    /// packages of both binaries; the SBOMs beside them; an OCI image of
    /// both CPUs (buildah); SHA256SUMS.
    /// Reproducible: the same sources and SOURCE_DATE_EPOCH (default: the
    /// last commit's time) give the same bytes. Installs what it needs
    /// (Debian's cross compilers, rustup targets, the cargo subcommands).
    Dist(dist::DistArgs),
    /// Run the agent on the kernels and CPUs users run, in virtual machines
    /// (QEMU; KVM when it works, software emulation otherwise): Debian 12's
    /// kernel 6.1 on amd64 and on arm64, fetched with apt and cached under
    /// target/vm/. In each VM the static agent attaches in the mode the
    /// kernel offers, counts TCP and UDP through a veth pair exactly,
    /// survives kill -9, detaches cleanly, classifies vlan, macvlan,
    /// bridge, dummy and wireguard links, runs on /proc/net/dev, and reports
    /// to a collector on this machine whose stored totals must equal the
    /// guest kernel's counts. Fails on any failure or timeout. A kernel that
    /// cannot be fetched is skipped, unless TALLY_REQUIRE_PRIVILEGED=1.
    VmTest(vm::VmTestArgs),
    /// Measure what tally costs (figures are printed, not asserted; `ebpf`
    /// needs root).
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Run cost of the TC programs against an empty one, and UDP throughput
    /// over a veth pair with and without them (two throwaway namespaces).
    /// With `--kernel` a Debian kernel of `vm-test`: the run cost measured
    /// inside that VM (netlink filters; ratios only).
    Ebpf(bench::EbpfArgs),
    /// Heartbeats/s one in-process collector applies from simulated agents
    /// against a throwaway PostgreSQL (fsync on), receipt-to-commit latency,
    /// exact accounting checked, against `pgbench -b simple-update` on the
    /// same cluster in the same run. Runs itself in the release profile.
    Ingest(bench::ingest::IngestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Disk a clean `cargo xtask test` build takes under `target/`, rounded up
/// (measured: see the README).
const TEST_BUILD_GIB: u64 = 5;

/// Where cargo builds: `CARGO_TARGET_DIR`, or the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

fn setup() -> anyhow::Result<toolchain::NightlyInfo> {
    let mut log = |line: &str| eprintln!("setup: {line}");
    let nightly = toolchain::ensure_all(&mut log)?;
    eprintln!(
        "setup: eBPF toolchain ready ({} = {} {}, LLVM {}, bpf-linker {})",
        nightly.toolchain,
        nightly.release,
        nightly.commit_hash,
        nightly.llvm_major,
        toolchain::BPF_LINKER_VERSION,
    );
    Ok(nightly)
}

fn status_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The BPF build: the same flags as aya-build uses from agent/build.rs.
fn ebpf_cargo(subcommand: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", &toolchain::toolchain_name()?, "cargo", subcommand])
        .args(["--package", "tally-agent-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("PATH", toolchain::path_with_cargo_bin()?)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    Ok(cmd)
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup().map(drop),
        Task::BuildEbpf => {
            setup()?;
            status_ok(&mut ebpf_cargo("build")?)?;
            let object = workspace_root().join("target/bpfel-unknown-none/release/tally");
            eprintln!("built {}", object.display());
            Ok(())
        }
        Task::Test { args } => {
            packages::ensure(packages::TEST)?;
            setup()?;
            disk::warn_if_short(&target_dir(), TEST_BUILD_GIB, "a clean test build");
            let schemathesis = schemathesis::ensure(&target_dir())?;
            // The release artefacts for the dist:: tests, twice (the second
            // run, mostly from cargo's cache, must give the same bytes).
            let dist_dir = target_dir().join("tally-dist");
            let dist_again_dir = target_dir().join("tally-dist-again");
            dist::run(&dist::DistArgs::every_target(dist_dir.clone()))?;
            dist::run(&dist::DistArgs::every_target(dist_again_dir.clone()))?;
            let debian_root = dist::debian_root::ensure(dist::debian_root::Init::Systemd)?;
            let debian_openrc_root = dist::debian_root::ensure(dist::debian_root::Init::OpenRc)?;
            let mut cmd = Command::new("cargo");
            cmd.current_dir(workspace_root())
                .env("PATH", toolchain::path_with_cargo_bin()?)
                .env("TALLY_SCHEMATHESIS", schemathesis)
                .env("TALLY_DIST_DIR", dist_dir)
                .env("TALLY_DIST_AGAIN_DIR", dist_again_dir)
                .env("TALLY_DEBIAN_ROOT", debian_root)
                .env("TALLY_DEBIAN_OPENRC_ROOT", debian_openrc_root)
                .args(["test", "--workspace", "--exclude", "tally-agent-ebpf"]);
            if !args.is_empty() {
                cmd.arg("--").args(args);
            }
            // A documentation warning fails the run too, but does not keep
            // the tests from running (and their summary stays last).
            let docs = docs::check();
            let tests = testrun::run(&mut cmd).map(drop);
            // After the host's tests: the kernel and CPU matrix in VMs.
            let vms = vm::run(&vm::VmTestArgs::matrix());
            // After the tests, which built both binaries under target/debug.
            tests
                .and(vms)
                .and(docs)
                .and_then(|()| architecture::check())
        }
        Task::Lint { quick } => lint::run(quick),
        Task::Architecture { check: false } => architecture::write(),
        Task::Architecture { check: true } => architecture::check(),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Dist(args) => dist::run(&args),
        Task::VmTest(args) => vm::run(&args),
        Task::Demo(args) => {
            packages::ensure(packages::DEMO)?;
            demo::run(&args)
        }
        Task::Bench {
            which: BenchKind::Ebpf(args),
        } => bench::ebpf(&args),
        Task::Bench {
            which: BenchKind::Ingest(args),
        } => bench::ingest::run(&args),
    }
}
