// The part of kafka-topics.sh that deploy/compose uses, for the local Kafka
// image (deploy/compose/local/kafka): the Maven jars have no kafka-tools.
//   --bootstrap-server B --list
//   --bootstrap-server B --create [--if-not-exists] --topic T --partitions N
//                        --replication-factor R
// Waits for the broker up to KAFKA_TOPICS_TIMEOUT_MS (default 120000): under
// podman-compose, which does not wait for health checks, this runs while the
// broker is still starting.
import java.util.Collections;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;

public final class KafkaTopics {
  public static void main(String[] args) throws Exception {
    String bootstrap = null, topic = null;
    boolean list = false, create = false, ifNotExists = false;
    int partitions = 1;
    short rf = 1;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--bootstrap-server": bootstrap = args[++i]; break;
        case "--topic": topic = args[++i]; break;
        case "--partitions": partitions = Integer.parseInt(args[++i]); break;
        case "--replication-factor": rf = Short.parseShort(args[++i]); break;
        case "--list": list = true; break;
        case "--create": create = true; break;
        case "--if-not-exists": ifNotExists = true; break;
        default:
          System.err.println("kafka-topics: unsupported option " + args[i]);
          System.exit(2);
      }
    }
    if (bootstrap == null || list == create || (create && topic == null)) {
      System.err.println("usage: kafka-topics.sh --bootstrap-server B (--list | --create"
          + " [--if-not-exists] --topic T --partitions N --replication-factor R)");
      System.exit(2);
    }
    String env = System.getenv("KAFKA_TOPICS_TIMEOUT_MS");
    int timeout = env != null ? Integer.parseInt(env) : (list ? 10000 : 120000);
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeout);
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.min(timeout, 10000));
    try (Admin admin = Admin.create(p)) {
      if (list) {
        for (String t : admin.listTopics().names().get()) {
          System.out.println(t);
        }
        return;
      }
      try {
        admin.createTopics(Collections.singleton(new NewTopic(topic, partitions, rf))).all().get();
        System.out.println("Created topic " + topic + ".");
      } catch (ExecutionException e) {
        if (!(e.getCause() instanceof TopicExistsException) || !ifNotExists) {
          throw e;
        }
      }
    }
  }
}
