//! The tarballs, the SBOMs and the checksum list: the files INSTALL names
//! with their modes, owned by 0/0 at `SOURCE_DATE_EPOCH`; CycloneDX SBOMs
//! that name the crates the binaries are built from; `SHA256SUMS` that
//! `sha256sum --check` accepts; and the same bytes from a second run.

use std::{fs, process::Command};

use super::common::{
    BINARIES, TARGETS, VERSION, dir_from, dist_dir, files_under, run_ok, tarball, unpack,
};

/// What each tarball holds, under its top directory.
const CONTENTS: [&str; 15] = [
    "INSTALL",
    "install.sh",
    "openrc/tally-agent",
    "openrc/tally-collector",
    "sbom/tally-agent.cdx.json",
    "sbom/tally-collector.cdx.json",
    "systemd/tally-agent-pin-dir.service",
    "systemd/tally-agent.env.example",
    "systemd/tally-agent.service",
    "systemd/tally-agent.sysusers",
    "systemd/tally-agent.tmpfiles",
    "systemd/tally-collector.env.example",
    "systemd/tally-collector.service",
    "tally-agent",
    "tally-collector",
];

#[test]
fn tarballs_hold_the_binaries_units_and_install_text() {
    let Some(dist) = dist_dir("tarballs_hold_the_binaries_units_and_install_text") else {
        return;
    };
    for (target, _) in TARGETS {
        let path = tarball(&dist, target);
        let unpacked = unpack(&path);
        assert_eq!(files_under(&unpacked.top), CONTENTS, "{}", path.display());

        // Every entry: owner 0/0, one time stamp, executables 0755 and the
        // rest 0644 (directories 0755).
        let listing = run_ok(
            Command::new("tar")
                .args(["--list", "--verbose", "--numeric-owner", "--file"])
                .arg(&path),
        );
        let mut stamps: Vec<String> = Vec::new();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (mode, owner, name) = (fields[0], fields[1], fields[fields.len() - 1]);
            assert_eq!(owner, "0/0", "{line}");
            let executable = BINARIES.iter().any(|b| name.ends_with(&format!("/{b}")))
                || name.ends_with("/install.sh")
                || name.contains("/openrc/");
            let expected = if mode.starts_with('d') || executable {
                "rwxr-xr-x"
            } else {
                "rw-r--r--"
            };
            assert_eq!(&mode[1..], expected, "{line}");
            stamps.push(format!("{} {}", fields[3], fields[4]));
        }
        stamps.dedup();
        assert_eq!(
            stamps.len(),
            1,
            "one time stamp for every entry: {stamps:?}"
        );

        let install = fs::read_to_string(unpacked.top.join("INSTALL")).expect("INSTALL");
        for name in CONTENTS
            .iter()
            .filter(|n| n.starts_with("systemd/") || n.starts_with("openrc/"))
        {
            assert!(install.contains(name), "INSTALL does not name {name}");
        }
    }
}

#[test]
fn sboms_name_what_the_binaries_are_built_from() {
    let Some(dist) = dist_dir("sboms_name_what_the_binaries_are_built_from") else {
        return;
    };
    for (target, _) in TARGETS {
        for (binary, crates) in [
            ("tally-agent", ["aya", "tally-agent-ebpf", "tonic", "ring"]),
            (
                "tally-collector",
                ["sqlx-postgres", "axum", "tonic", "ring"],
            ),
        ] {
            let path = dist.join(format!("{binary}-{VERSION}-{target}.cdx.json"));
            let text = fs::read_to_string(&path).expect("the SBOM beside the tarball");
            let sbom: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(sbom["bomFormat"], "CycloneDX", "{}", path.display());
            assert_eq!(sbom["metadata"]["component"]["name"], binary);
            assert_eq!(sbom["metadata"]["component"]["version"], VERSION);
            let names: Vec<&str> = sbom["components"]
                .as_array()
                .expect("components")
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            for name in crates {
                assert!(
                    names.contains(&name),
                    "{} does not list {name}",
                    path.display()
                );
            }
            let unpacked = unpack(&tarball(&dist, target));
            let inside = unpacked.top.join("sbom").join(format!("{binary}.cdx.json"));
            assert_eq!(
                fs::read_to_string(inside).expect("SBOM in the tarball"),
                text
            );
        }
    }
}

#[test]
fn sha256sums_cover_every_artefact() {
    let Some(dist) = dist_dir("sha256sums_cover_every_artefact") else {
        return;
    };
    run_ok(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(&dist),
    );
    let sums = fs::read_to_string(dist.join("SHA256SUMS")).expect("SHA256SUMS");
    let listed: Vec<&str> = sums.lines().filter_map(|l| l.split("  ").nth(1)).collect();
    let mut present: Vec<String> = files_under(&dist);
    present.retain(|name| name != "SHA256SUMS");
    assert_eq!(listed, present);
    // Per target: the tarball, two SBOMs, two .debs, two .rpms; the image.
    assert_eq!(listed.len(), TARGETS.len() * 7 + 1, "{listed:?}");
}

#[test]
fn a_second_run_gives_the_same_bytes() {
    const TEST: &str = "a_second_run_gives_the_same_bytes";
    let (Some(first), Some(second)) = (dist_dir(TEST), dir_from("TALLY_DIST_AGAIN_DIR", TEST))
    else {
        return;
    };
    let names = files_under(&first);
    assert_eq!(names, files_under(&second));
    for name in names {
        let a = fs::read(first.join(&name)).expect("read");
        let b = fs::read(second.join(&name)).expect("read");
        assert!(
            a == b,
            "{name} differs between two runs of `cargo xtask dist`"
        );
    }
}
