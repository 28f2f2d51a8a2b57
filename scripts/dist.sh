#!/usr/bin/env bash
# Release binaries, shell completions and man pages in one directory, ready to package or copy
# onto a PATH.
#
#   scripts/dist.sh [OUT]     default OUT: target/dist/portcullis-VERSION-ARCH
#
# OUT/bin/          portcullis (and kubectl-portcullis, a symlink: the kubectl plugin),
#                   portcullis-proxy, portcullis-init, portcullis-controller, portcullis-injector,
#                   portcullis-node-guard
# OUT/completions/  portcullis.bash, _portcullis (zsh), portcullis.fish
# OUT/man/man1/     portcullis.1 and one page per subcommand (portcullis-matrix.1, ...)
# OUT/LICENSE, OUT/SHA256SUMS
#
# Environment: CARGO_TARGET_DIR is honoured; PORTCULLIS_DIST_PROFILE (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_rust

profile=${PORTCULLIS_DIST_PROFILE:-release}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
out=${1:-target/dist/portcullis-$version-$(uname -m)}
target_dir=${CARGO_TARGET_DIR:-target}
bins=(portcullis portcullis-proxy portcullis-init portcullis-controller portcullis-injector portcullis-node-guard)

# portcullis_build_info{commit} of the controller and proxy.
PORTCULLIS_COMMIT=${PORTCULLIS_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export PORTCULLIS_COMMIT
say "building ${bins[*]} ($profile, commit $PORTCULLIS_COMMIT)"
packages=(-p portcullis -p portcullis-proxy -p portcullis-init -p portcullis-controller
          -p portcullis-injector -p portcullis-node-guard)
cargo build --locked --profile "$profile" "${packages[@]}"

rm -rf "$out"
mkdir -p "$out/bin" "$out/completions" "$out/man/man1"
dir=$target_dir/$profile
[ "$profile" = dev ] && dir=$target_dir/debug
for b in "${bins[@]}"; do
    install -m 0755 "$dir/$b" "$out/bin/$b"
done
ln -s portcullis "$out/bin/kubectl-portcullis"

say "completions and man pages"
cli=$out/bin/portcullis
"$cli" completion bash >"$out/completions/portcullis.bash"
"$cli" completion zsh >"$out/completions/_portcullis"
"$cli" completion fish >"$out/completions/portcullis.fish"
"$cli" man --dir "$out/man/man1"
cp LICENSE "$out/"
(cd "$out" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
say "done: $out"
