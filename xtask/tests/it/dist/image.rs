//! The OCI image (`tally-<version>-oci.tar`, built by buildah): one image
//! index named `tally:<version>` with an image for amd64 and one for arm64;
//! each runs as 65532:65532 with /usr/local/bin on its PATH, carries the
//! OCI labels, and holds one layer with exactly the two binaries, byte for
//! byte the static ones of the same CPU's tarball. The Kubernetes manifests
//! name this image.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::common::{BINARIES, TARGETS, VERSION, dist_dir, run_ok, tarball, unpack};

/// A blob of the OCI layout under `dir`, as JSON.
fn blob_json(dir: &Path, digest: &str) -> Value {
    let text = fs::read_to_string(blob_path(dir, digest)).expect("a blob");
    serde_json::from_str(&text).expect("JSON")
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    dir.join("blobs/sha256").join(hex)
}

#[test]
fn the_image_holds_the_static_binaries_for_both_cpus() {
    let Some(dist) = dist_dir("the_image_holds_the_static_binaries_for_both_cpus") else {
        return;
    };
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(dist.join(format!("tally-{VERSION}-oci.tar")))
            .arg("--directory")
            .arg(layout.path()),
    );
    let dir = layout.path();
    let index: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("index.json")).expect("index.json"))
            .expect("JSON");
    let refs = index["manifests"].as_array().expect("manifests");
    assert_eq!(refs.len(), 1, "{index}");
    assert_eq!(
        refs[0]["annotations"]["org.opencontainers.image.ref.name"],
        format!("tally:{VERSION}")
    );
    let image_index = blob_json(dir, refs[0]["digest"].as_str().expect("digest"));
    let images = image_index["manifests"].as_array().expect("an image index");
    let mut arches: Vec<&str> = images
        .iter()
        .map(|m| {
            m["platform"]["architecture"]
                .as_str()
                .expect("architecture")
        })
        .collect();
    arches.sort_unstable();
    assert_eq!(arches, ["amd64", "arm64"]);

    for image in images {
        let arch = image["platform"]["architecture"].as_str().expect("arch");
        let target = if arch == "amd64" {
            TARGETS[0].0
        } else {
            TARGETS[1].0
        };
        let manifest = blob_json(dir, image["digest"].as_str().expect("digest"));
        let config = blob_json(dir, manifest["config"]["digest"].as_str().expect("config"));
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["User"], "65532:65532", "{config}");
        // No entrypoint: the manifests give the command; alone, it says how.
        assert!(
            config["config"]["Entrypoint"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{config}"
        );
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!(["tally-collector", "--help"]),
            "{config}"
        );
        let env = config["config"]["Env"].as_array().expect("Env");
        assert!(env.iter().any(|e| e == "PATH=/usr/local/bin"), "{config}");
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.title"], "tally");
        assert!(
            labels["org.opencontainers.image.revision"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{config}"
        );

        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{manifest}");
        let rootfs = tempfile::tempdir().expect("temp dir");
        run_ok(
            Command::new("tar")
                .arg("--extract")
                .arg("--file")
                .arg(blob_path(
                    dir,
                    layers[0]["digest"].as_str().expect("digest"),
                ))
                .arg("--directory")
                .arg(rootfs.path()),
        );
        let files = super::common::files_under(rootfs.path());
        assert_eq!(
            files,
            ["usr/local/bin/tally-agent", "usr/local/bin/tally-collector"],
            "{arch}"
        );
        let unpacked = unpack(&tarball(&dist, target));
        for binary in BINARIES {
            let in_image =
                fs::read(rootfs.path().join("usr/local/bin").join(binary)).expect("read");
            let in_tarball = fs::read(unpacked.top.join(binary)).expect("read");
            assert!(
                in_image == in_tarball,
                "{arch} {binary} differs from the tarball's"
            );
        }
    }
}

#[test]
fn kubernetes_manifests_name_the_image() {
    let kubernetes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut images = Vec::new();
    for entry in fs::read_dir(&kubernetes)
        .expect("deploy/kubernetes")
        .flatten()
    {
        let text = fs::read_to_string(entry.path()).expect("read");
        for line in text.lines() {
            if let Some(image) = line.trim().strip_prefix("image:") {
                images.push(image.trim().to_owned());
            }
        }
    }
    assert_eq!(
        images.len(),
        2,
        "the agent's and the collector's: {images:?}"
    );
    for image in images {
        assert!(
            image.ends_with(&format!("/tally:{VERSION}")),
            "{image} is not <registry>/tally:{VERSION}, the image `cargo xtask dist` builds"
        );
    }
}
