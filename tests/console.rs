//! The console in a real browser (issue 14): two instances on the real broker, Debian's
//! chromium driven by Playwright (tests/browser/console.py; deploy/test installs both and
//! sets MILLRACE_PLAYWRIGHT_PYTHON). The script opens `/ui`, checks the topology and the
//! cluster, sends a command from the form, looks the key up on the other instance, asks
//! this harness to kill and restart that instance while it watches the partitions move
//! and come back, reads the dead letters, and repeats the read-only views with
//! JavaScript off. Screenshots of every step go to MILLRACE_CONSOLE_SHOTS (default
//! `$HOME/.cache/millrace/artifacts/console`).
//!
//! Also here, without a browser: the console's pages need the API's tokens, and a
//! person without one is sent to the sign-in form.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn shots_dir() -> std::path::PathBuf {
    match std::env::var_os("MILLRACE_CONSOLE_SHOTS") {
        Some(d) => d.into(),
        None => std::path::PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache/millrace/artifacts/console"),
    }
}

#[test]
fn the_console_shows_the_cluster_sends_a_command_and_follows_a_failover_in_a_browser() {
    let Ok(python) = std::env::var("MILLRACE_PLAYWRIGHT_PYTHON") else {
        eprintln!("skipped: MILLRACE_PLAYWRIGHT_PYTHON (a Python with Playwright) is not set; deploy/test installs it and sets it");
        return;
    };
    let s = Setup::new("console", 4, "json");
    let (dir_a, dir_b) = (s.dir.path().join("state-a"), s.dir.path().join("state-b"));
    let mut a = Instance::spawn(&s, "console-a", &dir_a);
    let mut b = Instance::spawn(&s, "console-b", &dir_b);
    a.wait_ready();
    b.wait_ready();
    // A record that is not a command: it goes to the dead letters, and the console lists it.
    let dead_key = unique("not-a-command");
    let p = producer();
    send(&p, &s.commands, &dead_key, b"this is not JSON", &[]);
    flush(&p);
    wait_for(&s.dead_letters, 1, Duration::from_secs(60));

    let key = unique("ada");
    let shots = shots_dir();
    let _ = std::fs::remove_dir_all(&shots);
    let mut script = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py"))
        .args(["--a", &a.http, "--b", &b.http, "--a-id", "console-a", "--b-id", "console-b"])
        .args(["--partitions", &s.partitions.to_string(), "--key", &key, "--dead-key", &dead_key])
        .arg("--shots").arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the browser script");
    let mut to_script = script.stdin.take().unwrap();
    let from_script = BufReader::new(script.stdout.take().unwrap());
    let mut said = Vec::new();
    let mut b_state = Some(b);
    for line in from_script.lines() {
        let line = line.unwrap();
        eprintln!("browser: {line}");
        match line.as_str() {
            "KILL" => {
                b_state.take().expect("B runs").kill9();
                writeln!(to_script, "killed").unwrap();
            }
            "RESTART" => {
                let mut again = Instance::spawn(&s, "console-b", &dir_b);
                again.wait_ready();
                writeln!(to_script, "started {}", again.http).unwrap();
                b_state = Some(again);
            }
            _ => {}
        }
        said.push(line);
    }
    let out = script.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.last().map(String::as_str) == Some("OK"),
        "the browser script failed ({}):\n{stderr}\nsaid:\n{}\ninstance A's log:\n{}",
        out.status,
        said.join("\n"),
        a.log_text()
    );
    for name in ["01-topology.png", "02-cluster.png", "03-command.png", "04-history.png", "05-moved.png", "06-back.png", "07-dead-letters.png", "08-no-javascript.png"] {
        let size = std::fs::metadata(shots.join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {name} saved ({size} bytes)");
    }
    eprintln!("screenshots in {}", shots.display());
}

