//! Pod metadata (`--kubeconfig`, feature `kubernetes`) against a fake API server that
//! serves recorded list and watch responses: the pods of a list, then watch events
//! (a label change, a pod deleted, a new pod on the same address), then a watch that
//! expires (`410 Gone`) and a relist. After each change, the records of new traffic
//! carry the pods as they are then. The fake server listens on the loopback of the
//! agent's network namespace.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{
        mpsc::{self, Receiver},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use flowlog_tests::{
    require_root,
    traffic::{udp_send, v4, UdpSink},
    with_netns, Agent, Filter, Netns, Record, VethPair,
};
use serde_json::{json, Value};

const PORT: u16 = 16443;

fn pod(name: &str, ns: &str, ip: Ipv4Addr, app: &str, rv: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "resourceVersion": rv.to_string(), "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": "test-node"},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
    })
}

fn pod_list(items: Vec<Value>, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList",
           "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}

/// The fake API server: answers lists with the current list, hands every watch
/// connection to the test (which writes the events), and logs the requests.
struct FakeApi {
    list: Arc<Mutex<Value>>,
    requests: Arc<Mutex<Vec<String>>>,
    watches: Receiver<TcpStream>,
}

impl FakeApi {
    fn start(ns: &str, list: Value) -> FakeApi {
        let listener = with_netns(ns, || {
            TcpListener::bind(("127.0.0.1", PORT)).expect("fake API server port")
        });
        let list = Arc::new(Mutex::new(list));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, watches) = mpsc::channel();
        let (l, r) = (Arc::clone(&list), Arc::clone(&requests));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                // Skip the headers.
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                r.lock().unwrap().push(target.clone());
                if !target.starts_with("/api/v1/pods") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                } else if target.contains("watch=true") || target.contains("watch=1") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    if tx.send(conn).is_err() {
                        break;
                    }
                } else {
                    let body = l.lock().unwrap().to_string();
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        FakeApi {
            list,
            requests,
            watches,
        }
    }

    fn lists(&self) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|t| !t.contains("watch="))
            .count()
    }

    /// The next watch connection the agent opens.
    fn next_watch(&self) -> TcpStream {
        self.watches
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no watch request; requests: {:?}", self.requests))
    }
}

/// Writes one watch event as a chunk.
fn send_event(w: &mut TcpStream, kind: &str, object: Value) {
    let line = format!("{}\n", json!({"type": kind, "object": object}));
    write!(w, "{:x}\r\n{line}\r\n", line.len()).unwrap();
    w.flush().unwrap();
}

/// Sends 3 datagrams from `sport` and returns the record of that stream once the agent
/// printed it.
fn burst(
    a: &Netns,
    v: &VethPair,
    agent: &Agent,
    sink: &UdpSink,
    sport: u16,
    seen: &mut u64,
) -> Record {
    assert_eq!(
        udp_send(
            a.name(),
            v4(v.v4_a, sport),
            v4(v.v4_b, 5001),
            &[10, 10, 10],
            None
        ),
        3
    );
    *seen += 3;
    assert_eq!(sink.wait_for(*seen, Duration::from_secs(5)), *seen);
    let f = Filter::ok().dir("out").proto(17).sport(sport);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let recs = agent.records();
        let sel: Vec<&Record> = f.select(&recs);
        if let Some(r) = sel.first() {
            assert_eq!(r.packets(), 3, "{}", r.raw);
            return (*r).clone();
        }
        assert!(Instant::now() < deadline, "no record of port {sport}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn pods_of(r: &Record) -> (String, String, String, String, String, String) {
    (
        r.field("src-pod-name").to_string(),
        r.field("src-pod-namespace").to_string(),
        r.field("src-pod-label-app").to_string(),
        r.field("dst-pod-name").to_string(),
        r.field("dst-pod-namespace").to_string(),
        r.field("dst-pod-label-app").to_string(),
    )
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn records_carry_the_pods_through_watch_events_and_a_relist() {
    require_root();
    let a = Netns::new("k8s-a");
    let b = Netns::new("k8s-b");
    let v = VethPair::new(&a, &b, "k8s", 1);
    let client = |app: &str, rv| pod("client-1", "shop", v.v4_a, app, rv);
    let api = FakeApi::start(
        a.name(),
        pod_list(
            vec![
                client("client", 1),
                pod("server-1", "shop", v.v4_b, "server", 2),
            ],
            10,
        ),
    );
    let dir = std::env::temp_dir().join(format!("flowlog-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{PORT}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let config = dir.join("flowlog.toml");
    std::fs::write(&config, "[kubernetes]\nnode_name = \"test-node\"\n").unwrap();
    let sink = UdpSink::bind(b.name(), v4(v.v4_b, 5001));
    let agent = Agent::start(
        a.name(),
        &[
            "run",
            "--interface",
            &v.if_a,
            "--window",
            "2s",
            "--config",
            config.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--pod-label",
            "app",
        ],
    );
    let mut watch = api.next_watch();
    let mut seen = 0;

    // 1. The listed pods.
    let r = burst(&a, &v, &agent, &sink, 41000, &mut seen);
    assert_eq!(r.field("node-name"), "test-node");
    assert_eq!(
        pods_of(&r),
        (
            s("client-1"),
            s("shop"),
            s("client"),
            s("server-1"),
            s("shop"),
            s("server")
        )
    );

    // 2. Watch events: a label change, the server pod deleted, a new one on its address.
    send_event(&mut watch, "MODIFIED", client("client-v2", 11));
    send_event(
        &mut watch,
        "DELETED",
        pod("server-1", "shop", v.v4_b, "server", 12),
    );
    send_event(
        &mut watch,
        "ADDED",
        pod("server-2", "shop2", v.v4_b, "server-b", 13),
    );
    thread::sleep(Duration::from_millis(500));
    let r = burst(&a, &v, &agent, &sink, 41001, &mut seen);
    assert_eq!(
        pods_of(&r),
        (
            s("client-1"),
            s("shop"),
            s("client-v2"),
            s("server-2"),
            s("shop2"),
            s("server-b")
        )
    );

    // 3. The watch expires: the agent lists again and gets the state of then.
    let lists_before = api.lists();
    *api.list.lock().unwrap() = pod_list(vec![client("client-v3", 20)], 20);
    send_event(
        &mut watch,
        "ERROR",
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
               "message": "too old resource version", "reason": "Expired", "code": 410}),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.lists() == lists_before {
        assert!(
            Instant::now() < deadline,
            "no relist after 410: {:?}",
            api.requests
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    let r = burst(&a, &v, &agent, &sink, 41002, &mut seen);
    assert_eq!(
        pods_of(&r),
        (
            s("client-1"),
            s("shop"),
            s("client-v3"),
            s("-"),
            s("-"),
            s("-")
        )
    );

    let recs = agent.stop();
    sink.finish();
    // Exact counts throughout, and the fields only on OK records.
    let (p, _) = flowlog_tests::totals(Filter::ok().dir("out").proto(17).select(&recs));
    assert_eq!(p, 9);
    let _ = std::fs::remove_dir_all(&dir);
}
