//! The binary's contract for bad input: a bad topology file prints file:line:col and what
//! was expected, and exits with code 2. No broker needed.

use std::process::Command;

fn millrace(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_millrace")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_shipped_topology_validates() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/topology")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let (code, err) = millrace(&["validate", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        for (format, head) in [("text", "Topology "), ("dot", "digraph "), ("mermaid", "flowchart LR")] {
            let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
                .args(["describe", path.to_str().unwrap(), "--format", format])
                .output()
                .unwrap();
            assert!(out.status.success(), "describe --format {format} {}", path.display());
            assert!(String::from_utf8_lossy(&out.stdout).starts_with(head), "describe --format {format}");
        }
    }
}

#[test]
fn unknown_key_exits_2_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml")).unwrap();
    let bad = good.replace("  commit_interval_ms: 100\n", "  commit_interval_ms: 100\n  comit_every: 5\n");
    let line = bad.lines().position(|l| l.contains("comit_every")).unwrap() + 1;
    std::fs::write(&file, bad).unwrap();
    for verb in [&["validate"][..], &["run", "--topology"][..]] {
        let mut args = verb.to_vec();
        args.push(file.to_str().unwrap());
        let (code, err) = millrace(&args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&format!("{}:{line}:3", file.display())), "{err}");
        assert!(err.contains("unknown field `comit_every`, expected one of `commit_interval_ms`, `max_batch_records`"), "{err}");
    }
}

#[test]
fn unregistered_aggregate_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml")).unwrap();
    std::fs::write(&file, good.replace("aggregate: customer", "aggregate: custard")).unwrap();
    let (code, err) = millrace(&["run", "--topology", file.to_str().unwrap(), "--bootstrap-servers", "127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no aggregate is registered as \"custard\""), "{err}");
    let line = good.lines().position(|l| l.contains("aggregate: customer")).unwrap() + 1;
    assert!(err.contains(&format!("{}:{line}:16", file.display())), "{err}");
    assert!(err.contains("[\"customer\", \"order\", \"product\"]"), "{err}");
}

#[test]
fn missing_file_exits_2() {
    let (code, err) = millrace(&["validate", "/nonexistent/topology.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/topology.yaml: cannot read"), "{err}");
}

/// Settings that would silently break exactly-once or partitioning are refused before
/// anything connects: exit 2, and the message names the key and where it came from.
#[test]
fn unsafe_kafka_settings_exit_2_naming_the_key() {
    let topology = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = ["run", "--topology", topology, "--bootstrap-servers", "127.0.0.1:1", "--state-dir", state.to_str().unwrap()];
    for (flag, key) in [
        ("--consumer-config", "isolation.level"),
        ("--consumer-config", "enable.auto.commit"),
        ("--consumer-config", "partition.assignment.strategy"),
        ("--producer-config", "partitioner"),
        ("--producer-config", "transactional.id"),
    ] {
        let setting = format!("{key}=x");
        let mut args = base.to_vec();
        args.extend([flag, setting.as_str()]);
        let (code, err) = millrace(&args);
        assert_eq!(code, 2, "{flag} {key}: {err}");
        assert!(err.contains(&format!("Kafka setting \"{key}\" ({flag}) cannot be overridden")), "{err}");
    }
    // The same through a properties file (--kafka-config), which every client applies.
    let props = dir.path().join("client.properties");
    std::fs::write(&props, "# TLS and SASL\nsecurity.protocol=SASL_SSL\nisolation.level=read_uncommitted\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--kafka-config", props.to_str().unwrap()]);
    let (code, err) = millrace(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("Kafka setting \"isolation.level\" ({}) cannot be overridden", props.display())), "{err}");
    // A line that is not a setting names the file and line, and never echoes a secret.
    std::fs::write(&props, "security.protocol=SASL_SSL\nsasl.password hunter2\n").unwrap();
    let (code, err) = millrace(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:2: expected `key=value`", props.display())) && !err.contains("hunter2"), "{err}");
    let (code, err) = millrace(&["plan", topology, "--bootstrap-servers", "127.0.0.1:1", "--kafka-config", props.to_str().unwrap()]);
    assert_eq!(code, 2, "plan reads the same file: {err}");
}

