//! The `kafka` sink: one Kafka message per record, through a [`Spool`].
//!
//! * **Message**: the value is the record's JSON line (without the newline), or its
//!   text-format line with `format = "text"`; the key is the record's `eni-id`, and
//!   the partition is chosen from the key as Kafka's own default partitioner does
//!   (murmur2 of the key, positive, modulo the partition count), so one
//!   interface's records stay in one partition, in order, and other producers
//!   keying by `eni-id` land in the same place.
//! * **Client**: [`rskafka`] (Rust, on tokio; lz4/zstd through small C libraries
//!   built by `cc`). `rdkafka` would bring an idempotent producer, but it builds all
//!   of librdkafka from C (cmake, a C toolchain and its headers in every build and
//!   image), and idempotence would only remove the duplicate of a request whose
//!   acknowledgement was lost: the spool's replay of a failed chunk is new records to
//!   the broker's producer-id sequence. Consumers deduplicate by `record-id` either
//!   way.
//! * **Acknowledgement**: every produce request asks for `acks = all` (-1): the
//!   spool advances only once all in-sync replicas have the records.
//! * **Batching and compression**: each spool chunk (up to 1 MiB of lines) becomes one
//!   produce request per partition (split at [`BATCH_RECORDS`] records or
//!   [`BATCH_BYTES`] bytes), compressed with lz4 (default) or zstd.
//! * **Failures**: rskafka retries a request for up to [`RETRY_DEADLINE`]; then the
//!   send fails, the client is rebuilt on the next attempt and the spool retries
//!   with its backoff. Batches a broker acknowledged before a later batch of the
//!   same chunk failed are remembered and not produced again when the chunk is
//!   retried; only a request whose acknowledgement was lost (the broker died
//!   after writing) can put a record in the topic twice.
//! * **The topic** must exist (created by the cluster's operator, with the partition
//!   count and replication they want); a missing topic fails the send and is
//!   retried like an unreachable broker.
//!
//! [`Spool`]: super::spool::Spool
use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    hash::{Hash as _, Hasher as _},
    io,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use rskafka::client::{
    partition::{PartitionClient, UnknownTopicHandling},
    Client, ClientBuilder,
};

use super::{spool::Deliver, text::TextFormat};

/// Longest time rskafka retries one request before the send fails.
pub const RETRY_DEADLINE: Duration = Duration::from_secs(10);
/// Longest time one send (all partitions of a chunk) may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produce request at most.
pub const BATCH_RECORDS: usize = 2000;
/// Uncompressed bytes per produce request at most (below the brokers' default
/// `message.max.bytes` of 1 MiB).
pub const BATCH_BYTES: usize = 768 * 1024;

/// Compression of the record batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

/// `[[sink]] type = "kafka"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: Vec<String>,
    pub topic: String,
    pub compression: Compression,
}

