//! The `.deb` and `.rpm` packages: their names and fields, the files they
//! install with their modes, the configuration files, the maintainer scripts
//! (an agent started only with a token), no dependencies (the binaries are
//! static); the `.rpm`s installed with `rpm --root` into an empty root put
//! the files where deploy/README.md says.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use tally_testkit::skip::skip;

use super::common::{VERSION, dist_dir, run_ok};

/// The architectures, as Debian and RPM name them.
const ARCHES: [(&str, &str); 2] = [("amd64", "x86_64"), ("arm64", "aarch64")];

/// Each package's files, with their modes.
const AGENT_FILES: [(&str, u32); 7] = [
    ("/etc/tally/agent.env", 0o644),
    ("/usr/bin/tally-agent", 0o755),
    ("/usr/lib/systemd/system/tally-agent-pin-dir.service", 0o644),
    ("/usr/lib/systemd/system/tally-agent.service", 0o644),
    ("/usr/lib/sysusers.d/tally-agent.conf", 0o644),
    ("/usr/lib/tmpfiles.d/tally-agent.conf", 0o644),
    ("/usr/share/doc/tally-agent/README.md", 0o644),
];
const COLLECTOR_FILES: [(&str, u32); 4] = [
    ("/etc/tally/collector.env", 0o600),
    ("/usr/bin/tally-collector", 0o755),
    ("/usr/lib/systemd/system/tally-collector.service", 0o644),
    ("/usr/share/doc/tally-collector/README.md", 0o644),
];

fn files_of(package: &str) -> &'static [(&'static str, u32)] {
    if package == "tally-agent" {
        &AGENT_FILES
    } else {
        &COLLECTOR_FILES
    }
}

/// The package's configuration file.
fn conffile(package: &str) -> &'static str {
    if package == "tally-agent" {
        "/etc/tally/agent.env"
    } else {
        "/etc/tally/collector.env"
    }
}

#[test]
fn debs_install_the_documented_files_and_scripts() {
    let Some(dist) = dist_dir("debs_install_the_documented_files_and_scripts") else {
        return;
    };
    for (arch, _) in ARCHES {
        for package in ["tally-agent", "tally-collector"] {
            let deb = dist.join(format!("{package}_{VERSION}-1_{arch}.deb"));
            let fields = run_ok(
                Command::new("dpkg-deb")
                    .arg("--show")
                    .arg("--showformat=${Package} ${Version} ${Architecture} [${Depends}]")
                    .arg(&deb),
            );
            assert_eq!(fields, format!("{package} {VERSION}-1 {arch} []"));

            // `dpkg-deb --contents`: mode, owner, size, date, time, path.
            let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
            let mut files: Vec<(String, String)> = contents
                .lines()
                .filter(|l| !l.starts_with('d'))
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f[5].trim_start_matches('.').to_owned(), f[0].to_owned())
                })
                .collect();
            files.retain(|(path, _)| !path.ends_with("/copyright"));
            files.sort();
            let expected: Vec<(String, String)> = files_of(package)
                .iter()
                .map(|(path, mode)| ((*path).to_owned(), ls_mode(*mode)))
                .collect();
            assert_eq!(files, expected, "{}", deb.display());
            assert!(contents.contains(&format!("usr/share/doc/{package}/copyright")));

            let control = tempfile::tempdir().expect("temp dir");
            run_ok(
                Command::new("dpkg-deb")
                    .arg("--control")
                    .arg(&deb)
                    .arg(control.path()),
            );
            let conffiles =
                fs::read_to_string(control.path().join("conffiles")).expect("conffiles");
            assert_eq!(conffiles.trim(), conffile(package));
            for script in ["postinst", "prerm", "postrm"] {
                let path = control.path().join(script);
                let mode = fs::metadata(&path).expect(script).permissions().mode();
                assert_eq!(mode & 0o777, 0o755, "{package} {script}");
                run_ok(Command::new("sh").arg("-n").arg(&path));
            }
            let postinst = fs::read_to_string(control.path().join("postinst")).expect("postinst");
            if package == "tally-agent" {
                assert!(
                    postinst.contains("[ -s /etc/tally/agent.token ]"),
                    "{postinst}"
                );
            } else {
                assert!(!postinst.contains("systemctl start"), "{postinst}");
            }
        }
    }
}

/// `0o644` as `ls -l` shows it: `-rw-r--r--`.
fn ls_mode(mode: u32) -> String {
    let mut text = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        text.push(if bits & 4 != 0 { 'r' } else { '-' });
        text.push(if bits & 2 != 0 { 'w' } else { '-' });
        text.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    text
}

fn rpm_query(rpm: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("rpm")
            .args(["--query", "--package"])
            .args(args)
            .arg(rpm),
    )
}

#[test]
fn rpms_install_the_documented_files_into_an_empty_root() {
    const TEST: &str = "rpms_install_the_documented_files_into_an_empty_root";
    let Some(dist) = dist_dir(TEST) else {
        return;
    };
    if Command::new("rpm").arg("--version").output().is_err() {
        skip(TEST, "rpm is not installed (Debian package `rpm`)");
        return;
    }
    for (_, arch) in ARCHES {
        for package in ["tally-agent", "tally-collector"] {
            let rpm = dist.join(format!("{package}-{VERSION}-1.{arch}.rpm"));
            let fields = rpm_query(
                &rpm,
                &["--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}"],
            );
            assert_eq!(fields, format!("{package} {VERSION} 1 {arch}"));
            let listed: Vec<String> = rpm_query(&rpm, &["--list"])
                .lines()
                .map(str::to_owned)
                .collect();
            let expected: Vec<&str> = files_of(package).iter().map(|(p, _)| *p).collect();
            assert_eq!(listed, expected, "{}", rpm.display());
            assert_eq!(
                rpm_query(&rpm, &["--configfiles"]).trim(),
                conffile(package)
            );
            // Static binaries: no library; only the shell of the scriptlets,
            // rpm's own features and the package's configuration file.
            let requires = rpm_query(&rpm, &["--requires"]);
            for line in requires.lines() {
                assert!(
                    line == "/bin/sh"
                        || line.starts_with("rpmlib(")
                        || line == format!("config({package}) = {VERSION}-1"),
                    "{package} requires {line}"
                );
            }
            let scripts = rpm_query(&rpm, &["--scripts"]);
            for scriptlet in ["postinstall", "preuninstall", "postuninstall"] {
                assert!(
                    scripts.contains(scriptlet),
                    "{package}: no {scriptlet}:\n{scripts}"
                );
            }
            if package == "tally-agent" {
                assert!(
                    scripts.contains("[ -s /etc/tally/agent.token ]"),
                    "{scripts}"
                );
            }

            let root = tempfile::tempdir().expect("temp dir");
            let root_arg = root.path().to_str().expect("UTF-8 path");
            run_ok(Command::new("rpm").args(["--root", root_arg, "--initdb"]));
            run_ok(
                Command::new("rpm")
                    .args(["--root", root_arg, "--install", "--nodeps", "--noscripts"])
                    .args(["--ignorearch", "--nosignature"])
                    .arg(&rpm),
            );
            for (path, mode) in files_of(package) {
                let installed = root.path().join(path.trim_start_matches('/'));
                let meta = fs::metadata(&installed)
                    .unwrap_or_else(|e| panic!("{package} did not install {path}: {e}"));
                assert_eq!(meta.permissions().mode() & 0o7777, *mode, "{path}");
            }
        }
    }
}
