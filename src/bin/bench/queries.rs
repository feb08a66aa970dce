//! Interactive queries at a fixed offered rate: two instances of the customer
//! application share a store of KEYS customers, and one of them is asked for random keys
//! at RATE requests a second, first keys it owns, then keys the other owns (each request
//! forwarded over the instances' keep-alive pool). Before both, the same load on the
//! health probe, which reads no store: the floor the machine itself puts under the tail.
//!
//! The load is open-loop, as wrk2's: request i is due at `i / RATE` seconds, whatever
//! happened to the ones before it. A request that waits for a busy connection counts
//! from its due time, so a slow server cannot slow the load down and hide its own
//! queueing (coordinated omission). A request sent late only because the load
//! generator's timer woke late counts from when it was sent: that lateness is the tool's.
//!
//! `MILLRACE_BENCH_CACHE_MIB` sets the instances' block cache (`rocksdb.block_cache_mib`),
//! to compare a cache that holds the queried keys with the default.
//! `MILLRACE_BENCH_GENERATOR_FIFO=1` runs the load generator's thread under SCHED_FIFO
//! (root only), so that on cores it shares with the instances it answers at once: what
//! its own waits for a core add to the tail then shows as the difference.

use super::{customer_topology, load_padded, wait_committed, MillraceInstance, PARTITIONS};
use millrace::codec::murmur2::partition_for_key;
use millrace::runtime::topics::{self, TopicNeed};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Connections the load generator keeps open (wrk's usual figure).
const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(3);
const MEASURED: Duration = Duration::from_secs(15);
/// The longest wait for the instances to go idle after the load.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);

pub fn run(keys: usize) {
    let rate: usize = std::env::var("MILLRACE_BENCH_RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(20_000);
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let run = format!("benchqueries-{}", std::process::id());
    let input = format!("{run}-commands");
    topics::ensure(&millrace::kafka::Clients::plain(&bootstrap), &[TopicNeed::plain(input.clone(), PARTITIONS)]).expect("create bench topics");
    let app = format!("{run}-millrace");
    let mut topology = customer_topology(&app, &input, false, 1);
    if let Ok(mib) = std::env::var("MILLRACE_BENCH_CACHE_MIB") {
        topology.push_str(&format!("rocksdb:\n  block_cache_mib: {mib}\n"));
    }
    let dirs = [super::work_dir().join(format!("{app}-a")), super::work_dir().join(format!("{app}-b"))];
    let a = MillraceInstance::start_as(&bootstrap, &dirs[0], &topology, "a");
    let b = MillraceInstance::start_as(&bootstrap, &dirs[1], &topology, "b");
    eprintln!("loading {keys} customers (one ~256 B create each) through two instances");
    load_padded(&bootstrap, &input, keys, keys, 160);
    wait_committed(&bootstrap, &app, &input, keys as i64);

    // Which instance owns which partition, as instance a sees it.
    let owners = loop {
        let cluster: serde_json::Value = serde_json::from_str(super::http_get(&a.http, "/cluster").split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap_or_default();
        let owners: Vec<Option<String>> = (0..PARTITIONS)
            .map(|p| {
                cluster["stores"]["customers"].as_array()?.iter().find(|e| e["partition"] == p)?["owner"]["http"].as_str().map(String::from)
            })
            .collect();
        let both = owners.iter().any(|o| o.as_deref() == Some(a.http.as_str())) && owners.iter().any(|o| o.as_deref() == Some(b.http.as_str()));
        if owners.iter().all(Option::is_some) && both {
            break owners;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // A load leaves work behind on the same two cores: the instances flush and compact,
    // and the broker cleans the changelog the load wrote and compiles its hot paths. A
    // `perf sched` of a local phase measured right after the instances went quiet showed
    // the broker's log cleaner and JIT compiler running 0.65 s of 6 s beside the lookups
    // (stop 29). Measure once the whole machine is idle (the two instances below a
    // twentieth of a core each and every process together below a tenth, for a second),
    // so the tail is the lookups' own.
    let settling = std::time::Instant::now();
    while settling.elapsed() < SETTLE_LIMIT {
        let (ua, ub, machine) = (a.usage(), b.usage(), machine_busy_secs());
        std::thread::sleep(Duration::from_secs(1));
        let quiet = a.usage().since(ua).cpu_secs < 0.05 && b.usage().since(ub).cpu_secs < 0.05;
        if quiet && machine_busy_secs() - machine < 0.1 {
            break;
        }
    }
    println!("machine idle after the load: {:.1} s", settling.elapsed().as_secs_f64());
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..keys {
        let key = format!("cust-{i}");
        let owner = owners[partition_for_key(key.as_bytes(), PARTITIONS as i32) as usize].as_deref();
        let path = format!("/stores/customers/keys/{key}");
        if owner == Some(a.http.as_str()) { local.push(path) } else { remote.push(path) }
    }
    // The floor: the same load on an answer that reads no store (the health probe). What a
    // lookup's tail has above it is the lookup's; what this has is the machine's, the load
    // generator's share of the same two cores and loopback TCP included.
    let floor = vec!["/health".to_string()];
    println!(
        "store customers, {keys} keys over {PARTITIONS} partitions, 2 instances; asking instance a at {rate} requests/s, {CONNECTIONS} keep-alive connections, {} s warm-up, {} s measured",
        WARMUP.as_secs(),
        MEASURED.as_secs()
    );
    for (what, paths) in [("none (/health)", &floor), ("owned by a (local)", &local), ("owned by b (forwarded)", &remote)] {
        let cpu_a = a.usage();
        let cpu_b = b.usage();
        let r = offer(&a.http, paths, rate);
        let (ua, ub) = (a.usage().since(cpu_a), b.usage().since(cpu_b));
        println!(
            "keys {what:<24} p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  max {:>7.2} ms  achieved {:>6.0}/s  non-200 {}  CPU a {:.1} s, b {:.1} s ({:.0} + {:.0} µs a request)",
            r.pct(0.5), r.pct(0.99), r.pct(0.999), r.pct(1.0), r.achieved, r.failed, ua.cpu_secs, ub.cpu_secs,
            // The CPU a request cost each instance: steadier from run to run than the tail,
            // which on two shared cores moves with whatever else runs.
            ua.cpu_secs * 1e6 / (rate as f64 * (WARMUP + MEASURED).as_secs_f64()),
            ub.cpu_secs * 1e6 / (rate as f64 * (WARMUP + MEASURED).as_secs_f64()),
        );
    }
    a.stop();
    b.stop();
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// CPU seconds every process on the machine has spent so far (/proc/stat: all but idle
/// and I/O wait).
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy / 100.0
}

struct Offered {
    /// Microseconds, sorted.
    latencies: Vec<u64>,
    achieved: f64,
    failed: usize,
}

impl Offered {
    fn pct(&self, p: f64) -> f64 {
        let l = &self.latencies;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).map_or(f64::NAN, |us| *us as f64 / 1000.0)
    }
}

/// Offers GETs of random `paths` to `http` at `rate` a second for the warm-up and the
/// measured time; the measured requests' latencies.
fn offer(http: &str, paths: &[String], rate: usize) -> Offered {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("load runtime");
    let fifo = std::env::var("MILLRACE_BENCH_GENERATOR_FIFO").is_ok_and(|v| v == "1");
    if fifo {
        if let Err(e) = schedule_this_thread(libc::SCHED_FIFO, 1) {
            eprintln!("SCHED_FIFO for the load generator refused: {e}");
        }
    }
    let total = rate * (WARMUP + MEASURED).as_secs() as usize;
    let warm = rate * WARMUP.as_secs() as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new((Vec::with_capacity(total - warm), 0usize)));
    let paths = Arc::new(paths.to_vec());
    let started = Instant::now();
    rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        let mut conns = Vec::new();
        for c in 0..CONNECTIONS {
            let (next, results, paths, http) = (next.clone(), results.clone(), paths.clone(), http.to_string());
            conns.push(tokio::spawn(async move {
                let mut conn = None;
                // A cheap generator per connection: random paths without a shared lock.
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                let mut free_at = t0;
                let (mut mine, mut failed) = (Vec::new(), 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                    let sent = tokio::time::Instant::now();
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let path = &paths[(seed % paths.len() as u64) as usize];
                    let ok = get(&mut conn, &http, path).await;
                    let done = tokio::time::Instant::now();
                    let from = if free_at > due { due } else { sent };
                    free_at = done;
                    if i >= warm {
                        mine.push((done - from).as_micros() as u64);
                        failed += usize::from(!ok);
                    }
                }
                let mut r = results.lock().expect("results");
                r.0.extend(mine);
                r.1 += failed;
            }));
        }
        for c in conns {
            c.await.expect("connection task");
        }
    });
    if fifo {
        // Back to the default policy for what this thread does between the phases.
        let _ = schedule_this_thread(libc::SCHED_OTHER, 0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut latencies, failed) = Arc::try_unwrap(results).ok().expect("all tasks done").into_inner().expect("results");
    latencies.sort_unstable();
    Offered { achieved: total as f64 / elapsed, latencies, failed }
}

/// Sets the calling thread's scheduling policy (pid 0: this thread, not the process).
fn schedule_this_thread(policy: libc::c_int, priority: libc::c_int) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: plain system call with a valid parameter block.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One keep-alive GET; false unless it answered 200. A broken connection is reopened on
/// the next request.
async fn get(conn: &mut Option<BufReader<tokio::net::TcpStream>>, http: &str, path: &str) -> bool {
    if conn.is_none() {
        let Ok(s) = tokio::net::TcpStream::connect(http).await else { return false };
        let _ = s.set_nodelay(true);
        *conn = Some(BufReader::new(s));
    }
    let c = conn.as_mut().expect("connected above");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n\r\n");
    let answered = async {
        c.get_mut().write_all(request.as_bytes()).await.ok()?;
        let mut line = String::new();
        c.read_line(&mut line).await.ok()?;
        let status_ok = line.starts_with("HTTP/1.1 200");
        let mut length = 0usize;
        loop {
            line.clear();
            if c.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        c.read_exact(&mut body).await.ok()?;
        Some(status_ok)
    }
    .await;
    if answered.is_none() {
        *conn = None;
    }
    answered.unwrap_or(false)
}
