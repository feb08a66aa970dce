// The seed's shipping enrichment, written as a Kafka Streams DSL user would: orders re-keyed
// by their customer through a repartition topic (`selectKey` + `repartition`), then
// left-joined with a KTable of customers, exactly_once_v2, the same commit interval and
// producer settings as millrace. It does the same work per order as millrace's
// co-partitioned join: parse the order, take its customer id, look the customer up, and
// write `{"stream": order, "table": customer-or-null}` as JSON.
//
// The repartition topic is `<APPLICATION_ID>-by-customer-repartition`, as millrace's; the
// benchmark counts enriched orders by the offsets the application commits on it.
// Prints "RUNNING" once the instance is running.
//
// Usage: OrderJoinStreams BOOTSTRAP APPLICATION_ID CUSTOMERS ORDERS OUTPUT STATE_DIR COMMIT_MS
package millrace.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.util.Properties;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Joined;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.state.KeyValueStore;

public final class OrderJoinStreams {
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], app = args[1], customersTopic = args[2], ordersTopic = args[3], output = args[4];
        Properties props = Lifecycle.baseProperties(bootstrap, app, args[5], args[6]);

        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, byte[]> customers = builder.table(
                customersTopic,
                Consumed.with(Serdes.String(), Serdes.ByteArray()),
                Materialized.<String, byte[], KeyValueStore<Bytes, byte[]>>as("customers")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Serdes.ByteArray()));
        KStream<String, byte[]> orders = builder.stream(ordersTopic, Consumed.with(Serdes.String(), Serdes.ByteArray()));
        orders.selectKey((key, order) -> customerId(order))
                .repartition(Repartitioned.<String, byte[]>as("by-customer")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Serdes.ByteArray()))
                .leftJoin(customers, OrderJoinStreams::enrich, Joined.with(Serdes.String(), Serdes.ByteArray(), Serdes.ByteArray()))
                .to(output, Produced.with(Serdes.String(), Serdes.ByteArray()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        Lifecycle.runUntilStopped(streams, () -> {});
    }

    static String customerId(byte[] order) {
        try {
            JsonNode id = JSON.readTree(order).get("customer_id");
            return id == null || id.isNull() ? null : id.asText();
        } catch (IOException e) {
            // The benchmark's input is well formed; a real application would dead-letter.
            throw new RuntimeException(e);
        }
    }

    static byte[] enrich(byte[] order, byte[] customer) {
        try {
            ObjectNode joined = JSON.createObjectNode();
            joined.set("stream", JSON.readTree(order));
            joined.set("table", customer == null ? JSON.nullNode() : JSON.readTree(customer));
            return JSON.writeValueAsBytes(joined);
        } catch (IOException e) {
            throw new RuntimeException(e);
        }
    }
}
