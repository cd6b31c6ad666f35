//! The Kubernetes manifests (`deploy/kubernetes`, a Kustomize base): rendered with
//! `kubectl kustomize`, validated offline against the Kubernetes schemas
//! (`kubernetes-validate --strict`) and linted by checkov with no failed check (each
//! accepted finding carries its reason as a `checkov.io/skipN` annotation). Tools:
//! kubectl (on the machine), kubernetes-validate and checkov (PyPI; `bash .ci/setup --tests`).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} is not installed ({e}): run bash .ci/setup --tests"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The rendered manifests, in a scratch file removed on drop.
struct Rendered(PathBuf);

impl Rendered {
    fn new() -> Self {
        let out = Command::new("kubectl")
            .args(["kustomize", "deploy/kubernetes"])
            .current_dir(root())
            .output()
            .expect("kubectl (with kustomize)");
        assert!(
            out.status.success(),
            "kubectl kustomize: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "flowlog-k8s-{}-{}.yaml",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, &out.stdout).unwrap();
        Rendered(path)
    }
    fn text(&self) -> String {
        fs::read_to_string(&self.0).unwrap()
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn manifests_render_and_validate_against_the_schemas() {
    let r = Rendered::new();
    let (ok, out) = run("kubernetes-validate", &["--strict", "--quiet", r.path()]);
    assert!(ok, "kubernetes-validate:\n{out}");
    let text = r.text();
    for kind in [
        "kind: Namespace",
        "kind: ServiceAccount",
        "kind: ClusterRole\n",
        "kind: ClusterRoleBinding",
        "kind: ConfigMap",
        "kind: DaemonSet",
    ] {
        assert!(text.contains(kind), "no {kind:?} in:\n{text}");
    }
}

#[test]
fn checkov_finds_nothing_unexplained() {
    let r = Rendered::new();
    let (ok, out) = run(
        "checkov",
        &[
            "-f",
            r.path(),
            "--framework",
            "kubernetes",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
    );
    assert!(ok, "checkov failed:\n{out}");
    assert!(out.contains("Failed checks: 0,"), "{out}");
    // Every skip is an annotation with its reason next to the setting.
    let text = r.text();
    let skips = text.matches("checkov.io/skip").count();
    assert!(
        out.contains(&format!("Skipped checks: {skips}")),
        "{skips} annotations: {out}"
    );
}

/// The least-privilege settings the deployment promises.
#[test]
fn daemonset_is_least_privilege() {
    let text = Rendered::new().text();
    for needle in [
        "hostNetwork: true",
        "privileged: false",
        "allowPrivilegeEscalation: false",
        "readOnlyRootFilesystem: true",
        "- ALL",
        "- BPF\n",
        "- NET_ADMIN\n",
        "- PERFMON\n",
        "type: RuntimeDefault",
        "path: /healthz",
        "path: /readyz",
        "- $(HOST_IP):9464",
        "operator: Exists",
        "mountPath: /sys/fs/bpf",
        "verbs:\n  - get\n  - list\n  - watch",
        "automountServiceAccountToken: true",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(!text.contains("privileged: true"));
    assert!(!text.contains("- SYS_ADMIN"));
}
