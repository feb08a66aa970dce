//! A producer whose events (delivery reports, errors, logs, statistics) are served by a
//! thread of its own that sleeps until there are any: rdkafka's `ThreadedProducer`
//! without its busy wait.
//!
//! Why not `ThreadedProducer`: its thread calls `poll(100 ms)` in a loop, and rdkafka
//! 0.39 polls librdkafka's queue with the time left in whole milliseconds, truncated. The
//! last fraction of a millisecond of every slice is a run of non-blocking polls until the
//! deadline passes: up to 1 ms on a core, ten times a second for every producer, busy or
//! idle. An instance has four producers; on two cores these runs were most of what kept
//! the query server's threads waiting for a core (`perf sched` of `millrace-bench
//! queries`, docs/performance.md).
//!
//! Here librdkafka writes to an eventfd whenever the producer's event queue gets an event
//! after having been served (`rd_kafka_queue_io_event_enable`); the thread sleeps in
//! `poll(2)` on it, then serves the queue with non-blocking polls until it is empty.
//!
//! May use: rdkafka's producer and its bindings, libc; nothing of millrace.

use rdkafka::bindings as rdsys;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the thread sleeps without an event before it looks at its stop flag. Drop
/// wakes it at once; this only bounds a missed wake-up.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The serving thread's name (15 bytes: Linux keeps no more).
const THREAD_NAME: &str = "producer-events";

/// The wake-ups: the producer's main event queue (a reference of our own) and the eventfd
/// librdkafka writes when an event arrives on it. Dropping it switches the writes off
/// before the descriptor closes: its number could be reused at once by a socket or a
/// RocksDB file, which librdkafka would then write into. It drops before the producer,
/// whose own drop (purge, flush, destroy) still queues events.
struct Wakeups {
    queue: *mut rdsys::rd_kafka_queue_t,
    fd: OwnedFd,
    idle_wake_ms: i32,
}

// SAFETY: librdkafka's queues are thread-safe (every operation takes the queue's lock);
// the handle is only a pointer to one, valid until `Drop`.
#[allow(unsafe_code)]
unsafe impl Send for Wakeups {}
#[allow(unsafe_code)]
unsafe impl Sync for Wakeups {}

impl Wakeups {
    #[allow(unsafe_code)]
    fn enable<C: ProducerContext>(producer: &BaseProducer<C>, idle_wake: Duration) -> std::io::Result<Self> {
        // SAFETY: plain system call; the descriptor is owned from here on.
        let fd = unsafe {
            let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // An eventfd takes writes of exactly 8 bytes, each adding to its counter.
        let one = 1u64.to_ne_bytes();
        // SAFETY: the client pointer is valid while `producer` lives; librdkafka copies
        // the payload. `Drop` undoes both calls.
        let queue = unsafe {
            let q = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            rdsys::rd_kafka_queue_io_event_enable(q, fd.as_raw_fd(), one.as_ptr().cast(), one.len());
            q
        };
        Ok(Self { queue, fd, idle_wake_ms: i32::try_from(idle_wake.as_millis()).unwrap_or(i32::MAX) })
    }

    fn queued(&self) -> usize {
        // SAFETY: the handle is valid until `Drop`.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_length(self.queue)
        }
    }

    /// Sleeps until librdkafka wrote the eventfd, or for the idle wake.
    fn wait(&self) {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut counter = [0u8; 8];
        #[allow(unsafe_code)]
        // SAFETY: one valid pollfd; an 8-byte buffer for the eventfd's counter, read
        // (reset) only when it was written.
        unsafe {
            if libc::poll(&mut pfd, 1, self.idle_wake_ms) > 0 {
                libc::read(self.fd.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len());
            }
        }
    }

    /// Ends a `wait` at once.
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        #[allow(unsafe_code)]
        // SAFETY: the descriptor is open until `self.fd` drops.
        unsafe {
            libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: switched off under the queue's lock, so no write follows; then our
        // reference goes (the producer keeps its own). The descriptor closes after this.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.queue, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// A `BaseProducer` with a thread serving its events. Derefs to the producer.
pub struct PolledProducer<C: ProducerContext + 'static> {
    // Field order is drop order: the wake-ups go before the producer.
    wakeups: Arc<Wakeups>,
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Creates a producer from `config` with `context`, its events served from the start.
    pub fn create(config: &rdkafka::ClientConfig, context: C) -> KafkaResult<Self> {
        let producer: BaseProducer<C> = config.create_with_context(context)?;
        Self::with_idle_wake(producer, IDLE_WAKE).map_err(|e| KafkaError::ClientCreation(format!("the producer's event thread: {e}")))
    }

    fn with_idle_wake(producer: BaseProducer<C>, idle_wake: Duration) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        // Declared after the producer, so that on an early return it drops first.
        let wakeups = Arc::new(Wakeups::enable(&producer, idle_wake)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, wakeups, stop) = (producer.clone(), wakeups.clone(), stop.clone());
            std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
                // A context callback that panics ends the serving: say so. Reports then go
                // unserved, which the sink's drain notices (its records stay in flight) and
                // answers with a new producer.
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&producer, &wakeups, &stop)));
                if served.is_err() {
                    tracing::error!("a producer's event thread panicked: its delivery reports are no longer served");
                }
            })?
        };
        Ok(Self { wakeups, producer, stop, thread: Some(thread) })
    }
}

