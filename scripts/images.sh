#!/usr/bin/env bash
# The four container images, built and run here with podman and runc, without a registry.
#
#   scripts/images.sh build   bases from Debian's packages (mmdebstrap, once), then the four
#                             images from the Dockerfiles, with the binaries in target/
#   scripts/images.sh check   user, entrypoint, exposed ports, --version, the proxy's file
#                             capability in its layer, init's rules with both iptables backends
#   scripts/images.sh pod     the injected pod, run for real (scripts/images/pod.py)
#   scripts/images.sh clean   removes the images and bases it built
#
# Several steps run in the order given (`build check pod`). Needs root; installs podman, runc
# and mmdebstrap with apt-get when missing. See docs/images.md.
#
# Environment:
#   PORTCULLIS_IMAGES_PROFILE   which binaries: debug (default, what the tests build) or release
#   PORTCULLIS_IMAGES_REGISTRY  image names' prefix (default ghcr.io/portcullis-dev)
#   PORTCULLIS_PODMAN           the podman command (default: podman with its own store,
#                               /var/lib/portcullis/images, overlay, and runc: crun fails on
#                               these machines); `podman` uses your default store
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

profile=${PORTCULLIS_IMAGES_PROFILE:-debug}
registry=${PORTCULLIS_IMAGES_REGISTRY:-ghcr.io/portcullis-dev}
read -r -a podman <<<"${PORTCULLIS_PODMAN:-podman --root /var/lib/portcullis/images --runroot /run/portcullis/images --storage-driver overlay --runtime runc}"
# Podman's default rlimits are refused on these machines.
run_flags=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
work=target/images
# Stand-ins for the bases a real build pulls, made from the same Debian release's packages.
base_cc=localhost/portcullis-base/cc-debian12:nonroot
base_debian=localhost/portcullis-base/debian:bookworm-slim
debian_sources=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
# dir:binary:base of each image.
images=(
    proxy:portcullis-proxy:$base_cc
    init-iptables:portcullis-init:$base_debian
    controller:portcullis-controller:$base_cc
    injector-webhook:portcullis-injector:$base_cc
)

image_name() { echo "$registry/$1:$version"; }

# dockerfile_value DIR INSTRUCTION: the arguments of the last INSTRUCTION line of DIR/Dockerfile.
dockerfile_value() { sed -n "s/^$2 //p" "$1/Dockerfile" | tail -n1; }

# --- bases ------------------------------------------------------------------------------------

# The distroless cc image's content, from Debian's packages (extracted, no maintainer scripts,
# no shell): glibc, libgcc, libssl, libstdc++, CA roots, tzdata, netbase; the users root, nobody
# and nonroot (65532); nsswitch.conf so that /etc/hosts is read before DNS.
make_base_cc() {
    local tar=$work/base-cc.tar
    say "making $base_cc from Debian packages (mmdebstrap)"
    quietly "$work/base-cc.log" mmdebstrap --variant=extract \
        --include=base-files,netbase,tzdata,libc6,libgcc-s1,gcc-12-base,libssl3,libstdc++6,libgomp1,ca-certificates \
        --customize-hook="$(pwd)/scripts/images/distroless-hook.sh \"\$1\"" \
        bookworm "$tar" "${debian_sources[@]}"
    "${podman[@]}" import --quiet \
        --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        "$tar" "$base_cc" >/dev/null
    rm -f "$tar"
}

# debian:bookworm-slim is itself made from Debian's packages (debuerreotype): minbase, merged
# /usr (without the usrmerge package, which pulls perl), without documentation and locales, with
# the official image's apt settings.
make_base_debian() {
    local tar=$work/base-debian.tar
    say "making $base_debian from Debian packages (mmdebstrap)"
    quietly "$work/base-debian.log" mmdebstrap --variant=minbase --dpkgopt=force-unsafe-io \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --customize-hook="$(pwd)/scripts/images/debian-hook.sh \"\$1\"" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$tar" "${debian_sources[@]}"
    "${podman[@]}" import --quiet --change 'CMD ["bash"]' "$tar" "$base_debian" >/dev/null
    rm -f "$tar"
}

have_image() { "${podman[@]}" image exists "$1"; }

# quietly LOG CMD...: runs CMD with its output in LOG, shown only when it fails.
quietly() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 || { tail -n 30 "$log" >&2; die "$1 failed (log: $log)"; }
}

# --- build ------------------------------------------------------------------------------------

