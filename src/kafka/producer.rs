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

use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the thread sleeps without an event before it looks at its stop flag. Drop
/// wakes it at once; this only bounds a missed wake-up.
const IDLE_WAKE_MS: i32 = 1_000;

/// The serving thread's name (15 bytes: Linux keeps no more).
const THREAD_NAME: &str = "producer-events";

/// The producer's main event queue, as librdkafka hands it out (a reference of our own).
struct MainQueue(*mut rdsys::rd_kafka_queue_t);

// SAFETY: librdkafka's queues are thread-safe (every operation takes the queue's lock);
// the handle is only a pointer to one.
#[allow(unsafe_code)]
unsafe impl Send for MainQueue {}
#[allow(unsafe_code)]
unsafe impl Sync for MainQueue {}

impl MainQueue {
    fn len(&self) -> usize {
        // SAFETY: the handle is valid until `Drop` destroys it, after the thread ended.
        #[allow(unsafe_code)]
        unsafe {
            rdsys::rd_kafka_queue_length(self.0)
        }
    }
}

/// A `BaseProducer` with a thread serving its events. Derefs to the producer.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    queue: Arc<MainQueue>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    /// Starts serving `producer`'s events on a new thread.
    pub fn new(producer: BaseProducer<C>) -> std::io::Result<Self> {
        let producer = Arc::new(producer);
        #[allow(unsafe_code)]
        // SAFETY: plain system call; the descriptor is owned from here on.
        let wake = unsafe {
            let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Arc::new(OwnedFd::from_raw_fd(fd))
        };
        // An eventfd takes writes of exactly 8 bytes, each adding to its counter.
        let one = 1u64.to_ne_bytes();
        #[allow(unsafe_code)]
        // SAFETY: the client pointer is valid while `producer` lives; librdkafka copies
        // the payload. The queue reference is destroyed in `Drop`, after the thread ended
        // and after the wake-ups were switched off, and before the descriptor closes.
        let queue = unsafe {
            let q = rdsys::rd_kafka_queue_get_main(producer.client().native_ptr());
            rdsys::rd_kafka_queue_io_event_enable(q, wake.as_raw_fd(), one.as_ptr().cast(), one.len());
            Arc::new(MainQueue(q))
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (producer, queue, wake, stop) = (producer.clone(), queue.clone(), wake.clone(), stop.clone());
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || serve(&producer, &queue, &wake, &stop))?
        };
        Ok(Self { producer, queue, wake, stop, thread: Some(thread) })
    }
}

/// Serves every queued event, then sleeps until librdkafka signals the next one. An
/// event queued between the last look at the length and the sleep finds the queue
/// served, so librdkafka writes the eventfd and the sleep ends at once.
fn serve<C: ProducerContext>(producer: &BaseProducer<C>, queue: &MainQueue, wake: &OwnedFd, stop: &AtomicBool) {
    loop {
        while queue.len() > 0 {
            // One event per call: with no time left, rdkafka's poll takes what is queued
            // without waiting and returns.
            producer.poll(Duration::ZERO);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut pfd = libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let mut counter = [0u8; 8];
        #[allow(unsafe_code)]
        // SAFETY: one valid pollfd; an 8-byte buffer for the eventfd's counter, read
        // (reset) only when it was written.
        unsafe {
            if libc::poll(&mut pfd, 1, IDLE_WAKE_MS) > 0 {
                libc::read(wake.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len());
            }
        }
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
        let one = 1u64.to_ne_bytes();
        #[allow(unsafe_code)]
        // SAFETY: the descriptor is open until `self.wake` is dropped below.
        unsafe {
            libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        #[allow(unsafe_code)]
        // SAFETY: the thread has ended; librdkafka must stop writing to the descriptor
        // before it closes (its number could be reused), and our queue reference goes.
        unsafe {
            rdsys::rd_kafka_queue_io_event_enable(self.queue.0, -1, std::ptr::null(), 0);
            rdsys::rd_kafka_queue_destroy(self.queue.0);
        }
        // The producer itself (purge and a last flush) drops after this, with the fields.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::{BaseRecord, DeliveryResult};
    use rdkafka::ClientContext;
    use std::sync::mpsc;
    use std::sync::Mutex;

    struct Reports(Mutex<mpsc::Sender<bool>>);
    impl ClientContext for Reports {}
    impl ProducerContext for Reports {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
            let _ = self.0.lock().unwrap().send(r.is_ok());
        }
    }

    /// A report is served by the thread without anyone polling: with no broker to reach,
    /// a record times out after `message.timeout.ms` and its failed report arrives.
    #[test]
    fn reports_are_served_without_polling_and_the_thread_ends_on_drop() {
        let (tx, rx) = mpsc::channel();
        let producer: BaseProducer<Reports> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "200")
            .create_with_context(Reports(Mutex::new(tx)))
            .unwrap();
        let polled = PolledProducer::new(producer).unwrap();
        polled.send(BaseRecord::<'_, str, str>::to("t").key("k").payload("v")).map_err(|(e, _)| e).unwrap();
        let ok = rx.recv_timeout(Duration::from_secs(10)).expect("the report is served by the thread");
        assert!(!ok, "nothing can be delivered without a broker");
        let started = std::time::Instant::now();
        drop(polled);
        assert!(started.elapsed() < Duration::from_millis(900), "drop wakes the thread rather than waiting out its sleep");
    }

    /// Nanoseconds on a core so far of each of this process's threads named `THREAD_NAME`,
    /// by thread id.
    fn serving_threads_cpu_ns() -> std::collections::HashMap<String, u64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let dir = t.ok()?.path();
                (std::fs::read_to_string(dir.join("comm")).ok()?.trim() == THREAD_NAME).then_some(())?;
                let ns = std::fs::read_to_string(dir.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()?;
                Some((dir.file_name()?.to_string_lossy().into_owned(), ns))
            })
            .collect()
    }

    /// An idle producer's thread sleeps. rdkafka's `ThreadedProducer` spent about 9 ms
    /// of every second on a core doing nothing (its poll's last sub-millisecond spins).
    #[test]
    fn an_idle_producer_costs_no_cpu() {
        let producer: BaseProducer<rdkafka::producer::DefaultProducerContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap();
        let polled = PolledProducer::new(producer).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before = serving_threads_cpu_ns();
        std::thread::sleep(Duration::from_secs(2));
        // Other tests' producers may come and go meanwhile: threads seen at both ends.
        let after = serving_threads_cpu_ns();
        assert!(before.keys().any(|t| after.contains_key(t)), "the serving thread runs");
        let spent: u64 = after.iter().filter_map(|(t, ns)| Some(ns - before.get(t)?)).sum();
        drop(polled);
        // Log events (the unreachable broker) wake it now and then; each costs microseconds.
        assert!(spent < 2_000_000, "the idle serving thread spent {spent} ns on a core in 2 s");
    }
}
