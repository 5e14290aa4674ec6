#!/usr/bin/env bash
# hablock demo (the README's main job). Until the replicated, failover
# cluster lands, it shows the native iSCSI target doing what an HA store's
# target must do with a real initiator:
#   1. export a sparse file with `hablock export`
#   2. discover it and inquire with libiscsi's tools
#   3. attach it through QEMU's user-space initiator (qemu-storage-daemon,
#      exported as a file with FUSE), make ext4 on it and loop-mount it
#   4. write files with fsync while the target is SIGKILLed and restarted:
#      the initiator reconnects and the writer sees no error
#   5. unmount, remount through a fresh initiator, verify, e2fsck.
# Needs root (loop mount, FUSE). Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (loop mount, FUSE)" >&2; exit 1; }

PORT=${PORT:-3260}
IQN=iqn.2026-11.io.hablock:demo
WORK=$(mktemp -d /tmp/hablock-demo.XXXXXX)
BIN=$WORK/hablock
HB_PID="" QSD_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
	set +e
	mountpoint -q "$WORK/mnt" && umount "$WORK/mnt"
	[ -n "$QSD_PID" ] && kill "$QSD_PID" 2>/dev/null && wait "$QSD_PID" 2>/dev/null
	[ -n "$HB_PID" ] && kill "$HB_PID" 2>/dev/null && wait "$HB_PID" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

start_target() {
	"$BIN" export --backing "$WORK/vol.img" ${1:+--size "$1"} --listen "127.0.0.1:$PORT" \
		--iqn "$IQN" --nop-interval 1s --nop-timeout 3s >>"$WORK/hablock.log" 2>&1 &
	HB_PID=$!
	for _ in $(seq 100); do
		grep -q "exporting volume" "$WORK/hablock.log" 2>/dev/null && return 0
		kill -0 "$HB_PID" 2>/dev/null || { cat "$WORK/hablock.log"; return 1; }
		sleep 0.05
	done
	echo "target did not start" >&2; return 1
}

attach() {
	: >"$WORK/lun"
	qemu-storage-daemon \
		--blockdev "driver=iscsi,node-name=lun,transport=tcp,portal=127.0.0.1:$PORT,target=$IQN,lun=0" \
		--export "type=fuse,id=exp,node-name=lun,mountpoint=$WORK/lun,writable=on" >>"$WORK/qsd.log" 2>&1 &
	QSD_PID=$!
	for _ in $(seq 200); do
		[ "$(stat -c %s "$WORK/lun")" -gt 0 ] && return 0
		sleep 0.05
	done
	echo "FUSE export did not appear" >&2; cat "$WORK/qsd.log"; return 1
}

detach() { kill "$QSD_PID"; wait "$QSD_PID" 2>/dev/null || true; QSD_PID=""; }

say "building hablock"
go build -o "$BIN" ./cmd/hablock

say "hablock export: a 1 GiB sparse volume on 127.0.0.1:$PORT as $IQN"
start_target 1G
tail -n1 "$WORK/hablock.log"

say "discovery and INQUIRY with libiscsi"
iscsi-ls -s "iscsi://127.0.0.1:$PORT"
iscsi-inq "iscsi://127.0.0.1:$PORT/$IQN/0" | head -n 12

say "attach through QEMU's initiator (qemu-storage-daemon + FUSE), mkfs.ext4, mount"
attach
mkfs.ext4 -q -F "$WORK/lun"
mkdir -p "$WORK/mnt"
mount -o loop "$WORK/lun" "$WORK/mnt"
df -h "$WORK/mnt" | tail -n1

say "write 400 files with fsync; SIGKILL the target after 150 and start it again"
declare -A SUM
max_ms=0
for i in $(seq 1 400); do
	if [ "$i" -eq 150 ]; then
		echo "   file $i: kill -9 hablock (pid $HB_PID), restarting on the same port"
		kill -9 "$HB_PID"; wait "$HB_PID" 2>/dev/null || true
		start_target ""
	fi
	t0=$(date +%s%N)
	head -c $((4096 + RANDOM)) /dev/urandom >"$WORK/mnt/f$i"
	sync "$WORK/mnt/f$i"
	ms=$(( ($(date +%s%N) - t0) / 1000000 ))
	((ms > max_ms)) && max_ms=$ms
	SUM[$i]=$(sha256sum <"$WORK/mnt/f$i" | cut -d' ' -f1)
done
echo "   400 files written, 0 errors; slowest write+fsync (the restart stall): ${max_ms} ms"

say "unmount, detach, re-attach with a new initiator session, verify every file"
umount "$WORK/mnt"; detach; attach
mount -o loop "$WORK/lun" "$WORK/mnt"
bad=0
for i in $(seq 1 400); do
	[ "$(sha256sum <"$WORK/mnt/f$i" | cut -d' ' -f1)" = "${SUM[$i]}" ] || bad=$((bad + 1))
done
echo "   files with wrong content: $bad"
umount "$WORK/mnt"; detach

say "stop the target (SIGTERM) and e2fsck -fn the backing file"
kill "$HB_PID"; wait "$HB_PID" || true; HB_PID=""
e2fsck -fn "$WORK/vol.img"
[ "$bad" -eq 0 ] && say "demo passed"