/// Checks a topic name as Kafka does (legal characters, length).
pub fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("it is empty");
    }
    if topic == "." || topic == ".." {
        return Err("'.' and '..' are not allowed");
    }
    if topic.len() > 249 {
        return Err("longer than 249 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Kafka's murmur2 (as in the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a key among `partitions`, as Kafka's default partitioner.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// One record ready to produce.
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    hash: u64,
}

fn line_hash(line: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    line.hash(&mut h);
    h.finish()
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Delivery of spooled lines to a Kafka topic.
pub struct KafkaDeliver {
    settings: KafkaSettings,
    text: Option<TextFormat>,
    client: Option<(Arc<Client>, i32)>,
    partitions: HashMap<i32, Arc<PartitionClient>>,
    /// Lines (by hash, with multiplicity) of the chunk being retried that a broker
    /// already acknowledged.
    acked: HashMap<u64, u32>,
}

impl KafkaDeliver {
    pub fn new(settings: KafkaSettings, text: Option<TextFormat>) -> Self {
        KafkaDeliver {
            settings,
            text,
            client: None,
            partitions: HashMap::new(),
            acked: HashMap::new(),
        }
    }

    /// The client and the topic's partition count.
    async fn client(&mut self) -> io::Result<(Arc<Client>, i32)> {
        if let Some((c, n)) = &self.client {
            return Ok((Arc::clone(c), *n));
        }
        let client = ClientBuilder::new(self.settings.brokers.clone())
            .client_id("flowlog")
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
                deadline: Some(RETRY_DEADLINE),
            })
            .build()
            .await
            .map_err(other)?;
        let topics = client.list_topics().await.map_err(other)?;
        let Some(t) = topics.iter().find(|t| t.name == self.settings.topic) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("topic {:?} does not exist", self.settings.topic),
            ));
        };
        let n = t.partitions.len() as i32;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("topic {:?} has no partitions", self.settings.topic),
            ));
        }
        tracing::info!(destination = %self.describe(), partitions = n, "connected");
        let client = Arc::new(client);
        self.client = Some((Arc::clone(&client), n));
        Ok((client, n))
    }

    async fn partition(&mut self, client: &Client, p: i32) -> io::Result<Arc<PartitionClient>> {
        if let Some(c) = self.partitions.get(&p) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(
            client
                .partition_client(self.settings.topic.clone(), p, UnknownTopicHandling::Error)
                .await
                .map_err(other)?,
        );
        self.partitions.insert(p, Arc::clone(&c));
        Ok(c)
    }

    fn compression(&self) -> rskafka::client::partition::Compression {
        use rskafka::client::partition::Compression as C;
        match self.settings.compression {
            Compression::None => C::NoCompression,
            Compression::Lz4 => C::Lz4,
            Compression::Zstd => C::Zstd,
        }
    }

    async fn send_chunk(&mut self, lines: &[u8]) -> io::Result<()> {
        let (client, n) = self.client().await?;
        // Per partition, in the order of the lines.
        let mut by_partition: BTreeMap<i32, Vec<Pending>> = BTreeMap::new();
        let mut skip = self.acked.clone();
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let hash = line_hash(line);
            if let Some(c) = skip.get_mut(&hash).filter(|c| **c > 0) {
                *c -= 1;
                continue;
            }
            let parsed: Option<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_slice(line).ok();
            let key = parsed
                .as_ref()
                .and_then(|m| m.get("eni-id"))
                .and_then(|v| v.as_str())
                .unwrap_or("-")
                .as_bytes()
                .to_vec();
            let value = match &self.text {
                Some(t) => {
                    let mut v = t.convert(line);
                    v.pop(); // the newline
                    v
                }
                None => line.to_vec(),
            };
            by_partition
                .entry(partition_of(&key, n))
                .or_default()
                .push(Pending { key, value, hash });
        }
        let compression = self.compression();
        for (p, records) in by_partition {
            let pc = self.partition(&client, p).await?;
            let mut batch = Vec::new();
            let mut hashes = Vec::new();
            let mut bytes = 0;
            let mut it = records.into_iter().peekable();
            while let Some(r) = it.next() {
                bytes += r.key.len() + r.value.len();
                hashes.push(r.hash);
                batch.push(rskafka::record::Record {
                    key: Some(r.key),
                    value: Some(r.value),
                    headers: BTreeMap::new(),
                    timestamp: chrono::Utc::now(),
                });
                let full = batch.len() >= BATCH_RECORDS
                    || it
                        .peek()
                        .is_some_and(|n| bytes + n.key.len() + n.value.len() > BATCH_BYTES);
                if full || it.peek().is_none() {
                    pc.produce(std::mem::take(&mut batch), compression)
                        .await
                        .map_err(other)?;
                    for h in hashes.drain(..) {
                        *self.acked.entry(h).or_default() += 1;
                    }
                    bytes = 0;
                }
            }
        }
        self.acked.clear();
        Ok(())
    }
}

impl Deliver for KafkaDeliver {
    fn send<'a>(
        &'a mut self,
        lines: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let result = match tokio::time::timeout(SEND_TIMEOUT, self.send_chunk(lines)).await {
                Ok(r) => r,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            };
            if result.is_err() {
                // Connections and leaders are found again on the next attempt.
                self.client = None;
                self.partitions.clear();
            }
            result
        })
    }

    fn describe(&self) -> String {
        format!(
            "kafka://{}/{}",
            self.settings.brokers.join(","),
            self.settings.topic
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Java client's `UtilsTest.testMurmur2` and its default
    /// partitioner.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k), want, "{}", String::from_utf8_lossy(k));
        }
        assert_eq!(partition_of(b"21", 7), (-973932308i32 & 0x7fff_ffff) % 7);
    }

    #[test]
    fn topic_names() {
        assert!(check_topic("flow-logs.v1_a").is_ok());
        assert_eq!(check_topic(""), Err("it is empty"));
        assert!(check_topic("..").is_err());
        assert!(check_topic("a b").is_err());
        assert!(check_topic(&"x".repeat(250)).is_err());
    }

    #[tokio::test]
    async fn no_broker_is_an_error_within_the_send_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut d = KafkaDeliver::new(
            KafkaSettings {
                brokers: vec![addr.clone()],
                topic: "t".into(),
                compression: Compression::Lz4,
            },
            None,
        );
        assert_eq!(d.describe(), format!("kafka://{addr}/t"));
        let started = std::time::Instant::now();
        assert!(d.send(b"{\"eni-id\":\"e\"}\n").await.is_err());
        assert!(started.elapsed() <= SEND_TIMEOUT + Duration::from_secs(1));
    }
}
