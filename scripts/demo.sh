#!/usr/bin/env bash
# hablock demo (the README's main job): a three-node cluster on this
# machine that fails over by itself under a real workload.
#
#   1. network namespaces on one bridge: n1 and n2 (disk nodes running
#      `hablock agent`), w (the diskless witness), c1 (the client); the VIP
#      10.250.0.100 lives on the Primary;
#   2. in c1, QEMU's iSCSI initiator (qemu-storage-daemon + FUSE) logs in
#      through the VIP, ext4 is made on the LUN and mounted, and on it run
#      PostgreSQL under pgbench (with a ledger of committed transactions),
#      a web server polled every 10 ms and an fsync writer;
#   3. the Primary dies as a host does (link down, agent SIGKILLed): the
#      Secondary takes over by itself (quorum vote with the witness,
#      promotion, iSCSI target, VIP + gratuitous ARP, tickle ACKs); the dead
#      node comes back, resyncs only what changed, and the next trial kills
#      the other node; then planned switchovers (`hablock switchover`);
#   4. at the end: every committed transaction is in the ledger, ext4 is
#      clean, both backing files are equal.
#
# It prints each trial's client-visible stall and its breakdown. Needs root
# (namespaces, FUSE, loop). Addresses are used only inside the namespaces
# it makes. TRIALS and SWITCHOVERS set the counts (default 2 and 2); the
# issue's full run is `go run ./benchmarks/failover --trials 20
# --switchovers 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, FUSE, loop mount)" >&2; exit 1; }
exec go run ./benchmarks/failover --trials "${TRIALS:-2}" --switchovers "${SWITCHOVERS:-2}" --markdown "" --events "${EVENTS:-30}" "$@"
