//! A headless Chromium driven through WebDriver (`chromedriver` +
//! fantoccini), for the dashboard's tests; and where their screenshots go.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`,
//! `/usr/bin/chromedriver`; `TALLY_CHROMIUM` / `TALLY_CHROMEDRIVER` point
//! elsewhere). Without them the tests skip and say why; with
//! `TALLY_REQUIRE_PRIVILEGED=1` (as CI sets it) they fail instead.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tally_testkit::skip::skip;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A WebDriver session on a headless Chromium of its own. Dropping it ends
/// chromedriver and every browser process it started.
pub struct Browser {
    pub client: Client,
    driver: Driver,
}

/// The chromedriver process, leader of its own process group (the browser
/// processes join that group): the whole group is killed on drop.
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Ok(group) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with the negated id of a group this test created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn binary(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with a
    /// `width`×`height` window; `None` (after saying `SKIP`) when either is
    /// missing.
    pub async fn start(test: &str, width: u32, height: u32) -> Option<Browser> {
        Self::start_with(test, width, height, false).await
    }

    /// As [`Browser::start`]; with `accept_insecure_certs`, pages are
    /// loaded over HTTPS whatever authority signed the server's certificate
    /// (a test's own).
    pub async fn start_with(
        test: &str,
        width: u32,
        height: u32,
        accept_insecure_certs: bool,
    ) -> Option<Browser> {
        let chromium = binary("TALLY_CHROMIUM", CHROMIUM);
        let chromedriver = binary("TALLY_CHROMEDRIVER", CHROMEDRIVER);
        for (path, package) in [(&chromium, "chromium"), (&chromedriver, "chromium-driver")] {
            if !path.is_file() {
                skip(
                    test,
                    &format!("needs {} (apt install {package})", path.display()),
                );
                return None;
            }
        }
        let (driver, port) = start_driver(&chromedriver);
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--no-first-run",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        capabilities.insert("acceptInsecureCerts".into(), json!(accept_insecure_certs));
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session on chromedriver");
        Some(Browser { client, driver })
    }

    /// Ends the session (closing the browser) and chromedriver.
    pub async fn finish(self) {
        let Browser { client, driver } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        drop(driver);
    }

    /// Runs `script` (a function body; `return` its answer) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until `done` accepts its answer, for at most
    /// `timeout`; the last answer.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.js(script).await;
            if done(&answer) {
                return answer;
            }
            if Instant::now() > deadline {
                panic!("waited {timeout:?} for {what}; last answer: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of what the window shows as `name` in the test
    /// artefacts folder, and says where (past the harness's capture); its
    /// path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let folder = artefacts();
        std::fs::create_dir_all(&folder).expect("the artefacts folder");
        let path = folder.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "screenshot: {}", path.display());
        path
    }
}

/// Starts chromedriver in a process group of its own and reads the port it
/// chose from its first lines.
fn start_driver(chromedriver: &Path) -> (Driver, u16) {
    let mut child = Command::new(chromedriver)
        .args(["--port=0", "--log-level=WARNING"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start chromedriver");
    let stdout = child.stdout.take().expect("chromedriver's stdout");
    let driver = Driver { child };
    let (found, port) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok())
                && let Some(found) = found.take()
            {
                let _ = found.send(port);
            }
        }
    });
    let port = port
        .recv_timeout(Duration::from_secs(20))
        .expect("chromedriver says on which port it listens");
    (driver, port)
}

/// `target/test-artefacts`, beside the build's other outputs.
pub fn artefacts() -> PathBuf {
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .and_then(|tmp| tmp.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artefacts")
}
