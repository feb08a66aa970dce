// How the benchmark's Kafka Streams contenders are configured and run: started, "RUNNING" printed (after
// whatever the caller prints first) once the instance runs, and closed cleanly on SIGTERM.
package millrace.bench;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;

final class Lifecycle {
    private Lifecycle() {}

    /**
     * What every contender shares: exactly_once_v2, one stream thread, the commit interval,
     * and the same producer settings as millrace's sink, so neither side wins on
     * compression or batching.
     */
    static Properties baseProperties(String bootstrap, String app, String stateDir, String commitMs) {
        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Integer.parseInt(commitMs));
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        props.put(StreamsConfig.producerPrefix("compression.type"), "lz4");
        props.put(StreamsConfig.producerPrefix("linger.ms"), 5);
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        props.put(StreamsConfig.consumerPrefix("session.timeout.ms"), 10000);
        // Kafka 5.0's default, set now to keep the start-up log quiet.
        props.put("processing.exception.handler.global.enabled", true);
        return props;
    }

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
