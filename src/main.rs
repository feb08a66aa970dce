//! The `millrace` binary: the only place that reads argv and the environment.
//!
//! Exit codes:
//! - 0: clean shutdown;
//! - 1: runtime failure: a processing thread died (a fatal error, or a transient one that
//!   did not pass within its retry budget; `/health` answers 503 while the instance stops),
//!   or a shutdown did not finish within `--shutdown-timeout`. An orchestrator should
//!   restart it;
//! - 2: bad topology, arguments or Kafka settings (a setting that would break exactly-once
//!   or partitioning is named);
//! - 3: `plan` found mismatches that need a human.

use clap::{Parser, Subcommand};
use millrace::runtime::{Run, RuntimeError};
use millrace::{topology, App, AppConfig};
use std::path::PathBuf;
use std::process::ExitCode;

// The hot path allocates and frees many short-lived buffers per record (decoded commands,
// encoded snapshots, output records); glibc malloc spent a fifth of the processing
// thread's time there and in page faults. The `override` feature makes mimalloc the
// process's `malloc` too, so librdkafka and RocksDB use it: under glibc their threads
// spread over per-thread arenas that never give freed memory back (three arenas held
// 100 MiB of a 180 MiB peak in `deploy/bench`). `no_thp` keeps mimalloc from asking for
// transparent huge pages, which round every touched region up to 2 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Memory freed by a transaction's buffers goes back to the OS after 5 ms instead of
/// mimalloc's default second: at the commit interval, a second held ten transactions'
/// garbage. Measured with `deploy/bench 300000`: peak RSS 222-228 MiB at the default,
/// 151-152 MiB at 5 ms. `MIMALLOC_PURGE_DELAY` still overrides it.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option before any other thread exists.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 5) };
    }
}

