// How the benchmark's Kafka Streams contenders run: started, "RUNNING" printed (after
// whatever the caller prints first) once the instance runs, and closed cleanly on SIGTERM.
package millrace.bench;

import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;

final class Lifecycle {
    private Lifecycle() {}

    /** Starts `streams` and blocks until it stops; `onRunning` prints before "RUNNING". */
    static void runUntilStopped(KafkaStreams streams, Runnable onRunning) throws InterruptedException {
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                onRunning.run();
                System.out.println("RUNNING");
                System.out.flush();
            }
            if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
