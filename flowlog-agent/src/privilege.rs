//! Start-up privilege check.
//!
//! Loading eBPF programs and maps needs `CAP_BPF` plus `CAP_PERFMON` (tracing-like
//! helpers, pointer arithmetic in the verifier), and attaching TC/XDP programs needs
//! `CAP_NET_ADMIN`; on kernels before 5.8 (no `CAP_BPF`) `CAP_SYS_ADMIN` covers
//! loading. [`check`] reads the effective set from `/proc/self/status` before any
//! work is done, so a missing capability is reported up front by name instead of as
//! a bare `EPERM` from the kernel. It is a best-effort pre-flight: a later `EPERM`
//! (seccomp, LSM, user namespaces, old memlock accounting) is explained by
//! [`explain_eperm`].

use std::io;

/// Capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Capabilities that together suffice without `CAP_SYS_ADMIN`, with their names.
const NEEDED: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_PERFMON, "CAP_PERFMON"),
];

const STATUS_PATH: &str = "/proc/self/status";

/// The remedy, repeated in errors.
pub const REMEDY: &str = "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
     (e.g. sudo, or setcap cap_bpf,cap_net_admin,cap_perfmon+ep)";

/// The process cannot (or cannot be shown to) hold the capabilities it needs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read {path} to check capabilities: {source}")]
    ReadStatus {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path} has no CapEff line; cannot check capabilities")]
    NoCapEff { path: &'static str },
    #[error("{path}: cannot parse CapEff value {value:?}")]
    BadCapEff { path: &'static str, value: String },
    #[error("missing capabilities {} (effective set {cap_eff:#x}): {REMEDY}", missing.join(", "))]
    Missing {
        missing: Vec<&'static str>,
        cap_eff: u64,
    },
}

/// Checks that the process holds the capabilities the agent needs: `CAP_SYS_ADMIN`,
/// or all of `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON`.
pub fn check() -> Result<(), PrivilegeError> {
    let status =
        std::fs::read_to_string(STATUS_PATH).map_err(|source| PrivilegeError::ReadStatus {
            path: STATUS_PATH,
            source,
        })?;
    check_status(&status)
}

/// [`check`] on the text of a `/proc/<pid>/status` file.
fn check_status(status: &str) -> Result<(), PrivilegeError> {
    let cap_eff = cap_eff(status)?;
    let missing = missing(cap_eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing { missing, cap_eff })
    }
}

/// The `CapEff:` bitmask of a status file.
fn cap_eff(status: &str) -> Result<u64, PrivilegeError> {
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or(PrivilegeError::NoCapEff { path: STATUS_PATH })?
        .trim();
    u64::from_str_radix(value, 16).map_err(|_| PrivilegeError::BadCapEff {
        path: STATUS_PATH,
        value: value.to_owned(),
    })
}

/// Names of the needed capabilities absent from `cap_eff`; empty when
/// `CAP_SYS_ADMIN` is present or nothing is missing.
fn missing(cap_eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    NEEDED
        .iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| *name)
        .collect()
}

/// Explanation for an `EPERM` from loading or attaching the programs after [`check`]
/// passed (or could not tell), including what the capability check sees now.
pub fn explain_eperm() -> String {
    let caps = match check() {
        Ok(()) => {
            "the process holds the needed capabilities, so something else denied it".to_owned()
        }
        Err(e) => e.to_string(),
    };
    format!(
        "the kernel refused the eBPF operation with EPERM ({caps}). Common causes: \
         missing CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN) for loading, or CAP_NET_ADMIN for \
         attaching to an interface; capabilities held only inside a user namespace (a \
         rootless container) do not count; a container's seccomp profile blocking bpf(2) \
         (run privileged or allow bpf); an LSM policy (SELinux, AppArmor) or kernel \
         lockdown; on kernels before 5.11, a low RLIMIT_MEMLOCK (raise it, e.g. \
         `ulimit -l unlimited`). {REMEDY}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1 << c)
    }

    #[test]
    fn sys_admin_alone_is_enough() {
        assert!(missing(mask(&[CAP_SYS_ADMIN])).is_empty());
        // Root on a kernel without CAP_BPF (bits 0..=37).
        assert!(missing(0x3f_ffff_ffff).is_empty());
        // Root on a recent kernel.
        assert!(missing(0x1ff_ffff_ffff).is_empty());
    }

    #[test]
    fn bpf_net_admin_perfmon_are_enough() {
        assert!(missing(mask(&[CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON])).is_empty());
    }

    #[test]
    fn lists_exactly_what_is_missing() {
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(missing(mask(&[CAP_BPF])), ["CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(missing(mask(&[CAP_BPF, CAP_PERFMON])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(mask(&[CAP_NET_ADMIN])), ["CAP_BPF", "CAP_PERFMON"]);
        // Unrelated capabilities do not help.
        assert_eq!(
            missing(mask(&[0, 1, 2, 13, 20, 22, 40])),
            ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]
        );
    }

    #[test]
    fn parses_status_files() {
        let status = "Name:\tflowlog\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        assert!(check_status(status).is_ok());

        let status = "CapPrm:\t0000000000000000\nCapEff:\t0000008000001000\n";
        let e = check_status(status).unwrap_err();
        assert!(
            matches!(&e, PrivilegeError::Missing { missing, cap_eff: 0x80_0000_1000 } if *missing == ["CAP_PERFMON"]),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("missing capabilities CAP_PERFMON "),
            "{msg}"
        );
        assert!(
            msg.ends_with(
                "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (e.g. sudo, or \
                 setcap cap_bpf,cap_net_admin,cap_perfmon+ep)"
            ),
            "{msg}"
        );

        let e = check_status("Name:\tx\n").unwrap_err();
        assert!(matches!(e, PrivilegeError::NoCapEff { .. }));
        let e = check_status("CapEff:\tzz\n").unwrap_err();
        assert!(matches!(&e, PrivilegeError::BadCapEff { value, .. } if value == "zz"));
    }

    #[test]
    fn reads_this_process() {
        // Whatever this process holds, the check reads and parses its own status.
        match check() {
            Ok(()) => {}
            Err(PrivilegeError::Missing { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        let text = explain_eperm();
        assert!(text.contains("EPERM"));
        assert!(text.contains("setcap cap_bpf,cap_net_admin,cap_perfmon+ep"));
    }
}
