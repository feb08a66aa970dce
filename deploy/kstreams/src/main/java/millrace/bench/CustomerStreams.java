// The customer aggregate of millrace's benchmark, written as a Kafka Streams user would:
// one processor with a persistent (RocksDB, changelogged) key-value store of snapshots,
// exactly_once_v2, the same commit interval. It does the same work per command as
// millrace: decode the JSON command, load the snapshot, dedup by command id (the last 32
// per aggregate), check the expected version, decide, evolve, write the snapshot, and
// emit the event and the reply in the public JSON shapes.
//
// Prints "RUNNING" once the instance is running, and "RESTORED <records>" with the
// changelog records restored so far whenever a restoration ends, so the benchmark can
// compare crash recovery.
//
// Usage: CustomerStreams BOOTSTRAP APPLICATION_ID COMMANDS EVENTS REPLIES STATE_DIR COMMIT_MS
package millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

public final class CustomerStreams {
    static final ObjectMapper JSON = new ObjectMapper();
    static final int DEDUP_WINDOW = 32;
    static final String STORE = "customers";

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], app = args[1], commands = args[2], events = args[3], replies = args[4];
        Properties props = Lifecycle.baseProperties(bootstrap, app, args[5], args[6]);
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        // Static membership: a restarted instance takes its partitions back at once
        // instead of waiting out its old session.
        props.put(StreamsConfig.consumerPrefix("group.instance.id"), app + "-bench");

        Topology topology = new Topology();
        topology.addSource("commands", commands);
        topology.addProcessor("aggregate", Aggregate::new, "commands");
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(STORE), Serdes.String(), Serdes.ByteArray()),
                "aggregate");
        topology.addSink("events", events, "aggregate");
        topology.addSink("replies", replies, "aggregate");

        KafkaStreams streams = new KafkaStreams(topology, props);
        AtomicLong restored = new AtomicLong();
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            public void onRestoreStart(TopicPartition tp, String store, long start, long end) {}
            public void onBatchRestored(TopicPartition tp, String store, long end, long n) {
                restored.addAndGet(n);
            }
            public void onRestoreEnd(TopicPartition tp, String store, long total) {
                // Restoration may go on after RUNNING (the state updater): report each end.
                System.out.println("RESTORED " + restored.get());
                System.out.flush();
            }
        });
        Lifecycle.runUntilStopped(streams, () -> System.out.println("RESTORED " + restored.get()));
    }

    /** One command in, one event (if accepted) and one reply out, the snapshot updated. */
    static final class Aggregate implements Processor<String, byte[], String, byte[]> {
        private ProcessorContext<String, byte[]> context;
        private KeyValueStore<String, byte[]> store;

        @Override
        public void init(ProcessorContext<String, byte[]> context) {
            this.context = context;
            this.store = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<String, byte[]> record) {
            try {
                handle(record);
            } catch (java.io.IOException e) {
                // The benchmark's input is well formed; a real application would dead-letter.
                throw new RuntimeException(e);
            }
        }

        private void handle(Record<String, byte[]> record) throws java.io.IOException {
            JsonNode cmd = JSON.readTree(record.value());
            String id = cmd.get("aggregate_id").asText();
            String commandId = cmd.get("command_id").asText();
            byte[] raw = store.get(id);
            ObjectNode snap = raw == null ? emptySnapshot() : (ObjectNode) JSON.readTree(raw);
            long version = snap.get("version").asLong();
            ObjectNode reply = JSON.createObjectNode().put("command_id", commandId).put("aggregate_id", id);

            for (JsonNode p : snap.get("recent")) {
                if (p.get("command_id").asText().equals(commandId)) {
                    reply.put("outcome", "duplicate").put("original", p.get("outcome").asText()).put("version", p.get("version").asLong());
                    emitReply(record, commandId, reply);
                    return;
                }
            }
            JsonNode expected = cmd.get("expected_version");
            ObjectNode event = null;
            if (expected != null && !expected.isNull() && expected.asLong() != version) {
                reply.put("outcome", "wrong_expected_version").put("expected", expected.asLong()).put("actual", version);
            } else {
                String rejection = null;
                ObjectNode state = (ObjectNode) snap.get("state");
                String status = state.get("status").asText();
                JsonNode payload = cmd.get("payload");
                switch (cmd.get("type").asText()) {
                    case "CreateCustomer" -> {
                        if (status.equals("ACTIVE")) rejection = "customer already exists";
                        else if ((rejection = validate(payload)) == null) event = event(id, version + 1, "CustomerCreated", payload);
                    }
                    case "UpdateCustomer" -> {
                        if (!status.equals("ACTIVE")) rejection = status.equals("NONE") ? "customer does not exist" : "customer is deleted";
                        else if ((rejection = validate(payload)) == null) event = event(id, version + 1, "CustomerUpdated", payload);
                    }
                    case "DeleteCustomer" -> {
                        if (!status.equals("ACTIVE")) rejection = status.equals("NONE") ? "customer does not exist" : "customer is deleted";
                        else event = event(id, version + 1, "CustomerDeleted", JSON.createObjectNode());
                    }
                    default -> rejection = "unknown command type";
                }
                if (event != null) {
                    version += 1;
                    evolve(state, event);
                    snap.put("version", version);
                    reply.put("outcome", "accepted").put("version", version);
                } else {
                    reply.put("outcome", "rejected").put("reason", rejection).put("version", version);
                }
            }
            ArrayNode recent = (ArrayNode) snap.get("recent");
            recent.addObject().put("command_id", commandId).put("outcome", reply.get("outcome").asText()).put("version", version);
            while (recent.size() > DEDUP_WINDOW) recent.remove(0);
            store.put(id, JSON.writeValueAsBytes(snap));
            if (event != null) {
                context.forward(record.withValue(JSON.writeValueAsBytes(event)), "events");
            }
            emitReply(record, commandId, reply);
        }

        private void emitReply(Record<String, byte[]> record, String commandId, ObjectNode reply) throws java.io.IOException {
            context.forward(record.withKey(commandId).withValue(JSON.writeValueAsBytes(reply)), "replies");
        }
    }

    static ObjectNode emptySnapshot() {
        ObjectNode snap = JSON.createObjectNode().put("version", 0L);
        snap.putObject("state").put("name", "").put("email", "").put("status", "NONE");
        snap.putArray("recent");
        return snap;
    }

    static String validate(JsonNode payload) {
        if (payload.path("name").asText().isBlank()) return "name is empty";
        if (!payload.path("email").asText().contains("@")) return "email has no @";
        return null;
    }

    static ObjectNode event(String id, long version, String type, JsonNode payload) {
        ObjectNode e = JSON.createObjectNode().put("aggregate_id", id).put("version", version).put("type", type);
        e.set("payload", payload);
        return e;
    }

    static void evolve(ObjectNode state, JsonNode event) {
        switch (event.get("type").asText()) {
            case "CustomerCreated", "CustomerUpdated" -> {
                state.put("name", event.get("payload").path("name").asText());
                state.put("email", event.get("payload").path("email").asText());
                state.put("status", "ACTIVE");
            }
            case "CustomerDeleted" -> state.put("status", "DELETED");
            default -> { }
        }
    }
}
