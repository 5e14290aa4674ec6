package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/gostor/gotgt/pkg/config"
	_ "github.com/gostor/gotgt/pkg/port/iscsit" // registers the "iscsi" target driver
	"github.com/gostor/gotgt/pkg/scsi"
	_ "github.com/gostor/gotgt/pkg/scsi/backingstore" // registers the "file" backing store
	log "github.com/sirupsen/logrus"
)

// gotgtServe runs gotgt v0.2.2 in this process, exporting backing as LUN 0
// of iqn on port, and blocks until SIGTERM/SIGINT. It is meant to run in a
// fresh network namespace (see gotgtTarget): it brings lo up first.
// Readiness is signalled by writing gotgtReady to readyFile.
func gotgtServe(backing, iqn string, port int, readyFile string) error {
	log.SetLevel(log.WarnLevel)
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	cfg := &config.Config{
		Storages: []config.BackendStorage{{
			DeviceID:   1000,
			Path:       "file:" + backing,
			Online:     true,
			BlockShift: 9,
		}},
		ISCSIPortals: []config.ISCSIPortalInfo{{ID: 0, Portal: "127.0.0.1:" + strconv.Itoa(port)}},
		ISCSITargets: map[string]config.ISCSITarget{
			iqn: {
				TPGTs: map[string][]uint64{"1": {0}},
				LUNs:  map[string]uint64{"0": 1000},
			},
		},
	}
	if err := scsi.InitSCSILUMap(cfg); err != nil {
		return fmt.Errorf("gotgt InitSCSILUMap: %w", err)
	}
	driver, err := scsi.NewTargetDriver("iscsi", scsi.NewSCSITargetService())
	if err != nil {
		return fmt.Errorf("gotgt NewTargetDriver: %w", err)
	}
	if err := driver.NewTarget(iqn, cfg); err != nil {
		return fmt.Errorf("gotgt NewTarget: %w", err)
	}
	runErr := make(chan error, 1)
	// Run listens on ":PORT" (all addresses of this namespace: only lo).
	go func() { runErr <- driver.Run(port) }()

	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gotgt not listening on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.WriteFile(readyFile, []byte(gotgtReady+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "gotgt v0.2.2 serving %s LUN 0 = %s on %s (pid %d)\n", iqn, backing, addr, os.Getpid())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "gotgt helper: %v, exiting\n", s)
		return nil
	case err := <-runErr:
		return fmt.Errorf("gotgt Run returned: %v", err)
	}
}