#[test]
fn console_pages_need_the_api_tokens_and_send_people_to_sign_in() {
    let s = Setup::new("console-auth", 2, "json");
    let tokens = s.dir.path().join("tokens");
    std::fs::write(&tokens, "read read-token-0123456789abcdef\nwrite write-token-0123456789abcdef\n").unwrap();
    let mut i = Instance::spawn_with(&s, "i0", &s.state_dir(), &[std::ffi::OsStr::new("--http-tokens"), tokens.as_os_str()]);
    i.wait_ready();

    // No token: a page redirects to the sign-in form; the feeds answer 401 as the API does.
    let (status, headers, _) = http_get_with(&i.http, "/ui", &[]).unwrap();
    assert_eq!(status, 303);
    assert_eq!(headers.get("location").map(String::as_str), Some("/ui/login"));
    let (status, _, body) = http_get_with(&i.http, "/ui/instance.json", &[]).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = http_get_with(&i.http, "/ui/login", &[]).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains(r#"name="token""#));

    // The token as a cookie (what the sign-in form sets) or as a header.
    let cookie = [("Cookie", "millrace_token=read-token-0123456789abcdef")];
    let (status, _, body) = http_get_with(&i.http, "/ui", &cookie).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"data-node="customers""#), "the overview renders with a read token");
    let (status, _, body) = http_get_with(&i.http, "/ui/stores/customers", &[("Authorization", "Bearer read-token-0123456789abcdef")]).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http_get_with(&i.http, "/ui", &[("Cookie", "millrace_token=wrong-token-0123456789abcdef")]).unwrap();
    assert_eq!(status, 303, "a wrong token is sent to sign in again");

    // Sending a command from the console needs a write token, as the API does.
    let form = "aggregate=customer&id=ada&type=CreateCustomer&expected_version=&payload=%7B%22name%22%3A%22Ada%22%2C%22email%22%3A%22ada%40example.org%22%7D";
    let form_post = |token: &str, form: &str| {
        let cookie = format!("millrace_token={token}");
        http_post_with(&i.http, "/ui/commands", &[("Cookie", &cookie), ("Content-Type", "application/x-www-form-urlencoded")], form).unwrap()
    };
    assert_eq!(form_post("read-token-0123456789abcdef", form).0, 403);
    let (status, _, page) = form_post("write-token-0123456789abcdef", form);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(r#"<p class="notice ok" id="outcome">accepted, version 1</p>"#), "{page}");

    // A bad form is answered on the page, with a 400, and sends nothing.
    let (status, _, page) = form_post("write-token-0123456789abcdef", "aggregate=customer&id=bob&type=CreateCustomer&payload=%7Bnot+json");
    assert_eq!(status, 400);
    assert!(page.contains("the payload is not JSON"), "{page}");
}

/// Fault: an instance that stops answering (SIGSTOP) while the members directory still
/// counts it live. The overview waits for it at most its deadline, shows it unreachable
/// with the reason, and shows everything else.
#[test]
fn an_instance_that_does_not_answer_is_shown_unreachable_without_stalling_the_page() {
    let s = Setup::new("console-stopped", 4, "json");
    let mut a = Instance::spawn(&s, "console-a", &s.dir.path().join("state-a"));
    let mut b = Instance::spawn(&s, "console-b", &s.dir.path().join("state-b"));
    a.wait_ready();
    b.wait_ready();
    // Both listed before the fault (a learns of b from the members topic, a moment later).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, page) = http_get(&a.http, "/ui/live").unwrap();
        assert_eq!(status, 200);
        if page.matches(r#"<span class="badge ok">ready</span>"#).count() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "both instances ready on the overview: {page}");
        std::thread::sleep(Duration::from_millis(200));
    }

    b.stop();
    let asked = std::time::Instant::now();
    let answer = http_get(&a.http, "/ui/live");
    let took = asked.elapsed();
    b.resume();
    let (status, page) = answer.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(took < Duration::from_secs(3), "the page waited {took:?} for a stopped instance");
    assert!(
        page.contains(r#"<tr><td>console-b</td>"#) && page.contains("unreachable") && page.contains("no answer within 800 ms"),
        "the stopped instance is shown unreachable, with why: {page}"
    );
    assert!(page.contains(r#"<tr><td>console-a</td>"#) && page.contains(r#"data-node="customers""#), "the rest is shown: {page}");
}