/// `MILLRACE_LOG_FORMAT=json`: every line on stderr is one JSON object, with the event's
/// fields at the top level, down to the reason the run stops; an unknown format is
/// refused with exit code 2.
#[test]
fn json_logs_are_one_object_a_line() {
    let state = tempfile::tempdir().unwrap();
    let topology = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml");
    let run = |format: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["run", "--topology", topology, "--bootstrap-servers", "127.0.0.1:1", "--http", "127.0.0.1:0"])
            .arg("--state-dir").arg(state.path())
            .env("MILLRACE_LOG_FORMAT", format)
            .output()
            .unwrap()
    };
    let out = run("json");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    let starting = lines.iter().find(|l| l["fields"].is_null() && l["message"] == "starting").unwrap_or_else(|| panic!("{stderr}"));
    assert!(starting["instance"].is_string() && starting["level"] == "INFO", "{starting}");
    let stop = lines.iter().find(|l| l["message"] == "the instance stops").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(stop["level"], "ERROR");
    assert!(stop["error"].as_str().unwrap().contains("cannot reach the Kafka cluster at 127.0.0.1:1"), "{stop}");

    let out = run("xml");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MILLRACE_LOG_FORMAT=\"xml\": expected text or json"));
}

/// HTTP security files that cannot be used stop the start with exit code 2, naming the
/// file (and the line, for tokens), before any Kafka client is made.
#[test]
fn unusable_tokens_or_certificate_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let topology = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers.yaml");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "read rrrrrrrrrrrrrrrr\nroot xxxxxxxxxxxxxxxx\n").unwrap();
    let base = ["run", "--topology", topology, "--bootstrap-servers", "127.0.0.1:1", "--http", "127.0.0.1:0"];
    let (code, err) = millrace(&[&base[..], &["--http-tokens", tokens.to_str().unwrap()]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("{}:2: unknown scope \"root\"", tokens.display())), "{err}");
    let missing = dir.path().join("no-such.pem");
    let (code, err) = millrace(&[&base[..], &["--http-tls-cert", missing.to_str().unwrap(), "--http-tls-key", missing.to_str().unwrap()]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

/// The read side's bad input, refused before anything connects: no database URL for a
/// topology with projections, an unusable one, a projection the binary does not register,
/// and the rebuild commands pointed at nodes that do not exist. Each exits 2 and says what
/// to give instead.
#[test]
fn read_side_misconfiguration_exits_2_and_names_the_fix() {
    let postgres = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/customers-postgres.yaml");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["run", "--topology", postgres, "--bootstrap-servers", "127.0.0.1:1"])
            .args(extra)
            .env_remove("MILLRACE_POSTGRES_URL")
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the topology has a read side (projections and outboxes: customer-rows, notifications)") && err.contains("--postgres-url"), "{err}");
    assert!(err.contains("--run processing"), "the way to run without the read side: {err}");
    let (code, err) = run(&["--postgres-url", "postgres://u@127.0.0.1:notaport/db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the PostgreSQL URL is not usable"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registered.yaml");
    let text = std::fs::read_to_string(postgres).unwrap();
    std::fs::write(&file, text.replace("projections:\n", "projections:\n  ledger:\n    from: [customer-events]\n    projection: ledger\n")).unwrap();
    let (code, err) = millrace(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 0, "the file itself is valid: {err}");
    let (code, err) = millrace(&["run", "--topology", file.to_str().unwrap(), "--bootstrap-servers", "127.0.0.1:1", "--postgres-url", "postgres://u@127.0.0.1:1/db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("projection ledger: no projection is registered as \"ledger\""), "{err}");

    let (code, err) = millrace(&["rebuild", "--topology", postgres, "--store", "nope", "--bootstrap-servers", "127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no aggregate keeps its snapshots in store \"nope\"; the aggregate stores are [\"customers\"]"), "{err}");
    let (code, err) = millrace(&["projection", "rebuild", "nope", "--topology", postgres, "--bootstrap-servers", "127.0.0.1:1", "--postgres-url", "postgres://u@127.0.0.1:1/db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the topology has no projection \"nope\"; it has [\"customer-rows\"]"), "{err}");
}
