// Package config reads hablock's resource file: one replicated volume,
// shared verbatim by all of its nodes like a DRBD resource file, from
// which `hablock agent --config FILE --node NAME` picks its own node.
//
// # Syntax
//
// The file is line-oriented and parsed here, so every error names the
// file, the line and the field ("hablock.conf:12: net.ping-timeout:
// \"5x\" is not a duration (e.g. 500ms, 6s)"):
//
//   - a setting is "key value"; it ends at the end of the line, at ';' or
//     at '}', so a short section fits on one line;
//   - a section is "name [NAME] { ... }"; sections do not nest below the
//     resource;
//   - '#' starts a comment running to the end of the line;
//   - a value containing spaces or any of #;{}" is written in double
//     quotes, with \" and \\ as the only escapes;
//   - sizes take an optional binary suffix (K, M, G, T; see
//     internal/units.ParseSize); durations use time.ParseDuration syntax.
//
// Each key may appear once per section and unknown keys are errors
// (suggesting a key within edit distance 2). The file holds exactly one
// resource:
//
//	resource NAME {
//	    size 4G                  # bytes; default: the smaller backing store
//	    block-size 512           # bytes, 512 or 4096; default 512
//	    protocol C               # A, B or C; default C
//	    iscsi {
//	        iqn iqn.2026-11.io.hablock:r0   # default iqn.2026-11.io.hablock:NAME
//	        listen 0.0.0.0:3260             # default 0.0.0.0:3260
//	        vip 10.250.0.100/24             # default none
//	        vip-interface eth0              # required with vip
//	    }
//	    net {
//	        ping-interval 1s  ; ping-timeout 500ms ; timeout 6s ; ko-count 4
//	        connect-retry-min 1s ; connect-retry-max 10s
//	        after-sb-0pri disconnect ; after-sb-1pri disconnect
//	        resync-rate 100M             # bytes/s; 0 or unlimited: no cap
//	        verify-alg sha256            # or crc32c
//	        csums-alg none               # or sha256: checksum-based resync
//	    }
//	    failover {
//	        heartbeat-interval 50ms ; heartbeat-timeout 300ms ; vote-timeout 1s
//	        auto-failback none ; failback-settle 30s
//	        probe-interval 200ms ; probe-timeout 100ms ; suspicion-mult 3
//	        suspicion-max-timeout-mult 1 ; gossip-interval 50ms ; reconnect-interval 1s
//	    }
//	    node n1 { address 10.250.0.1:7789 ; backing /dev/vdb ; meta-dir /var/lib/hablock/r0-n1 ; admin /run/hablock/r0-n1.sock }
//	    node n2 { address 10.250.0.2:7789 ; backing /dev/vdb }
//	    witness w { address 10.250.0.3:7789 ; gossip 10.250.0.3:7790 ; control 10.250.0.3:7791 }
//	}
//
// examples/hablock.conf documents every key; the Resource, ISCSI, Net,
// Failover and Node types document each field's unit, default and
// meaning, and DefaultResource, DefaultNet, DefaultFailover and
// DefaultNode return the defaults. A node's gossip and control addresses
// default to its address's host with the port + 1 and + 2
// (Node.GossipAddress, Node.ControlAddress).
//
// # Checks
//
// Parse and Load validate what they read; Validate can be called on a
// Resource built in code and never changes it. It reports every problem
// (joined with errors.Join, in file order), each an *Error that matches
// ErrInvalid. Among the rules: exactly two disk nodes and at most one
// witness, which has no backing store; unique node names and addresses;
// two members on one host share no file; a well-formed iSCSI name;
// ping-timeout below ping-interval; size a multiple of block-size; the
// split-brain policies those of package replication, discard-node-NAME
// naming a disk node; heartbeat-timeout at least 3 x heartbeat-interval,
// vote-timeout above heartbeat-timeout, probe-timeout below
// probe-interval, auto-failback naming a disk node; every address,
// gossip and control endpoint distinct.
package config
