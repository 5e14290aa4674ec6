// Package rig is the end-to-end failover testbed of issue 4: a real
// three-node cluster and a real client on one machine, in network
// namespaces, measured as a user would see a failover.
//
// # Topology
//
// A switch namespace (PREFIX-sw) holds the bridge rg-br0; each host is a
// namespace with an eth0 veth on it, addresses from 10.250.0.0/24 used
// only there: n1 10.250.0.1 and n2 10.250.0.2 (disk nodes), w 10.250.0.3
// (witness), c1 10.250.0.10 (client). The VIP 10.250.0.100/24 lives on the
// Primary's eth0. New removes what a crashed run with the same prefix
// left (processes in its namespaces, the namespaces, mounts under
// /tmp/PREFIX-*) and takes a lock file so two rigs cannot collide; Close
// stops everything in order and deletes the namespaces.
//
// # Nodes
//
// The agents are the real hablock binary (built once from ./cmd/hablock)
// run as `nsenter --net=/run/netns/PREFIX-NODE hablock agent --config F
// --node N` (not ip netns exec: see below).
// Resource file: Rig.ResourceFile, one function, extended with
// Options.ExtraConfig. A node dies as a real host does (Kill): its link
// goes down first, so no FIN or RST escapes, then its agent is
// SIGKILLed; the VIP stays configured on its eth0 as it would on a hung
// host. Revive brings it back (link up, agent restarted) and waits until
// both disks are UpToDate with nothing out of sync.
//
// # Client
//
// In c1: qemu-storage-daemon logs in to the target through the VIP and
// exports the LUN as a file with FUSE; ext4 is made on it and
// loop-mounted. ip netns exec would give each command a mount namespace of
// its own, so the client side runs under `nsenter --net=/run/netns/...`
// (network namespace only): the FUSE file and the ext4 mount are then
// visible to the rig, PostgreSQL and the workload alike. On the mount:
//
//   - PostgreSQL (Debian's, as user postgres, unix socket only) under
//     pgbench with a TPC-B-like script that also inserts a random 63-bit id
//     into a ledger table in each transaction; after COMMIT returns, the
//     script's \shell appends the id to a file. Finish checks that every
//     recorded id is in the table.
//   - The client role (this package re-executed with HABLOCK_RIG_ROLE,
//     see RunRoleIfRequested): an HTTP server serving a file from the
//     mount that it rewrites every second (write, fsync, rename), a poller
//     GETting it every 10 ms (a poll fails on any error or after 5 s), and
//     a writer doing 4 KiB pwrite + fdatasync in a loop. Each completed
//     write's time is reported; the client-visible stall of a trial is the
//     longest gap between two consecutive completions around the event.
//
// # Takeover
//
// Options.Takeover selects who moves the Primary role. TakeoverAuto (the
// default): the agents (with the witness running) do all of it; the rig
// only kills, observes and revives, switchovers run `hablock switchover`,
// and a failover's breakdown is read from the new Primary's log.
// TakeoverManual, the baseline: the rig polls the survivor's admin status
// every 10 ms until its replication link reports the peer lost (the
// link's ping-interval + ping-timeout is then the failure detector),
// promotes it through the admin socket (`hablock primary`), adds the VIP
// with `ip addr` and sends a gratuitous ARP with `arping -U` (and, with
// Options.Tickle, tickle ACKs to the clients the dead Primary served).
//
// Every trial's numbers say which path measured them (Trial.Takeover).
package rig
