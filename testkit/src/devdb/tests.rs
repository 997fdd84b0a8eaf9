//! Tests of the throwaway clusters.

use std::io::Write as _;

use super::*;

fn cluster(test: &str) -> Option<TempCluster> {
    start_or_skip(test)
}

async fn select_one(url: &str) -> Result<i32, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(one)
}

#[test]
fn urls_are_percent_encoded() {
    assert_eq!(percent_encode("/tmp/a b", true), "/tmp/a%20b");
    assert_eq!(percent_encode("a/b&c", false), "a%2Fb%26c");
    assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
}

#[test]
fn the_url_is_understood_by_sqlx() {
    let url =
        "postgres://postgres@localhost/my%20db?host=/tmp/x%20y/sock&port=23456&sslmode=disable";
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("parse");
    assert_eq!(
        options.get_socket(),
        Some(Path::new("/tmp/x y/sock").to_path_buf()).as_ref()
    );
    assert_eq!(options.get_port(), 23456);
    assert_eq!(options.get_database(), Some("my db"));
    assert_eq!(options.get_username(), "postgres");
}

#[test]
fn missing_binaries_say_where_and_how() {
    let e = check_binaries(Path::new("/nonexistent/pg/bin")).expect_err("no binaries there");
    assert!(e.is_unavailable());
    let text = e.to_string();
    assert!(text.contains("/nonexistent/pg/bin"), "{text}");
    assert!(text.contains("initdb, postgres"), "{text}");
    assert!(text.contains("apt install postgresql-15"), "{text}");
}

#[test]
fn settings_become_server_flags() {
    let args = TempCluster::builder()
        .fsync(true)
        .max_connections(42)
        .setting("shared_buffers", "64MB")
        .server_args(Path::new("/c"));
    let args = args.join(" ");
    assert!(args.contains("-c listen_addresses= "), "{args}");
    assert!(
        args.contains("-c fsync=on -c full_page_writes=on"),
        "{args}"
    );
    assert!(args.contains("-c max_connections=42"), "{args}");
    assert!(args.ends_with("-c shared_buffers=64MB"), "{args}");
    assert!(
        Builder::default()
            .server_args(Path::new("/c"))
            .join(" ")
            .contains("fsync=off")
    );
    let tls = TempCluster::builder()
        .tcp()
        .tls("cert", "key")
        .server_args(Path::new("/c"))
        .join(" ");
    assert!(tls.contains("-c listen_addresses=127.0.0.1 "), "{tls}");
    assert!(
        tls.contains("-c ssl=on -c ssl_cert_file=/c/server.crt -c ssl_key_file=/c/server.key"),
        "{tls}"
    );
}

#[tokio::test]
async fn no_other_local_user_gets_in() {
    let Some(cluster) = cluster("no_other_local_user_gets_in") else {
        return;
    };
    let mode = fs::metadata(cluster.socket_dir())
        .expect("socket dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "socket directory mode {mode:o}");
    assert_eq!(cluster.password().len(), 32);
    assert_eq!(
        select_one(&cluster.url("postgres"))
            .await
            .expect("with the password"),
        1
    );
    let without = cluster
        .url("postgres")
        .replace(&format!(":{}@", cluster.password()), "@");
    let error = select_one(&without)
        .await
        .expect_err("no password, no connection");
    let wrong = cluster
        .url("postgres")
        .replace(cluster.password(), "0123456789abcdef0123456789abcdef");
    let wrong_error = select_one(&wrong)
        .await
        .expect_err("a wrong password, no connection");
    assert!(
        wrong_error
            .to_string()
            .contains("password authentication failed"),
        "{wrong_error}"
    );
    eprintln!("without a password: {error}");
}

#[tokio::test]
async fn tcp_and_tls_when_asked() {
    let Some(pki) = crate::certs::Pki::new(&["localhost"]).ok() else {
        panic!("test certificates");
    };
    let cluster = match TempCluster::builder()
        .tcp()
        .tls(&pki.cert_pem, &pki.key_pem)
        .start()
    {
        Ok(cluster) => cluster,
        Err(e) if e.is_unavailable() => {
            crate::skip::skip(
                "tcp_and_tls_when_asked",
                &format!("needs PostgreSQL 15 binaries ({e})"),
            );
            return;
        }
        Err(e) => panic!("start: {e}"),
    };
    let url = format!(
        "{}?sslmode=require",
        cluster.tcp_url("postgres", "127.0.0.1")
    );
    let mut conn = PgConnection::connect(&url).await.expect("connect over TLS");
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "the connection is not encrypted");
}