#[derive(Parser)]
#[command(name = "millrace", version, about = "Event sourcing on Apache Kafka, exactly once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a topology: join the group, process commands, serve queries.
    Run {
        /// The topology file (YAML).
        #[arg(long, env = "MILLRACE_TOPOLOGY")]
        topology: PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long, env = "MILLRACE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        /// Directory for RocksDB stores.
        #[arg(long, env = "MILLRACE_STATE_DIR", default_value = "./state")]
        state_dir: PathBuf,
        /// HTTP listen address; overrides the topology's `http.listen`.
        #[arg(long, env = "MILLRACE_HTTP")]
        http: Option<String>,
        /// Address other instances reach this one's HTTP server at (`host:port`), for
        /// forwarded queries. Default: the listen address.
        #[arg(long, env = "MILLRACE_ADVERTISED_HTTP")]
        advertised_http: Option<String>,
        /// Stable instance id (transactional id and static group member id). Default: the
        /// host name and a hash of the state directory, stable across restarts and
        /// different for two instances sharing a host.
        #[arg(long, env = "MILLRACE_INSTANCE_ID")]
        instance_id: Option<String>,
        /// librdkafka settings for every Kafka client of the process (TLS, SASL, ...): a
        /// properties file, `key=value` a line.
        #[arg(long, env = "MILLRACE_KAFKA_CONFIG")]
        kafka_config: Option<PathBuf>,
        /// Extra librdkafka setting for the group consumer only, `key=value`; repeatable.
        #[arg(long = "consumer-config", value_parser = key_value)]
        consumer_config: Vec<(String, String)>,
        /// Extra librdkafka setting for the transactional producers only, `key=value`; repeatable.
        #[arg(long = "producer-config", value_parser = key_value)]
        producer_config: Vec<(String, String)>,
        #[command(flatten)]
        http_args: HttpArgs,
        /// PostgreSQL for the topology's projections, `postgres://user:password@host:port/db`.
        /// Never in the topology file: it holds a password.
        #[arg(long, env = "MILLRACE_POSTGRES_URL", hide_env_values = true)]
        postgres_url: Option<String>,
        /// Which side of the topology this process runs: all, processing (no projections)
        /// or read-side (projections only), to scale and restart them apart.
        #[arg(long = "run", env = "MILLRACE_RUN", default_value = "all", value_parser = ["all", "processing", "read-side"])]
        run: String,
        /// Seconds a shutdown (SIGTERM, Ctrl-C) may take to commit what was processed and
        /// leave the group. Past them the process exits with code 1, as after a crash: the
        /// next start aborts what it left open and restores only the stores' tails. Keep it
        /// under the orchestrator's grace period (Kubernetes: 30 s by default).
        #[arg(long, env = "MILLRACE_SHUTDOWN_TIMEOUT", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
        shutdown_timeout: u64,
    },
    /// Check a topology file; prints file:line:col and what was expected on error.
    Validate { file: PathBuf },
    /// Print the HTTP API's OpenAPI 3.1 document (as served at /openapi.json).
    Openapi,
    /// Draw a topology: sub-topologies, sources, processors, stores, sinks, internal topics.
    Describe {
        file: PathBuf,
        /// text, dot (Graphviz) or mermaid.
        #[arg(long, default_value = "text", value_parser = ["text", "dot", "mermaid"])]
        format: String,
    },
    /// Compare a topology with the live cluster: topics to create, mismatches, orphans.
    Plan {
        file: PathBuf,
        #[arg(long, env = "MILLRACE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        /// librdkafka settings for the admin client (TLS, SASL, ...), as for `run`.
        #[arg(long, env = "MILLRACE_KAFKA_CONFIG")]
        kafka_config: Option<PathBuf>,
        /// Create the missing topics. Never deletes anything.
        #[arg(long)]
        apply: bool,
    },
    /// Refold every snapshot of an aggregate store from its events topic, after a fix to
    /// `evolve`: `upcast_event`, then `evolve`; the dedup window from the events' command
    /// ids. Writes only the snapshots that change, to the changelog, in transactions;
    /// instances read them as they start. Refuses while instances of the application are
    /// live (exit 3), unless --force.
    Rebuild {
        #[arg(long, env = "MILLRACE_TOPOLOGY")]
        topology: PathBuf,
        /// The aggregate store (or its aggregate node).
        #[arg(long)]
        store: String,
        /// Only say how many snapshots would change, with a few as diffs.
        #[arg(long)]
        dry_run: bool,
        /// Run even while instances are live (they overwrite what they own, and see the
        /// rest only after a restart).
        #[arg(long)]
        force: bool,
        #[arg(long, env = "MILLRACE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        #[arg(long, env = "MILLRACE_KAFKA_CONFIG")]
        kafka_config: Option<PathBuf>,
    },
    /// Read-side operations on a projection into PostgreSQL.
    Projection {
        #[command(subcommand)]
        op: ProjectionOp,
    },
    /// An operator's request about one aggregate's snapshot, carried out by the running
    /// instance that owns the key (docs/operations.md, "Faults and what each one does").
    Store {
        /// repair: refold the snapshot from the aggregate's event history; delete: remove
        /// a snapshot that cannot be read.
        #[arg(value_parser = ["repair", "delete"])]
        op: String,
        /// The aggregate: its registered name or its node name.
        aggregate: String,
        key: String,
        #[arg(long, env = "MILLRACE_TOPOLOGY")]
        topology: PathBuf,
        #[arg(long, env = "MILLRACE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        #[arg(long, env = "MILLRACE_KAFKA_CONFIG")]
        kafka_config: Option<PathBuf>,
        /// How long to wait for the owner's answer, in seconds.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
    },
}

#[derive(Subcommand)]
enum ProjectionOp {
    /// Blue/green: build the projection's tables again from offset 0 into shadow tables
    /// while the live ones keep serving, then swap them in one transaction. The old tables
    /// stay as `<table>_old` unless --drop-old. Resumes an interrupted rebuild.
    Rebuild {
        /// The projection node.
        name: String,
        #[arg(long, env = "MILLRACE_TOPOLOGY")]
        topology: PathBuf,
        #[arg(long, env = "MILLRACE_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:19092")]
        bootstrap_servers: String,
        #[arg(long, env = "MILLRACE_KAFKA_CONFIG")]
        kafka_config: Option<PathBuf>,
        #[arg(long, env = "MILLRACE_POSTGRES_URL", hide_env_values = true)]
        postgres_url: String,
        /// Drop the replaced tables after the swap (and an old table left by an earlier
        /// rebuild before it).
        #[arg(long)]
        drop_old: bool,
    },
}

/// A topology file's problems, one `error: file:line:col: ...` line each, as a compiler
/// prints them.
fn report_topology_error(e: &topology::TopologyError) {
    let diagnostics = e.diagnostics();
    if diagnostics.is_empty() {
        eprintln!("error: {e}");
        return;
    }
    for d in diagnostics {
        eprintln!("error: {d}");
    }
    if diagnostics.len() > 1 {
        eprintln!("{} problems in the topology file", diagnostics.len());
    }
}