# The build context: the four binaries from target/, debug info stripped (smaller layers), the
# proxy's with its file capability (buildah keeps it through COPY).
stage_binaries() {
    local ctx=$work/context entry bin
    rm -rf "$ctx"
    mkdir -p "$ctx"
    for entry in "${images[@]}"; do
        bin=$(cut -d: -f2 <<<"$entry")
        [ -x "target/$profile/$bin" ] \
            || die "target/$profile/$bin is missing: run the tests (scripts/test.sh) or cargo build${profile/debug/} first"
        strip --strip-debug -o "$ctx/$bin" "target/$profile/$bin"
    done
    setcap cap_net_admin+p "$ctx/portcullis-proxy"
}

cmd_build() {
    mkdir -p "$work"
    have_image "$base_cc" || make_base_cc
    have_image "$base_debian" || make_base_debian
    stage_binaries
    local entry dir bin base
    for entry in "${images[@]}"; do
        IFS=: read -r dir bin base <<<"$entry"
        say "building $(image_name "$bin") from $dir/Dockerfile (BINARY=prebuilt, BASE=$base)"
        # --network host: portcullis-init's apt-get reaches the Debian mirror.
        quietly "$work/build-$bin.log" "${podman[@]}" build --pull=never --network host \
            "${run_flags[@]}" -f "$dir/Dockerfile" --build-arg BINARY=prebuilt \
            --build-arg "BASE=$base" -t "$(image_name "$bin")" "$work/context"
    done
    "${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep portcullis-
}

# --- check ------------------------------------------------------------------------------------

expect() { # expect WHAT GOT WANTED
    [ "$2" = "$3" ] || die "$1: got '$2', want '$3'"
    printf '  ok %-40s %s\n' "$1" "$2" >&2
}

check_config() {
    local dir=$1 bin=$2 image user ports entry
    image=$(image_name "$bin")
    user=$(dockerfile_value "$dir" USER)
    expect "$bin user" "$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")" "$user"
    entry=$(dockerfile_value "$dir" ENTRYPOINT | tr -d '[]"')
    expect "$bin entrypoint" \
        "$("${podman[@]}" image inspect --format '{{join .Config.Entrypoint " "}}' "$image")" "$entry"
    ports=$(dockerfile_value "$dir" EXPOSE | tr ' ' '\n' | sed 's|$|/tcp|' | sort | xargs)
    expect "$bin exposed ports" "$("${podman[@]}" image inspect \
        --format '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$image" \
        | tr ' ' '\n' | sort | xargs)" "$ports"
    expect "$bin --version" \
        "$("${podman[@]}" run --rm --pull=never "${run_flags[@]}" --network none "$image" --version)" \
        "$bin $version"
}