#[tokio::test]
async fn survives_kill9_and_restarts_on_the_same_data() {
    let Some(mut cluster) = cluster("survives_kill9_and_restarts_on_the_same_data") else {
        return;
    };
    let url = cluster
        .create_database("app")
        .await
        .expect("create database");
    assert_eq!(select_one(&url).await.expect("select 1"), 1);
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .expect("write");

    cluster.kill9().expect("kill -9");
    assert!(!cluster.is_running());
    assert!(
        select_one(&url).await.is_err(),
        "the server still answers after kill -9"
    );
    drop(conn);

    cluster.restart().expect("restart after kill -9");
    assert_eq!(select_one(&url).await.expect("select 1 after restart"), 1);
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect after restart");
    let (n,): (i32,) = sqlx::query_as("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .expect("committed data survives kill -9");
    assert_eq!(n, 7);
    conn.close().await.expect("close");

    // A clean stop and start works too, and a second kill -9 as well.
    cluster.restart().expect("restart while running");
    cluster.kill9().expect("second kill -9");
    cluster.restart().expect("second restart");
    assert_eq!(select_one(&url).await.expect("select 1 at the end"), 1);
}

#[test]
fn drop_ends_every_server_process_and_removes_the_directory() {
    let Some(cluster) = cluster("drop_ends_every_server_process_and_removes_the_directory") else {
        return;
    };
    let postmaster = cluster.postmaster.as_ref().map(pid_of).expect("running");
    let mut pids = children_of(postmaster);
    assert!(!pids.is_empty(), "the postmaster has no children");
    pids.push(postmaster);
    let dir = cluster.dir.path().to_owned();
    drop(cluster);
    assert!(
        pids.iter().all(|&pid| !is_running(pid)),
        "left running: {pids:?}"
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
}

/// Not a test by itself: run in a child process by the two tests below.
/// Keeps a cluster in a `static` (never dropped), prints where it is,
/// then exits, or hangs until killed if `TALLY_DEVDB_HELPER=hang`.
#[test]
#[ignore = "a helper process for the exit tests"]
fn helper_keeps_a_static_cluster() {
    static KEPT: OnceLock<TempCluster> = OnceLock::new();
    let Ok(mode) = std::env::var("TALLY_DEVDB_HELPER") else {
        return;
    };
    let Some(cluster) = cluster("helper_keeps_a_static_cluster") else {
        return;
    };
    let cluster = KEPT.get_or_init(|| cluster);
    let pid = cluster.postmaster.as_ref().map(pid_of).unwrap_or_default();
    let mut out = io::stdout();
    let _ = writeln!(out, "CLUSTER {pid} {}", cluster.dir.path().display());
    let _ = out.flush();
    if mode == "hang" {
        thread::sleep(Duration::from_secs(60));
    }
}

/// Runs the helper above in a child process; returns it with the
/// postmaster's pid and the cluster's directory, or `None` if this
/// machine cannot run PostgreSQL.
fn run_helper(mode: &str) -> Option<(Child, i32, PathBuf)> {
    let available = check_binaries(&pg_bin_dir()).and(RunAs::for_current_user());
    if available.is_err() {
        // Says SKIP, or panics under TALLY_REQUIRE_PRIVILEGED=1.
        assert!(cluster(&format!("helper ({mode})")).is_none());
        return None;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .arg("devdb::tests::helper_keeps_a_static_cluster")
        .env("TALLY_DEVDB_HELPER", mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the helper");
    let mut stdout = io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while io::BufRead::read_line(&mut stdout, &mut line).expect("read") > 0 {
        // The test harness prints "test <name> ... " before it.
        if let Some((_, rest)) = line.trim_end().split_once("CLUSTER ") {
            let (pid, dir) = rest.split_once(' ').expect("pid and dir");
            // Keep reading, or the helper dies of a broken pipe.
            thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
            return Some((child, pid.parse().expect("pid"), PathBuf::from(dir)));
        }
        line.clear();
    }
    let status = child.wait();
    panic!("the helper printed no cluster ({status:?})");
}

#[test]
fn a_static_cluster_is_removed_at_exit() {
    let Some((mut helper, pid, dir)) = run_helper("exit") else {
        return;
    };
    let status = helper.wait().expect("wait for the helper");
    assert!(status.success(), "the helper failed: {status}");
    assert!(
        pid > 0 && !is_running(pid),
        "postmaster {pid} outlived the process"
    );
    assert!(!dir.exists(), "{} outlived the process", dir.display());
}

#[test]
fn the_server_of_a_killed_process_shuts_down() {
    let Some((mut helper, pid, dir)) = run_helper("hang") else {
        return;
    };
    assert!(
        is_running(pid),
        "the postmaster runs while the helper lives"
    );
    helper.kill().expect("SIGKILL the helper");
    helper.wait().expect("wait for the helper");
    let gone = wait_gone(&[pid], KILL_TIMEOUT);
    // Nobody is left to remove the files.
    let _ = fs::remove_dir_all(&dir);
    gone.expect("the postmaster shuts down when its process is killed");
}

#[test]
fn a_failed_start_quotes_the_server_log() {
    let Some(mut cluster) = cluster("a_failed_start_quotes_the_server_log") else {
        return;
    };
    cluster.stop().expect("stop");
    cluster.options = cluster.options.clone().setting("no_such_setting", "1");
    let e = cluster
        .restart()
        .expect_err("a bad setting must fail the start");
    let text = e.to_string();
    assert!(text.contains("no_such_setting"), "{text}");
    assert!(!cluster.is_running());
}