/// The query server's TLS, tokens and limits (docs/security.md).
#[derive(clap::Args, Debug)]
struct HttpArgs {
    /// Serve HTTPS with this PEM certificate (chain); needs --http-tls-key.
    #[arg(long, env = "MILLRACE_HTTP_TLS_CERT", requires = "http_tls_key")]
    http_tls_cert: Option<PathBuf>,
    /// The PEM private key of --http-tls-cert.
    #[arg(long, env = "MILLRACE_HTTP_TLS_KEY", requires = "http_tls_cert")]
    http_tls_key: Option<PathBuf>,
    /// PEM roots forwarding trusts when it calls another instance. Default: the
    /// certificates of --http-tls-cert.
    #[arg(long, env = "MILLRACE_HTTP_TLS_CA", requires = "http_tls_cert")]
    http_tls_ca: Option<PathBuf>,
    /// Bearer tokens, one `<scope> <token>` a line (scope read, write or admin). Without
    /// it every route is open.
    #[arg(long, env = "MILLRACE_HTTP_TOKENS")]
    http_tokens: Option<PathBuf>,
    /// /metrics needs a read token too (with --http-tokens).
    #[arg(long, env = "MILLRACE_HTTP_METRICS_AUTH", requires = "http_tokens")]
    http_metrics_auth: bool,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    http_max_body_bytes: usize,
    /// Requests handled at once (503 with Retry-After beyond).
    #[arg(long, default_value_t = 256)]
    http_max_concurrent: usize,
    /// Requests waiting for their gateway commands' replies (429 with Retry-After beyond).
    #[arg(long, default_value_t = 10_000)]
    http_max_pending_commands: usize,
}

impl HttpArgs {
    fn security(&self) -> Result<millrace::query::HttpSecurity, String> {
        let tls = match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(cert), Some(key)) => Some(millrace::query::tls::HttpTls::load(cert, key, self.http_tls_ca.as_deref()).map_err(|e| e.to_string())?),
            _ => None,
        };
        let tokens = match &self.http_tokens {
            Some(f) => Some(std::sync::Arc::new(millrace::query::auth::Tokens::load(f).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(millrace::query::HttpSecurity {
            tokens,
            metrics_auth: self.http_metrics_auth,
            tls,
            limits: millrace::query::Limits {
                max_body_bytes: self.http_max_body_bytes,
                max_concurrent: self.http_max_concurrent,
                max_pending_commands: self.http_max_pending_commands,
                ..Default::default()
            },
        })
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, found {s:?}"))
}

/// Why `run` ends: a log line (JSON when the logs are), and for people reading a terminal
/// the plain `error:` line as well.
fn stopped(e: &RuntimeError) {
    tracing::error!(error = %e, recovery = ?e.recovery(), "the instance stops");
    if std::env::var("MILLRACE_LOG_FORMAT").as_deref() != Ok("json") {
        eprintln!("error: {e} (recovery: {:?})", e.recovery());
    }
}

/// Log lines on stderr: text for people (the default), or with `MILLRACE_LOG_FORMAT=json`
/// one JSON object a line for a log pipeline, the event's fields (store, partition, key,
/// error, ...) at the top level and its spans (processing thread, task) beside them.
fn init_logging() -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG").unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("MILLRACE_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        Ok("json") => fmt.json().flatten_event(true).with_current_span(false).with_span_list(true).init(),
        Ok(other) => return Err(format!("MILLRACE_LOG_FORMAT={other:?}: expected text or json")),
    }
    Ok(())
}

