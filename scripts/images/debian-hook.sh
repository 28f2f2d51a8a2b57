#!/bin/sh
# mmdebstrap customize hook for the debian:bookworm-slim stand-in (scripts/images.sh): the apt
# settings the official image ships (debuerreotype's), so that `apt-get install` in a Dockerfile
# leaves no package archives or caches in the layer.
set -eu
conf=$1/etc/apt/apt.conf.d
cat >"$conf/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
echo 'Acquire::Languages "none";' >"$conf/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$conf/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$conf/docker-autoremove-suggests"
rm -rf "$1/var/cache/apt"/*.bin "$1/var/lib/apt/lists"/*
