//! The `millrace` binary: the only place that reads argv and the environment.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad topology or arguments.

use clap::{Parser, Subcommand};
use millrace::runtime::RuntimeError;
use millrace::{topology, App, AppConfig};
use std::path::PathBuf;
use std::process::ExitCode;

// The hot path allocates and frees many short-lived buffers per record (decoded commands,
// encoded snapshots, output records); glibc malloc spent a fifth of the processing
// thread's time there and in page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Stable instance id (transactional id and static group member id).
        #[arg(long, env = "MILLRACE_INSTANCE_ID", default_value = "0")]
        instance_id: String,
        /// Extra librdkafka consumer setting, `key=value`; repeatable.
        #[arg(long = "consumer-config", value_parser = key_value)]
        consumer_config: Vec<(String, String)>,
        /// Extra librdkafka producer setting, `key=value`; repeatable.
        #[arg(long = "producer-config", value_parser = key_value)]
        producer_config: Vec<(String, String)>,
    },
    /// Check a topology file; prints file:line:col and what was expected on error.
    Validate { file: PathBuf },
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
        /// Create the missing topics. Never deletes anything.
        #[arg(long)]
        apply: bool,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, found {s:?}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MILLRACE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => match topology::load(&file) {
            Ok(t) => {
                println!("{}: ok (application {}, {} aggregate(s))", file.display(), t.application_id, t.aggregates.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
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
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Plan { file, bootstrap_servers, apply } => {
            let t = match topology::load(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let steps = match millrace::runtime::plan::plan(&t, &bootstrap_servers) {
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
                match millrace::runtime::plan::apply(&steps, &bootstrap_servers) {
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
        Command::Run { topology, bootstrap_servers, state_dir, http, advertised_http, instance_id, consumer_config, producer_config } => {
            let topo = match topology::load(&topology) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let registry = millrace::builtin_registry();
            if let Err(e) = topo.check_registered(registry.names()) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let listen = http.unwrap_or_else(|| topo.http.listen.clone());
            let config = AppConfig {
                bootstrap_servers,
                state_dir,
                instance_id,
                consumer_overrides: consumer_config,
                producer_overrides: producer_config,
                advertised_http,
            };
            let app = match App::new(topo, &registry, config) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("error: {}: {e}", topology.display());
                    return ExitCode::from(2);
                }
            };
            let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics disabled"))
                .ok();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
                .expect("tokio runtime");
            let result: Result<(), RuntimeError> = rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen).await.map_err(RuntimeError::Http)?;
                tracing::info!(addr = %listener.local_addr().map_err(RuntimeError::Http)?, "http listening");
                app.run(listener, metrics, shutdown_signal()).await
            });
            match result {
                Ok(()) => {
                    tracing::info!("clean shutdown");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e} (recovery: {:?})", e.recovery());
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}
