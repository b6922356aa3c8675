//! `impersonate-proxy demo` as a user runs it: a subprocess that prints
//! its table (its warnings go to the log file it names, not between the
//! rows), serves curl, and exits cleanly on Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(unix)]
#[test]
fn demo_prints_its_table_serves_curl_and_exits_on_sigint() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_impersonate-proxy"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let curl_line = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("demo did not finish its table:\n{}", out.join("\n")));
        out.push(line.clone());
        if line.trim_start().starts_with("curl ") {
            break line;
        }
    };
    let text = out.join("\n");
    let row = |n: &str| {
        out.iter()
            .find(|l| l.starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no row {n} in:\n{text}"))
            .clone()
    };
    assert!(
        row("1").contains("gcs-reader@")
            && row("1").contains("minted")
            && row("1").ends_with("200"),
        "{text}"
    );
    assert!(
        row("2").contains("HTTP/2") && row("2").contains("reused") && row("2").ends_with("200"),
        "{text}"
    );
    assert!(
        row("3").contains("gcs-writer@") && row("3").ends_with("200"),
        "{text}"
    );
    assert!(row("4").ends_with("403"), "{text}");
    assert!(row("5").ends_with("503"), "{text}");
    // A signed URL made through the sign_as route, fetched with no proxy
    // and no token: Storage served it as the signer.
    assert!(
        row("6").contains("gcs-reader@") && row("6").ends_with("200"),
        "{text}"
    );
    assert!(
        text.contains("X-Goog-Signature=") && text.contains("\"hello\\n\""),
        "{text}"
    );
    assert!(
        text.contains("Permission 'iam.serviceAccounts.getAccessToken' denied"),
        "{text}"
    );

    // The printed curl line works as printed.
    let args: Vec<&str> = curl_line.split_whitespace().skip(1).collect();
    let got = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(&args)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("curl is installed");
    let body = String::from_utf8_lossy(&got.stdout);
    assert!(
        got.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(
        body.contains("gcs-reader@demo-project.iam.gserviceaccount.com"),
        "{body}"
    );

    // Warnings go to the log file the header names, not between the rows.
    let log = out
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("warnings and logs"))
        .unwrap_or_else(|| panic!("the demo does not say where its warnings go:\n{text}"))
        .trim()
        .to_owned();

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "demo did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !stderr.contains("WARN"),
        "warnings on the terminal: {stderr}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("WARN") && logged.contains("billing-admin@"),
        "the refused mint's warning is not in {log}: {logged}"
    );
}
