//! Pod metadata for records on Kubernetes (feature `kubernetes`).
//!
//! A reflector (kube-runtime: list, then watch, relisting when the watch expires)
//! keeps every pod of the cluster in memory. Once per window the agent takes a
//! [`PodIndex`] snapshot (pod IP -> name, namespace, selected labels) and each OK
//! record gets fields beyond the base record:
//!
//! ```text
//! node-name, src-pod-name, src-pod-namespace, dst-pod-name, dst-pod-namespace,
//! src-pod-label-<key>, dst-pod-label-<key>   (one pair per --pod-label KEY)
//! ```
//!
//! `-` where an address is no known pod (or the label is missing). No API call is made
//! per record or per packet. Host-network pods are left out (their address is the
//! node's), and so are finished pods (their address may be reused).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{reflector, watcher, WatchStreamExt as _},
    Api, Client, Config,
};
use tracing::{info, warn};

pub use crate::config::KubeSettings;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// What a record says about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Pods by address, as of one moment.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_ip: HashMap<IpAddr, Arc<PodInfo>>,
}

impl PodIndex {
    /// Indexes `pods` by their addresses (not host-network, not finished).
    pub fn build<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> PodIndex {
        let mut by_ip = HashMap::new();
        for pod in pods {
            let spec_host = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
            if spec_host || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let info = Arc::new(PodInfo {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
            });
            let ips = status
                .and_then(|s| s.pod_ips.as_ref())
                .map(|v| v.iter().map(|p| p.ip.clone()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(status.and_then(|s| s.pod_ip.clone()));
            for ip in ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    by_ip.insert(ip, Arc::clone(&info));
                }
            }
        }
        PodIndex { by_ip }
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&PodInfo> {
        self.by_ip.get(ip).map(|a| &**a)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// Appends the pod fields to a rendered record line (which ends in `}\n`).
pub fn append_fields(
    out: &mut Vec<u8>,
    index: &PodIndex,
    settings: &KubeSettings,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
) {
    debug_assert!(out.ends_with(b"}\n"));
    out.truncate(out.len() - 2);
    let mut field = |name: &str, value: Option<&str>| {
        out.push(b',');
        push_json_str(out, name);
        out.push(b':');
        push_json_str(out, value.unwrap_or("-"));
    };
    field("node-name", Some(&settings.node_name));
    let src = src.and_then(|ip| index.get(&ip));
    let dst = dst.and_then(|ip| index.get(&ip));
    for (side, pod) in [("src", src), ("dst", dst)] {
        field(&format!("{side}-pod-name"), pod.map(|p| p.name.as_str()));
        field(
            &format!("{side}-pod-namespace"),
            pod.map(|p| p.namespace.as_str()),
        );
        for key in &settings.labels {
            field(
                &format!("{side}-pod-label-{key}"),
                pod.and_then(|p| p.labels.get(key)).map(String::as_str),
            );
        }
    }
    out.extend_from_slice(b"}\n");
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires.
    out.extend_from_slice(serde_json::to_string(s).unwrap_or_default().as_bytes());
}

/// The running watcher: a reflector store kept current by a task on the runtime.
pub struct PodWatcher {
    store: reflector::Store<Pod>,
    pub settings: KubeSettings,
}

impl PodWatcher {
    /// Connects and starts the watch (list, then watch; relists when the watch
    /// expires; retries with backoff when the API server is unreachable). Does not
    /// wait for the first list: records carry `-` until it arrives.
    pub async fn start(settings: KubeSettings) -> Result<PodWatcher, KubeError> {
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })?
            }
            None => Config::infer().await.map_err(KubeError::Infer)?,
        };
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config).map_err(KubeError::Client)?;
        let (store, writer) = reflector::store::<Pod>();
        let stream = reflector(
            writer,
            watcher(Api::<Pod>::all(client), watcher::Config::default()),
        )
        .default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) if failing => {
                        info!("pod watch recovered");
                        failing = false;
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        warn!(error = %e, "pod watch failed; retrying with backoff");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
        info!(%server, labels = ?settings.labels, node = %settings.node_name, "watching pods");
        Ok(PodWatcher { store, settings })
    }

    /// Pods as of now.
    pub fn snapshot(&self) -> PodIndex {
        let pods = self.store.state();
        PodIndex::build(pods.iter().map(|p| &**p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, host: bool, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"hostNetwork": host, "containers": []},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn index_skips_host_network_and_finished_pods() {
        let pods = [
            pod("web", "10.0.0.5", false, "Running"),
            pod("node-agent", "192.168.1.1", true, "Running"),
            pod("job", "10.0.0.6", false, "Succeeded"),
        ];
        let idx = PodIndex::build(pods.iter());
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.get(&"10.0.0.5".parse().unwrap()).unwrap().name, "web");
    }

    #[test]
    fn fields_are_appended_to_the_record() {
        let pods = [pod("web", "10.0.0.5", false, "Running")];
        let idx = PodIndex::build(pods.iter());
        let settings = KubeSettings {
            kubeconfig: None,
            labels: vec!["app".into(), "tier".into()],
            node_name: "node-1".into(),
        };
        let mut out = b"{\"version\":\"1\"}\n".to_vec();
        append_fields(
            &mut out,
            &idx,
            &settings,
            Some("10.0.0.5".parse().unwrap()),
            Some("10.9.9.9".parse().unwrap()),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["node-name"], "node-1");
        assert_eq!(v["src-pod-name"], "web");
        assert_eq!(v["src-pod-namespace"], "shop");
        assert_eq!(v["src-pod-label-app"], "web");
        assert_eq!(v["src-pod-label-tier"], "-");
        assert_eq!(v["dst-pod-name"], "-");
        assert_eq!(v["dst-pod-namespace"], "-");
        assert!(out.ends_with(b"}\n"));
    }
}
