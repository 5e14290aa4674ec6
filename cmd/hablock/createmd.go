package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/hablock/hablock/blockdev"
	"github.com/hablock/hablock/blockdev/meta"
	"github.com/hablock/hablock/internal/config"
	"github.com/hablock/hablock/internal/units"
)

const createMDHelp = `Initialise the replication metadata of one disk node of a resource, or
the quorum metadata of its witness.

Reads the resource file (--config), picks the node (--node), creates the
backing file when the resource has a size and the file does not exist
(sparse; an existing file or device must have exactly that size), and
writes fresh metadata into the node's meta-dir: the volume UUID, size and
block size, role Secondary, disk Inconsistent (no data yet).

Both nodes of a resource must carry the SAME volume UUID; the peer refuses
a connection from any other volume. So: run create-md on the first node
without --uuid, which chooses a random UUID and prints it, then run it on
the second node with --uuid set to that value. (The UUID is not a config
key: the resource file describes the cluster, the UUID is made once, when
the volume is born.)

Existing metadata is never overwritten without --force: it holds the
generation identifiers and the out-of-sync bitmap, and losing them on a
node with good data means a full resync, or worse, choosing the wrong
side after a split brain. --force keeps the data in the backing store.

Then start the agent on both nodes (hablock agent --config FILE --node
NAME) and, on the node whose data should win (on a fresh volume, either),
run "hablock primary --force" to start the initial full sync.

For the witness (the resource's "witness" section), create-md writes only
its identity and an empty quorum record into its meta-dir: a witness has
no backing store and no volume UUID (--uuid is refused). It keeps the
highest epoch it voted in there, so never recreate it with --force while
the cluster runs: it could then vote twice in one epoch.

Examples:
  # the witness
  hablock create-md --config /etc/hablock/r0.conf --node w
  # first node: choose the volume UUID
  hablock create-md --config /etc/hablock/r0.conf --node n1
  # second node: the UUID printed by the first
  hablock create-md --config /etc/hablock/r0.conf --node n2 --uuid 3f2a...-...
  # start over on a node (its metadata is replaced; data is kept)
  hablock create-md --config /etc/hablock/r0.conf --node n2 --uuid 3f2a... --force

Flags:
`

func runCreateMD(args []string, stdout, stderr io.Writer) error {
	var (
		cfgPath, nodeName, uuidFlag string
		force                       bool
	)
	fs := newFlags("create-md", createMDHelp, stdout, stderr)
	fs.StringVar(&cfgPath, "config", "", "resource file `path` (required)")
	fs.StringVar(&nodeName, "node", "", "this node's `name` in the resource file (required)")
	fs.StringVar(&uuidFlag, "uuid", "", "volume `UUID` (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) printed by create-md on the peer; default: a new random one (first node only)")
	fs.BoolVar(&force, "force", false, "overwrite existing metadata (the backing data is kept)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireConfigNode(cfgPath, nodeName); err != nil {
		return err
	}
	uuid := blockdev.NewUUID()
	if uuidFlag != "" {
		var err error
		if uuid, err = blockdev.ParseUUID(uuidFlag); err != nil {
			return usageErrorf("--uuid: %v", err)
		}
		if uuid.IsZero() {
			return usageErrorf("--uuid: the zero UUID names no volume")
		}
	}

	if res, err := config.Load(cfgPath); err == nil && res.IsWitness(nodeName) {
		if uuidFlag != "" {
			return usageErrorf("--uuid: %s is the witness: it has no volume", nodeName)
		}
		return createWitnessMD(res, nodeName, force, stdout)
	}
	res, node, err := loadNode(cfgPath, nodeName)
	if err != nil {
		return err
	}

	// Refuse before touching the backing store.
	if !force {
		if st, err := meta.Open(node.MetaDir, meta.DefaultOptions()); err == nil {
			id, _ := st.Identity()
			st.Close()
			return fmt.Errorf("metadata already exists in %s (volume %s, resource %s, node %s); refusing to overwrite it without --force",
				node.MetaDir, id.UUID, id.Resource, id.Node)
		} else if !errors.Is(err, meta.ErrNoMetadata) {
			return fmt.Errorf("metadata in %s: %w (use --force to replace it)", node.MetaDir, err)
		}
	}

	dev, err := blockdev.OpenFile(node.Backing, blockdev.FileOptions{Size: res.Size, Create: res.Size > 0})
	if err != nil {
		if errors.Is(err, blockdev.ErrNotFound) && res.Size == 0 {
			return fmt.Errorf("backing store of node %s: %w (set size in %s to have create-md create it)", node.Name, err, cfgPath)
		}
		return fmt.Errorf("backing store of node %s: %w", node.Name, err)
	}
	size := dev.Size()
	dev.Close()
	if size%int64(res.BlockSize) != 0 {
		return fmt.Errorf("backing store %s: size %d is not a multiple of block-size %d", node.Backing, size, res.BlockSize)
	}

	st, err := meta.Create(node.MetaDir, meta.Identity{
		UUID: uuid, Size: size, BlockSize: int(res.BlockSize), Resource: res.Name, Node: node.Name,
	}, force, meta.DefaultOptions())
	if err != nil {
		if errors.Is(err, meta.ErrExists) {
			return fmt.Errorf("metadata already exists in %s; refusing to overwrite it without --force: %w", node.MetaDir, err)
		}
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created metadata for resource %s node %s in %s\nbacking %s, %s, block size %d\nvolume UUID: %s\n",
		res.Name, node.Name, node.MetaDir, node.Backing, units.FormatSize(size), res.BlockSize, uuid)
	if uuidFlag == "" {
		if peer, err := res.Peer(node.Name); err == nil {
			fmt.Fprintf(stdout, "on the peer run: hablock create-md --config %s --node %s --uuid %s\n", cfgPath, peer.Name, uuid)
		}
	}
	return nil
}

// createWitnessMD initialises the metadata of the witness: its identity
// and an empty quorum record, in its meta-dir. No backing store.
func createWitnessMD(res *config.Resource, name string, force bool, stdout io.Writer) error {
	node, err := res.Node(name)
	if err != nil {
		return usageErrorf("--node: %v", err)
	}
	st, err := meta.CreateWitness(node.MetaDir, meta.WitnessIdentity{Resource: res.Name, Node: name}, force, meta.DefaultOptions())
	if err != nil {
		if errors.Is(err, meta.ErrExists) {
			return fmt.Errorf("metadata already exists in %s; refusing to overwrite it without --force (it holds the witness's quorum votes): %w", node.MetaDir, err)
		}
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created witness metadata for resource %s node %s in %s\nstart it with: hablock agent --config FILE --node %s\n",
		res.Name, name, node.MetaDir, name)
	return nil
}

// loadNode loads and validates the resource file and returns the node
// called name: a disk node or the witness (create-md and agent handle
// the witness before they call it; the admin commands reach either).
// Errors name the file and line (config.Error).
func loadNode(path, name string) (*config.Resource, config.Node, error) {
	res, err := config.Load(path)
	if err != nil {
		return nil, config.Node{}, fmt.Errorf("invalid configuration: %w", err)
	}
	node, err := res.Node(name)
	if err != nil {
		return nil, config.Node{}, usageErrorf("--node: %v", err)
	}
	return res, node, nil
}
