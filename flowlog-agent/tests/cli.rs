//! The `flowlog` binary as a user runs it, unprivileged: version, bad input, and the
//! hand-over of `flowlog query` / `flowlog report` to the separate `flowlog-query`.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Command, Output},
};

const FLOWLOG: &str = env!("CARGO_BIN_EXE_flowlog");

/// A private directory holding a copy of `flowlog` (so that the lookup "next to the
/// executable" sees only what the test puts there), removed on drop.
struct Sandbox(PathBuf);

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("flowlog-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(FLOWLOG, dir.join("flowlog")).unwrap();
        Self(dir)
    }

    fn script(&self, name: &str, body: &str) {
        let p = self.0.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Run the copied `flowlog` with an empty PATH.
    fn flowlog(&self, args: &[&str]) -> Output {
        output(
            Command::new(self.0.join("flowlog"))
                .args(args)
                .env("PATH", ""),
        )
    }
}

/// `cmd.output()`, retried while exec fails with ETXTBSY: a file this test process just
/// wrote (the copied binary, a script) can still be open for writing in a child that
/// another test thread forked meanwhile, until that child execs.
fn output(cmd: &mut Command) -> Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{cmd:?}: executable still busy after 2 s")
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version() {
    let out = Command::new(FLOWLOG).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("flowlog {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_window_is_a_usage_error() {
    let out = Command::new(FLOWLOG)
        .args(["run", "--interface", "lo", "--window", "7x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("window"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn query_without_the_analysis_binary_names_the_install_command() {
    let sb = Sandbox::new("absent");
    for sub in ["query", "report"] {
        let out = sb.flowlog(&[sub, "--logs", "x", "* | select 1"]);
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(out.stdout.is_empty());
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("`flowlog {sub}` needs the `flowlog-query` binary")),
            "{err}"
        );
        assert!(
            err.contains("cargo install --locked --path flowlog-query"),
            "{err}"
        );
    }
}

#[test]
fn query_and_report_hand_every_argument_to_flowlog_query() {
    let sb = Sandbox::new("present");
    // Prints its arguments one per line, reads stdin, exits 3.
    sb.script(
        "flowlog-query",
        "#!/bin/sh\nfor a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\n/bin/cat\nexit 3\n",
    );
    let out = output(
        Command::new(sb.0.join("flowlog"))
            .args(["query", "--logs", "a b", "--help", "-", "* | select 1"])
            .env("PATH", "")
            .stdin(fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli.rs")).unwrap()),
    );
    assert_eq!(out.status.code(), Some(3));
    let got = text(&out.stdout);
    let mut lines = got.lines();
    let args: Vec<_> = lines.by_ref().take(6).collect();
    assert_eq!(
        args,
        [
            "<query>",
            "<--logs>",
            "<a b>",
            "<--help>",
            "<->",
            "<* | select 1>"
        ]
    );
    // stdin is the caller's (a query given as `-` is read from it).
    assert_eq!(
        lines.next(),
        Some(
            "//! The `flowlog` binary as a user runs it, unprivileged: version, bad input, and the"
        )
    );

    let out = sb.flowlog(&["report", "--out", "r.html"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "<report>\n<--out>\n<r.html>\n");
}