# The proxy's file capability as a registry would receive it: in the saved image's layer.
check_capability() {
    local image archive dir layer found=""
    image=$(image_name portcullis-proxy)
    dir=$(mktemp -d "$work/cap.XXXXXX")
    cap_dir=$dir
    trap 'rm -rf "$cap_dir"' EXIT
    archive=$dir/image.tar
    "${podman[@]}" save --quiet --format oci-archive -o "$archive" "$image"
    mkdir "$dir/oci" "$dir/root"
    tar -xf "$archive" -C "$dir/oci"
    for layer in "$dir"/oci/blobs/sha256/*; do
        if tar -tzf "$layer" usr/local/bin/portcullis-proxy >/dev/null 2>&1; then
            tar --xattrs --xattrs-include='security.capability' -xzf "$layer" \
                -C "$dir/root" usr/local/bin/portcullis-proxy
            found=$(getcap "$dir/root/usr/local/bin/portcullis-proxy" | awk '{print $2}')
        fi
    done
    rm -rf "$dir"
    expect "portcullis-proxy file capability in its layer" "$found" "cap_net_admin=p"
}

# portcullis-init from its image, as injected (root, NET_ADMIN and NET_RAW only, read-only root
# with /run in memory), in a fresh network namespace: installs, then --cleanup removes.
check_init_backends() {
    local ns=pc-img-check backend image rules
    image=$(image_name portcullis-init)
    trap 'ip netns del pc-img-check 2>/dev/null || true' EXIT
    for backend in nft legacy; do
        ip netns del "$ns" 2>/dev/null || true
        ip netns add "$ns"
        for action in install cleanup; do
            local extra=()
            [ "$action" = cleanup ] && extra=(--cleanup)
            "${podman[@]}" run --rm --pull=never "${run_flags[@]}" \
                --network "ns:/var/run/netns/$ns" --cap-drop all --cap-add NET_ADMIN \
                --cap-add NET_RAW --security-opt no-new-privileges --read-only \
                --read-only-tmpfs=false --mount type=tmpfs,destination=/run,tmpfs-size=1m \
                --env PORTCULLIS_IPTABLES_BACKEND=$backend "$image" "${extra[@]}" >/dev/null 2>&1 \
                || die "portcullis-init ($backend, $action) failed in its image"
            rules=$(ip netns exec "$ns" "iptables-$backend-save" 2>/dev/null | grep -c PORTCULLIS || true)
            if [ "$action" = install ]; then
                [ "$rules" -gt 0 ] || die "portcullis-init ($backend) installed no PORTCULLIS rules"
                expect "portcullis-init $backend: installs" "$rules lines" "$rules lines"
            else
                expect "portcullis-init $backend: --cleanup leaves" "$rules lines" "0 lines"
            fi
        done
        ip netns del "$ns"
    done
}

cmd_check() {
    local entry dir bin base
    for entry in "${images[@]}"; do
        IFS=: read -r dir bin base <<<"$entry"
        have_image "$(image_name "$bin")" || die "$(image_name "$bin") is not built: run $0 build"
        check_config "$dir" "$bin"
    done
    check_capability
    flock /tmp/portcullis-netns.lock "$0" __locked check_init_backends
}

# --- pod --------------------------------------------------------------------------------------

pod_cleanup() {
    local c
    for c in $("${podman[@]}" ps -a --format '{{.Names}}' | grep '^pc-img-' || true); do
        "${podman[@]}" rm -f -t 0 "$c" >/dev/null 2>&1 || true
    done
    "target/$profile/portcullis" testbed down --name images >/dev/null 2>&1 || true
    ip netns del pc-img-check 2>/dev/null || true
}

cmd_pod() {
    [ -x "target/$profile/portcullis" ] || die "target/$profile/portcullis is missing: build the CLI"
    mkdir -p "$work"
    pod_dir=$(mktemp -d "$(pwd)/$work/pod.XXXXXX")
    trap 'pod_cleanup; rm -rf "$pod_dir"' EXIT
    local dir=$pod_dir
    pod_cleanup
    # A precreate hook gives the containers the CRI's capability sets (see kubelet-caps.py).
    mkdir -p "$dir/hooks"
    printf '{"version":"1.0.0","hook":{"path":"%s"},"when":{"annotations":{"^dev\\\\.portcullis\\\\.kubelet-caps$":"^true$"}},"stages":["precreate"]}\n' \
        "$(pwd)/scripts/images/kubelet-caps.py" >"$dir/hooks/kubelet-caps.json"
    python3 scripts/images/pod.py run --cli "target/$profile/portcullis" --work "$dir" \
        --podman "${podman[*]}" --run-flags "${run_flags[*]}" --hooks-dir "$dir/hooks" \
        --injector-image "$(image_name portcullis-injector)" \
        --controller-image "$(image_name portcullis-controller)"
}

# --- clean ------------------------------------------------------------------------------------

cmd_clean() {
    local entry bin
    for entry in "${images[@]}"; do
        bin=$(cut -d: -f2 <<<"$entry")
        "${podman[@]}" rmi -f "$(image_name "$bin")" >/dev/null 2>&1 || true
    done
    "${podman[@]}" rmi -f "$base_cc" "$base_debian" >/dev/null 2>&1 || true
    rm -rf "$work"
}

# Steps that make network namespaces, run again under the lock shared with the netns tests.
if [ "${1:-}" = __locked ]; then
    "$2"
    exit
fi

[ $# -gt 0 ] || die "usage: $0 build|check|pod|clean ... (see the top of $0)"
need_root "building and running images" "$@"
need_packages podman:podman runc:runc mmdebstrap:mmdebstrap setcap:libcap2-bin \
    iptables-legacy-save:iptables python3:python3 openssl:openssl dnsmasq:dnsmasq-base
for step in "$@"; do
    case $step in
        build | check | pod | clean) ;;
        *) die "unknown step $step (build, check, pod, clean)" ;;
    esac
done
for step in "$@"; do
    start=$SECONDS
    case $step in
        build) cmd_build ;;
        check) cmd_check ;;
        pod) flock /tmp/portcullis-netns.lock "$0" __locked cmd_pod ;;
        clean) cmd_clean ;;
    esac
    say "images.sh $step: $((SECONDS - start)) s"
done
