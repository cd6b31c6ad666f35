#!/usr/bin/env python3
"""Kafka side of flowlog's export tests, with confluent-kafka (librdkafka): a client
independent of the agent's (rskafka).

  kafka_tool.py create BROKER TOPIC PARTITIONS   create the topic (retrying until the broker answers)
  kafka_tool.py consume BROKER TOPIC             print every message of every partition, from the
                                                 beginning to the current end, as JSON:
                                                 [{"partition", "offset", "key", "value"}, ...]
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(broker, topic, partitions):
    admin = AdminClient({"bootstrap.servers": broker})
    deadline = time.time() + 30
    while True:
        try:
            fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
            fs[topic].result(timeout=10)
            break
        except KafkaException as e:
            if time.time() > deadline:
                raise
            print(f"create: {e}; retrying", file=sys.stderr)
            time.sleep(0.5)
    # Wait until the metadata shows every partition.
    while time.time() < deadline:
        md = admin.list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            print("ready", flush=True)
            return
        time.sleep(0.2)
    raise SystemExit("topic not visible")


def consume(broker, topic):
    c = Consumer({
        "bootstrap.servers": broker,
        "group.id": "flowlog-test",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    md = c.list_topics(topic=topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    ends = {}
    assign = []
    for p in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends[p] = hi
        if hi > lo:
            assign.append(TopicPartition(topic, p, lo))
    out = []
    if assign:
        c.assign(assign)
        pos = {tp.partition: tp.offset for tp in assign}
        deadline = time.time() + 60
        while any(pos[p] < ends[p] for p in pos):
            if time.time() > deadline:
                raise SystemExit(f"consume: stuck at {pos}, ends {ends}")
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                raise SystemExit(f"consume: {m.error()}")
            out.append({
                "partition": m.partition(),
                "offset": m.offset(),
                "key": m.key().decode() if m.key() is not None else None,
                "value": m.value().decode(),
            })
            pos[m.partition()] = m.offset() + 1
    c.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
