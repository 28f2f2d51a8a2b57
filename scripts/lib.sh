# Shared helpers for the set-up scripts. Sourced, not run.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need_packages CMD:PACKAGE...  installs the Debian packages whose commands are missing,
# or says exactly what is missing when it cannot install them.
need_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair##*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    # Deduplicate.
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]} (install them with: sudo apt-get install -y ${missing[*]}; or run this script as root)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

need_rust() {
    command -v cargo >/dev/null 2>&1 \
        || die "cargo not found: install Rust from https://rustup.rs (rustup, stable toolchain)"
}

# need_root WHAT "$@"  continues as root: as is when already root (a fresh machine may have no
# sudo then), otherwise re-runs the calling script under sudo, keeping PATH (rustup's cargo).
need_root() {
    local what=$1
    shift
    [ "$(id -u)" -eq 0 ] && return 0
    command -v sudo >/dev/null 2>&1 \
        || die "$what needs root (network namespaces, veth pairs, iptables): run it as root"
    say "$what needs root (network namespaces, veth pairs, iptables): re-running under sudo"
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR env "PATH=$PATH" "$0" "$@"
}
