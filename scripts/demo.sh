#!/usr/bin/env bash
# The main job: builds Portcullis and shows what it does on the bundled kangaroo example.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_rust
say "building (release)"
cargo build --release --locked -q -p portcullis
say "reachability matrix of manifests/examples/kangaroo"
./target/release/portcullis matrix -f manifests/examples/kangaroo
say "why is kangaroo/backend -> membership/db on 443/TCP denied?"
./target/release/portcullis explain -f manifests/examples/kangaroo \
    --from kangaroo/backend --to membership/db --port 443/TCP || true
