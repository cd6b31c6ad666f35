#!/usr/bin/env bash
# Builds flowlog's runtime image from a flowlog binary, from scratch: the binary
# (stripped), the shared libraries it loads (as `ldd` resolves them on the build host),
# /etc/passwd and /etc/group, empty mount points. No shell, no package manager: nothing
# but the agent to update or to attack. No registry is needed (`podman import`).
#
#   deploy/image/build.sh BINARY TAG     (cargo xtask image does this for the release build)
#
# Prints the image's size in bytes on the last line.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BINARY TAG" >&2; exit 2; }
bin=$1
tag=$2
[ -x "$bin" ] || { echo "build.sh: $bin is not an executable" >&2; exit 2; }
command -v podman >/dev/null || {
    echo "build.sh: podman is not installed (apt-get install podman runc)" >&2
    exit 1
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
install -D -m 0755 "$bin" "$root/usr/local/bin/flowlog"
strip --strip-all "$root/usr/local/bin/flowlog"
# Libraries (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`) and the loader
# (`/lib64/ld-linux-x86-64.so.2 (0x...)`), copied to the paths the binary uses.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
mkdir -p "$root/etc" "$root/tmp" "$root/proc" "$root/sys/fs/bpf" "$root/var/lib/flowlog" \
    "$root/var/log/flowlog" "$root/etc/flowlog"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/rootfs.tar" .
podman import --quiet \
    --change 'ENTRYPOINT ["/usr/local/bin/flowlog"]' \
    --change 'CMD ["run"]' \
    --change 'ENV FLOWLOG_LOG=info' \
    --change 'LABEL org.opencontainers.image.title=flowlog' \
    "$work/rootfs.tar" "$tag" >/dev/null
podman image inspect --format '{{.Size}}' "$tag"
