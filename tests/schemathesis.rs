//! The HTTP API keeps its contract (issue 10, item 5): schemathesis (PyPI; deploy/test
//! installs it) generates requests for every route of the served /openapi.json against a
//! live instance on the real broker, with tokens on, and runs every check it has: no
//! server error (tests/fixtures/schemathesis.toml allows the one 503 that is by design),
//! every answer's status, content type and body as documented, authentication enforced.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789abcdef";

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let Ok(st) = std::env::var("MILLRACE_SCHEMATHESIS") else {
        eprintln!("skipped: MILLRACE_SCHEMATHESIS (the schemathesis command) is not set; deploy/test installs it and sets it");
        return;
    };
    let s = Setup::new("schemathesis", 2, "json");
    let tokens = s.dir.path().join("tokens");
    std::fs::write(&tokens, format!("read read-token-0123456789abcdef\nadmin {ADMIN}\n")).unwrap();
    let mut i = Instance::spawn_with(&s, "i0", &s.state_dir(), &[std::ffi::OsStr::new("--http-tokens"), tokens.as_os_str()]);
    i.wait_ready();
    // The documented examples (customer ada) exist, so generated requests reach the
    // handlers' logic, not only their 404s.
    let p = producer();
    send(&p, &s.commands, "ada", &command_json("seed-ada", "ada", None, "CreateCustomer", json!({"name": "Ada", "email": "ada@example.org"})), &[]);
    flush(&p);
    wait_for(&s.replies, 1, Duration::from_secs(60));

    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schemathesis.toml");
    let out = std::process::Command::new(&st)
        .args(["--config-file", config, "run", &format!("http://{}/openapi.json", i.http)])
        .args(["--checks", "all", "--max-examples", "25", "--generation-deterministic", "--request-timeout", "70"])
        .args(["-H", &format!("Authorization: Bearer {ADMIN}")])
        .env("NO_COLOR", "1")
        // Its example cache goes with the test's directory, not into the checkout.
        .current_dir(s.dir.path())
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success(), "schemathesis found failures (report above); instance log:\n{}", i.log_text());
    // Every operation but the document itself (schemathesis leaves /openapi.json out).
    assert!(report.contains("13 selected / 13 total") && report.contains("Tested: 13"), "every route was tested:\n{report}");
}
