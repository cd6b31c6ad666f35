#!/usr/bin/env python3
"""Kafka side of flowlog's export tests, with confluent-kafka (librdkafka): a client
independent of the agent's (rskafka).

  kafka_tool.py create BROKER TOPIC PARTITIONS   create the topic (retrying until the broker answers)
  kafka_tool.py partition BROKER TOPIC KEY...   produce each KEY (empty value) with librdkafka's
                                                 "murmur2" partitioner (the Java client's default)
                                                 and print {"KEY": partition}
  kafka_tool.py consume BROKER TOPIC [QUIET]     print every message of every partition, from the
                                                 beginning to the current end (and on until QUIET
                                                 seconds, default 2, pass without one), as JSON:
                                                 [{"partition", "offset", "key", "value"}, ...]
"""
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
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


def consume(broker, topic, quiet):
    c = Consumer({
        "bootstrap.servers": broker,
        "group.id": "flowlog-test",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    md = c.list_topics(topic=topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    pos, ends = {}, {}
    for p in parts:
        pos[p], ends[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    c.assign([TopicPartition(topic, p, pos[p]) for p in parts])
    out = []
    # Up to the high watermarks, then on until nothing came for `quiet` s: right after an
    # acknowledged produce, tansu 0.6 can report a high watermark that does not count
    # the last batch yet (seen here: the batch was readable a moment later).
    deadline = time.time() + 60
    quiet_until = time.time() + quiet
    while any(pos[p] < ends[p] for p in parts) or time.time() < quiet_until:
        if time.time() > deadline:
            raise SystemExit(f"consume: stuck at {pos}, ends {ends}")
        m = c.poll(0.5)
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
        quiet_until = time.time() + quiet
    c.close()
    json.dump(out, sys.stdout)


def partition(broker, topic, keys):
    p = Producer({"bootstrap.servers": broker, "partitioner": "murmur2"})
    got = {}

    def done(err, msg):
        if err is not None:
            raise SystemExit(f"produce: {err}")
        got[msg.key().decode()] = msg.partition()

    for k in keys:
        p.produce(topic, key=k.encode(), value=b"", on_delivery=done)
    p.flush(30)
    json.dump(got, sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "create":
        create(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "partition":
        partition(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 2.0)
    else:
        raise SystemExit(__doc__)