/// Serves every queued event, then sleeps until librdkafka signals the next one.
///
/// librdkafka writes the eventfd when an event arrives on an empty queue that was polled
/// since its last write (every poll marks it served, an empty one too). An event queued
/// between the last look at the length and the sleep therefore finds the queue served,
/// and the sleep ends at once. The poll after each wake runs whatever the length says:
/// it marks the queue served even if the wake found nothing.
fn serve<C: ProducerContext>(producer: &BaseProducer<C>, wakeups: &Wakeups, stop: &AtomicBool) {
    loop {
        // One event per call: with no time left, rdkafka's poll takes what is queued
        // without waiting and returns.
        producer.poll(Duration::ZERO);
        while wakeups.queued() > 0 {
            producer.poll(Duration::ZERO);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        wakeups.wait();
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;
    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wakeups.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Then the fields: the wake-ups (the thread's references are gone with it), and
        // the producer itself, whose drop (purge, a last flush) polls for itself.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{BaseRecord, DeliveryResult, PurgeConfig};
    use rdkafka::ClientContext;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::time::Instant;

    struct Reports(Mutex<mpsc::Sender<bool>>);
    impl ClientContext for Reports {}
    impl ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
            let _ = self.0.lock().unwrap().send(r.is_ok());
        }
    }

    /// Reports are served by the thread as they arrive, without anyone polling: each
    /// record is purged from the queue (there is no broker to send it to), which queues
    /// its failed report at once. A lost wake-up would leave one for the thread's idle
    /// wake, here a minute later. Random pauses put the arrival anywhere in its loop.
    #[test]
    fn reports_are_served_as_they_arrive_and_the_thread_ends_on_drop() {
        let (tx, rx) = mpsc::channel();
        let producer: BaseProducer<Reports> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(Reports(Mutex::new(tx)))
            .unwrap();
        let polled = PolledProducer::with_idle_wake(producer, Duration::from_secs(60)).unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_micros(seed % 3_000));
            polled.send(BaseRecord::<'_, str, str>::to("t").key("k").payload("v")).map_err(|(e, _)| e).unwrap();
            polled.purge(PurgeConfig::default().queue());
            let ok = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("report {i} not served within 10 s"));
            assert!(!ok, "a purged record is not delivered");
        }
        let started = Instant::now();
        drop(polled);
        assert!(started.elapsed() < Duration::from_secs(30), "drop wakes the thread rather than waiting out its sleep");
    }

    /// Nanoseconds the producer's serving thread has spent on a core.
    #[allow(unsafe_code)]
    fn serving_thread_cpu_ns<C: ProducerContext>(p: &PolledProducer<C>) -> u64 {
        let thread = p.thread.as_ref().expect("the thread runs until drop").as_pthread_t();
        let mut clock: libc::clockid_t = 0;
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a live thread's handle (joined only in drop) and valid out-pointers.
        unsafe {
            assert_eq!(libc::pthread_getcpuclockid(thread, &mut clock), 0);
            assert_eq!(libc::clock_gettime(clock, &mut ts), 0);
        }
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// An idle producer's thread sleeps. rdkafka's `ThreadedProducer` spent about 8 ms
    /// of every second on a core doing nothing (its poll's last sub-millisecond spins).
    #[test]
    fn an_idle_producer_costs_no_cpu() {
        let producer: BaseProducer<rdkafka::producer::DefaultProducerContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap();
        let polled = PolledProducer::with_idle_wake(producer, IDLE_WAKE).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = serving_thread_cpu_ns(&polled);
        std::thread::sleep(Duration::from_secs(2));
        let spent = serving_thread_cpu_ns(&polled) - before;
        // Log events (the unreachable broker) wake it now and then; each costs microseconds.
        assert!(spent < 2_000_000, "the idle serving thread spent {spent} ns on a core in 2 s");
    }
}
