//! A secured cluster (`deploy/test --secure`: SASL_SSL with SCRAM-SHA-512): without
//! credentials, or with wrong ones, the broker refuses the client, and millrace exits at
//! once with an error that says so. (The exactly-once crash test and the routing test run
//! on the same listener with `--kafka-config`.)

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_without(settings: Option<&std::path::Path>, s: &Setup) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_millrace"));
    cmd.args(["run", "--topology"]).arg(&s.topology)
        .args(["--bootstrap-servers", &bootstrap()])
        .arg("--state-dir").arg(s.state_dir())
        .args(["--http", "127.0.0.1:0", "--instance-id", "refused"]);
    if let Some(f) = settings {
        cmd.arg("--kafka-config").arg(f);
    }
    let out = cmd.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed())
}

#[test]
fn a_client_without_valid_credentials_is_refused_and_millrace_exits_saying_why() {
    let Some(good) = kafka_config() else {
        eprintln!("skipped: MILLRACE_TEST_KAFKA_CONFIG is not set; `deploy/test --secure` runs this on the SASL_SSL listener");
        return;
    };
    let s = Setup::new("secure", 1, "json");
    // No settings at all: a plaintext client on a SASL_SSL port.
    let (code, err, took) = run_without(None, &s);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the Kafka cluster at") && err.contains("--kafka-config"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The right TLS settings but a wrong password: SASL refuses it, and the error says so.
    let text = std::fs::read_to_string(&good).unwrap();
    let wrong: String = text
        .lines()
        .map(|l| if l.starts_with("sasl.password=") { "sasl.password=not-the-password".to_string() } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    let file = s.dir.path().join("wrong.properties");
    std::fs::write(&file, wrong).unwrap();
    let (code, err, _) = run_without(Some(&file), &s);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.to_lowercase().contains("authentication"), "{err}");
    assert!(!err.contains("not-the-password"), "the password is never printed: {err}");
    // With the right settings the same topology runs and answers.
    let inst = s.start();
    assert_eq!(inst.get("/ready").0, 200);
    assert!(inst.terminate().success());
}
