#!/bin/sh
# The subset of Kafka's kafka-topics.sh that deploy/compose uses (--list,
# --create [--if-not-exists] --topic --partitions --replication-factor), by
# the admin client (KafkaTopics.java): the jars from Maven Central have no
# kafka-tools.
exec java -XX:TieredStopAtLevel=1 -Dlog4j.configuration=file:/opt/kafka/config/tools-log4j.properties \
  -cp "/opt/kafka/libs/*:/opt/kafka/classes" KafkaTopics "$@"
