#!/bin/sh
# mmdebstrap customize hook for the distroless-like base (scripts/images.sh): what distroless's
# own build adds to the extracted packages, and nothing that runs (no shell in the image).
set -eu
root=$1
mkdir -p "$root/home/nonroot" "$root/tmp" "$root/etc/ssl/certs"
chmod 1777 "$root/tmp"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
GROUP
chown 65532:65532 "$root/home/nonroot"
# Without nsswitch.conf glibc asks DNS first and stops at NXDOMAIN: /etc/hosts would be ignored.
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
# What update-ca-certificates (a maintainer script, not run by the extract variant) would write.
cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
    "$root/usr/share/lintian" "$root/var/cache" "$root/var/log" "$root/etc/apt"