fn main() -> ExitCode {
    tune_allocator();
    if let Err(e) = init_logging() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            print!("{}", millrace::query::api::document());
            ExitCode::SUCCESS
        }
        Command::Validate { file } => match topology::load(&file) {
            Ok(t) => {
                println!("{}: ok (application {}, {} aggregate(s))", file.display(), t.application_id, t.aggregates.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_topology_error(&e);
                ExitCode::from(2)
            }
        },
        Command::Describe { file, format } => match topology::load(&file) {
            Ok(t) => {
                let out = match format.as_str() {
                    "dot" => topology::describe::dot(&t),
                    "mermaid" => topology::describe::mermaid(&t),
                    _ => topology::describe::text(&t),
                };
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                report_topology_error(&e);
                ExitCode::from(2)
            }
        },
        Command::Rebuild { topology, store, dry_run, force, bootstrap_servers, kafka_config } => {
            store_rebuild(&topology, &store, dry_run, force, &bootstrap_servers, kafka_config.as_deref())
        }
        Command::Projection { op: ProjectionOp::Rebuild { name, topology, bootstrap_servers, kafka_config, postgres_url, drop_old } } => {
            projection_rebuild(&name, &topology, &bootstrap_servers, kafka_config.as_deref(), &postgres_url, drop_old)
        }
        Command::Store { op, aggregate, key, topology, bootstrap_servers, kafka_config, timeout_s } => {
            store_admin(&op, &aggregate, &key, &topology, &bootstrap_servers, kafka_config.as_deref(), timeout_s)
        }
        Command::Plan { file, bootstrap_servers, kafka_config, apply } => {
            let t = match topology::load(&file) {
                Ok(t) => t,
                Err(e) => {
                    report_topology_error(&e);
                    return ExitCode::from(2);
                }
            };
            let clients = match clients(&bootstrap_servers, kafka_config.as_deref(), vec![], vec![]) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let steps = match millrace::runtime::plan::plan(&t, &clients) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            for s in &steps {
                println!("{s}");
            }
            if apply {
                match millrace::runtime::plan::apply(&steps, &clients) {
                    Ok(n) => println!("applied: created {n} topic(s); nothing deleted"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            // Mismatches need a human: a non-zero exit lets a deploy pipeline stop on them.
            if steps.iter().any(|s| s.is_problem()) { ExitCode::from(3) } else { ExitCode::SUCCESS }
        }
        Command::Run { topology, bootstrap_servers, state_dir, http, advertised_http, instance_id, kafka_config, consumer_config, producer_config, http_args, postgres_url, run, shutdown_timeout } => {
            let topo = match topology::load(&topology) {
                Ok(t) => t,
                Err(e) => {
                    report_topology_error(&e);
                    return ExitCode::from(2);
                }
            };
            let registry = millrace::builtin_registry();
            if let Err(e) = topo.check_registered(registry.names()).and_then(|()| topo.check_projections_registered(registry.projection_names())) {
                report_topology_error(&e);
                return ExitCode::from(2);
            }
            let listen = http.unwrap_or_else(|| topo.http.listen.clone());
            let kafka = match clients(&bootstrap_servers, kafka_config.as_deref(), consumer_config, producer_config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let instance_id = match instance_id {
                Some(id) => id,
                None => match default_instance_id(&state_dir) {
                    Ok(id) => id,
                    Err(e) => {
                        eprintln!("error: state directory {}: {e}", state_dir.display());
                        return ExitCode::from(2);
                    }
                },
            };
            tracing::info!(instance = %instance_id, kafka = ?kafka, "starting");
            let http_security = match http_args.security() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let run = match run.as_str() {
                "processing" => Run::Processing,
                "read-side" => Run::ReadSide,
                _ => Run::All,
            };
            let config = AppConfig { kafka, state_dir, instance_id, advertised_http, http: http_security, postgres_url, run };
            let app = match App::new(topo, &registry, config) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {}: {e}", topology.display());
                    return ExitCode::from(2);
                }
            };
            // Latencies as histograms with buckets, not summaries: buckets add up across
            // threads and instances (a p99 over a cluster), quantiles do not.
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    // Fine around the commit interval's usual range (10 to 200 ms), where a
                    // latency tail is read off these buckets.
                    &[0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                )
                .expect("non-empty buckets")
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics disabled"))
                .ok();
            if metrics.is_some() {
                millrace::runtime::metrics_catalog::register();
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
                .expect("tokio runtime");
            let result: Result<(), RuntimeError> = rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen).await.map_err(RuntimeError::Http)?;
                tracing::info!(addr = %listener.local_addr().map_err(RuntimeError::Http)?, "http listening");
                app.run(listener, metrics, shutdown_signal(std::time::Duration::from_secs(shutdown_timeout))).await
            });
            match result {
                Ok(()) => {
                    tracing::info!("clean shutdown");
                    ExitCode::SUCCESS
                }
                // Refused at start (a live twin with this instance id): the user's to fix.
                Err(e) if e.recovery() == millrace::error::Recovery::Reject => {
                    stopped(&e);
                    ExitCode::from(2)
                }
                Err(e) => {
                    stopped(&e);
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// A progress line on stderr: redrawn in place on a terminal, a line each otherwise.
fn progress_line(tty: bool, what: &str, done: u64, total: u64, started: std::time::Instant) {
    let width = 30;
    let filled = if total == 0 { width } else { (done.min(total) * width as u64 / total) as usize };
    let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
    let eta = if rate > 0.0 { format!("{} s", (total.saturating_sub(done) as f64 / rate) as u64) } else { "-".into() };
    let line = format!("{what}: [{}{}] {done}/{total} records, {rate:.0}/s, ETA {eta}", "#".repeat(filled), ".".repeat(width - filled));
    if tty { eprint!("\r{line}") } else { eprintln!("{line}") }
}

/// The topology file and the Kafka clients of a one-off command; exit code 2 (with the
/// problem printed) when either is unusable.
fn topology_and_clients(file: &std::path::Path, bootstrap: &str, kafka_config: Option<&std::path::Path>) -> Result<(topology::Topology, millrace::kafka::Clients), ExitCode> {
    let t = topology::load(file).map_err(|e| {
        report_topology_error(&e);
        ExitCode::from(2)
    })?;
    let kafka = clients(bootstrap, kafka_config, vec![], vec![]).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    Ok((t, kafka))
}

/// `millrace rebuild`: exit 0 when done (or planned, with --dry-run), 2 on a bad topology
/// or argument, 3 when live instances refuse it, 1 when it failed.
fn store_rebuild(topology_file: &std::path::Path, store: &str, dry_run: bool, force: bool, bootstrap: &str, kafka_config: Option<&std::path::Path>) -> ExitCode {
    use std::io::IsTerminal;
    let (t, kafka) = match topology_and_clients(topology_file, bootstrap, kafka_config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let rebuild = match millrace::runtime::refold::StoreRebuild::of(&t, store, &millrace::builtin_registry(), kafka) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", topology_file.display());
            return ExitCode::from(2);
        }
    };
    match rebuild.live_instances() {
        Ok(live) if !live.is_empty() && !force => {
            eprintln!("error: instances of {} are live ({}); stop them first, or pass --force (a live task overwrites the snapshots it owns)", t.application_id, live.join(", "));
            return ExitCode::from(3);
        }
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: cannot tell whether instances are live: {e}");
            return ExitCode::from(1);
        }
    }
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let plan = rebuild.plan(&mut |done, total| progress_line(tty, &format!("rebuild {}: reading", rebuild.store), done, total, started));
    if tty {
        eprintln!();
    }
    let plan = match plan {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{} of {} snapshots {} change", plan.changed.len(), plan.aggregates, if dry_run { "would" } else { "will" });
    for c in plan.changed.iter().take(3) {
        let (before_version, before_state) = c.before.clone().map_or(("none".to_string(), serde_json::Value::Null), |(v, s)| (v.to_string(), s));
        println!("{} (partition {}): version {before_version} -> {}", c.key, c.partition, c.after.version);
        for line in millrace::processor::refold::diff(&before_state, &c.after.state) {
            println!("  {line}");
        }
    }
    for (key, reason) in plan.unfoldable.iter().take(5) {
        eprintln!("warning: {key} keeps its snapshot: its events cannot be refolded: {reason}");
    }
    if dry_run {
        return ExitCode::SUCCESS;
    }
    let started = std::time::Instant::now();
    let written = rebuild.apply(&plan, &mut |done, total| progress_line(tty, &format!("rebuild {}: writing", rebuild.store), done, total, started));
    if tty {
        eprintln!();
    }
    match written {
        Ok(n) => {
            println!("rewrote {n} snapshots in the changelog; instances read them as they start");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e} (nothing half-written stays: each transaction commits whole; run it again)");
            ExitCode::from(1)
        }
    }
}

/// `millrace projection rebuild`: exit 0 when swapped, 2 on a bad topology or argument, 1
/// when it failed (it resumes where it stopped when run again).
fn projection_rebuild(name: &str, topology_file: &std::path::Path, bootstrap: &str, kafka_config: Option<&std::path::Path>, postgres_url: &str, drop_old: bool) -> ExitCode {
    use std::io::IsTerminal;
    let (t, kafka) = match topology_and_clients(topology_file, bootstrap, kafka_config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let rebuild = match millrace::readside::rebuild::Rebuild::of(&t, name, &millrace::builtin_registry(), kafka, postgres_url, drop_old) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", topology_file.display());
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let mut show = |p: millrace::readside::rebuild::Progress| progress_line(tty, &format!("rebuild {name}"), p.done, p.total, started);
    let result = rebuild.run(rt.handle(), &mut show);
    if tty {
        eprintln!();
    }
    match result {
        Ok(done) => {
            for (live, old) in &done.tables {
                let kept = if done.dropped_old { "dropped".to_string() } else { format!("kept as {old}") };
                println!("rebuilt {live} from {} records and swapped it in; the table it replaced is {kept}", done.records);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.recovery() == millrace::error::Recovery::Reject { 2 } else { 1 })
        }
    }
}

/// `millrace store repair|delete`: exit 0 when done, 1 when it could not be sent or no
/// answer came, 2 on bad arguments, 3 when the owner refused it (the reason is printed).
fn store_admin(op: &str, aggregate: &str, key: &str, topology_file: &std::path::Path, bootstrap: &str, kafka_config: Option<&std::path::Path>, timeout_s: u64) -> ExitCode {
    let (topo, kafka) = match topology_and_clients(topology_file, bootstrap, kafka_config) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let config = AppConfig {
        kafka: kafka.clone(),
        state_dir: std::env::temp_dir(),
        instance_id: "cli".into(),
        advertised_http: None,
        http: Default::default(),
        postgres_url: None,
        run: Run::Processing,
    };
    let app = match App::new(topo, &millrace::builtin_registry(), config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let request = if op == "repair" { "repair-snapshot" } else { "delete-snapshot" };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio runtime");
    let sent = rt.block_on(millrace::runtime::gateway::admin_request(
        app.gateway_targets(),
        &kafka,
        aggregate,
        key,
        request,
        std::time::Duration::from_secs(timeout_s),
    ));
    match sent {
        Ok(Some(reply)) => {
            println!("{}", serde_json::to_string(&reply).expect("replies serialize"));
            if reply.outcome == millrace::processor::wire::Outcome::Accepted { ExitCode::SUCCESS } else { ExitCode::from(3) }
        }
        Ok(None) => {
            eprintln!("error: no answer within {timeout_s} s; is an instance of the application running?");
            ExitCode::from(1)
        }
        Err(e) if e.recovery() == millrace::error::Recovery::Reject => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Every Kafka client's settings: the properties file (for every client), then the
/// role-specific flags. Settings that would break exactly-once or partitioning are refused.
fn clients(
    bootstrap_servers: &str,
    file: Option<&std::path::Path>,
    consumer: Vec<(String, String)>,
    producer: Vec<(String, String)>,
) -> Result<millrace::kafka::Clients, millrace::kafka::KafkaConfigError> {
    let (common, origin) = match file {
        Some(f) => (millrace::kafka::parse_properties(f)?, f.display().to_string()),
        None => (Vec::new(), String::new()),
    };
    millrace::kafka::Clients::new(bootstrap_servers, common, &origin, consumer, producer)
}

/// An instance id that survives restarts and differs between instances: the host name
/// (a pod name under Kubernetes) and a hash of the absolute state directory, so two
/// instances on one host with their own state directories never share one (sharing one
/// would fence each other's transactions and group membership).
fn default_instance_id(state_dir: &std::path::Path) -> std::io::Result<String> {
    std::fs::create_dir_all(state_dir)?;
    let dir = std::fs::canonicalize(state_dir)?;
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).collect();
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = dir.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    Ok(format!("{host}-{:08x}", hash as u32))
}

/// Resolves at SIGTERM or Ctrl-C, and bounds the shutdown that follows by `limit`.
async fn shutdown_signal(limit: std::time::Duration) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(limit_s = limit.as_secs(), "shutdown requested");
    // With the broker away, the calls a shutdown makes (the last commit, the abort after
    // it, a producer a failed transaction replaces) each wait out librdkafka's timeouts, one
    // after another: an instance SIGTERMed under load while its broker was down still ran
    // minutes later (tests/shutdown_outage.rs). Those calls cannot be interrupted. Past the
    // limit the process goes as a crash would, which exactly-once is built to survive.
    let watchdog = std::thread::Builder::new().name("millrace-shutdown-limit".into()).spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            limit_s = limit.as_secs(),
            "shutdown did not finish within --shutdown-timeout; exiting as after a crash: the next start aborts the open transaction and restores the stores' changelog tails"
        );
        // SAFETY: _exit ends the process at once. Destructors and atexit handlers are what
        // must not run here: they would tear RocksDB and librdkafka down under the threads
        // still blocked in them.
        unsafe { libc::_exit(1) };
    });
    if let Err(e) = watchdog {
        tracing::warn!(error = %e, "the shutdown is not bounded: its watchdog thread did not start");
    }
}
