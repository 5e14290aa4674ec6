// Command hablock is the single binary of hablock, a replicated block store
// with automatic failover. Each subcommand lives in its own file; this file
// only dispatches. cmd/ wires configuration to packages and holds no logic
// of its own.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// command is one subcommand of the hablock binary.
type command struct {
	name    string
	summary string
	// run parses args (everything after the subcommand name) and runs.
	run func(args []string, stdout, stderr io.Writer) error
}

// errUsage marks an error caused by bad command-line input: main prints it
// with a hint to --help and exits with status 2.
var errUsage = errors.New("usage")

func usageErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// newFlags returns the flag set of a subcommand: errors go to stderr,
// --help prints help (the command's prose) and then the flags to stdout.
func newFlags(name, help string, stdout, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stdout, help)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. Bad flags and stray arguments are usage
// errors; --help returns pflag.ErrHelp (exit 0 after the help is printed).
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// requireConfigNode checks the --config and --node pair every resource
// command needs.
func requireConfigNode(cfgPath, node string) error {
	if cfgPath == "" {
		return usageErrorf("--config is required")
	}
	if node == "" {
		return usageErrorf("--node is required")
	}
	return nil
}

func commands() []command {
	cmds := []command{
		{name: "export", summary: "serve one volume over iSCSI, standalone (no replication)", run: runExport},
		{name: "version", summary: "print the version", run: runVersion},
		{name: "create-md", summary: "initialise a node's replication metadata (and backing file)", run: runCreateMD},
		{name: "agent", summary: "run one node of a replicated resource", run: runAgent},
	}
	cmds = append(cmds, adminCommands()...)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	return cmds
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func runVersion(args []string, stdout, _ io.Writer) error {
	fs := newFlags("version", "Print hablock's version.\n", stdout, io.Discard)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "hablock %s\n", version)
	return err
}

func mainUsage(w io.Writer) {
	fmt.Fprintf(w, `hablock: a replicated block store with automatic failover, exported over iSCSI.

Usage:
  hablock <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run "hablock <command> --help" for a command's flags and examples.
`)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the os.Exit, so tests can call it.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		mainUsage(stderr)
		return 2
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "help" {
		mainUsage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(args[1:], stdout, stderr)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, pflag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(stderr, "hablock %s: %s\nRun \"hablock %s --help\" for usage.\n",
				name, strings.TrimPrefix(err.Error(), errUsage.Error()+": "), name)
			return 2
		default:
			fmt.Fprintf(stderr, "hablock %s: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "hablock: unknown command %q\n\n", name)
	mainUsage(stderr)
	return 2
}
