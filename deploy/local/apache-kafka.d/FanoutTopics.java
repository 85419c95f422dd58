/* Creates the project's topics on a Kafka broker through the admin API, and
 * waits until every partition of each has a leader. Idempotent: a topic that
 * exists already is fine (a different partition count is reported, not
 * changed). Used by deploy/local/apache-kafka; compiled once into its cache.
 *
 * usage: FanoutTopics BOOTSTRAP PARTITIONS TIMEOUT_MS TOPIC...
 * exit 0 when all topics exist with leaders, 1 on timeout or a hard error. */
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.KafkaFuture;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.UnknownTopicOrPartitionException;

public final class FanoutTopics {
  private static void log(String msg) {
    System.err.println("apache-kafka: " + msg);
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 4) {
      log("usage: FanoutTopics BOOTSTRAP PARTITIONS TIMEOUT_MS TOPIC...");
      System.exit(2);
    }
    String bootstrap = args[0];
    int partitions = Integer.parseInt(args[1]);
    long deadline = System.currentTimeMillis() + Long.parseLong(args[2]);
    List<String> topics = new ArrayList<>();
    for (int i = 3; i < args.length; i++) {
      topics.add(args[i]);
    }

    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(AdminClientConfig.CLIENT_ID_CONFIG, "fanout-topics");
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "10000");
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
    p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
    try (Admin admin = Admin.create(p)) {
      List<String> missing = new ArrayList<>(topics);
      String last = "";
      while (!missing.isEmpty()) {
        if (System.currentTimeMillis() > deadline) {
          log("timed out creating topics " + missing + ": " + last);
          System.exit(1);
        }
        List<NewTopic> req = new ArrayList<>();
        for (String t : missing) {
          req.add(new NewTopic(t, partitions, (short) 1));
        }
        Map<String, KafkaFuture<Void>> res = admin.createTopics(req).values();
        List<String> still = new ArrayList<>();
        for (String t : missing) {
          try {
            res.get(t).get(10, TimeUnit.SECONDS);
            log("created topic " + t + " partitions=" + partitions);
          } catch (ExecutionException e) {
            if (e.getCause() instanceof TopicExistsException) {
              continue;
            }
            last = String.valueOf(e.getCause());
            still.add(t);
          } catch (java.util.concurrent.TimeoutException e) {
            last = "request timed out";
            still.add(t);
          }
        }
        missing = still;
        if (!missing.isEmpty()) {
          Thread.sleep(200);
        }
      }

      /* Created is not yet served: wait until each partition has a leader. */
      while (true) {
        if (System.currentTimeMillis() > deadline) {
          log("timed out waiting for partition leaders of " + topics);
          System.exit(1);
        }
        boolean ready = true;
        try {
          Map<String, TopicDescription> desc =
              admin.describeTopics(topics).allTopicNames().get(10, TimeUnit.SECONDS);
          for (String t : topics) {
            TopicDescription d = desc.get(t);
            for (TopicPartitionInfo tp : d.partitions()) {
              if (tp.leader() == null || tp.leader().isEmpty()) {
                ready = false;
              }
            }
            if (ready && d.partitions().size() != partitions) {
              log("topic " + t + " exists with " + d.partitions().size()
                  + " partitions (asked for " + partitions + "); left as it is");
            }
          }
        } catch (ExecutionException e) {
          if (!(e.getCause() instanceof UnknownTopicOrPartitionException)) {
            log("describe: " + e.getCause());
          }
          ready = false;
        } catch (java.util.concurrent.TimeoutException e) {
          ready = false;
        }
        if (ready) {
          break;
        }
        Thread.sleep(100);
      }
    }
    System.exit(0);
  }
}
