package iscsi

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hablock/hablock/iscsi/scsi"
)

// ErrConfig: a Config field is out of range. The message names the field.
var ErrConfig = errors.New("iscsi: invalid config")

// TPGT is the target portal group tag of every portal: hablock has one
// portal group per target.
const TPGT = 1

// CHAPConfig holds CHAP credentials (RFC 7143 12.1.3).
type CHAPConfig struct {
	// User and Secret authenticate the initiator (one-way CHAP): the
	// initiator must answer our challenge as User with Secret. Secret is
	// 12..255 bytes (RFC 7143 requires at least 96 bits).
	User, Secret string
	// MutualUser and MutualSecret, when set, are what we answer with when
	// the initiator challenges us (mutual CHAP). MutualSecret must differ
	// from Secret. Empty: mutual CHAP is refused.
	MutualUser, MutualSecret string
}

func (c *CHAPConfig) validate(field string) error {
	if c.User == "" || len(c.User) > 255 {
		return fmt.Errorf("%w: %s.User must be 1..255 bytes", ErrConfig, field)
	}
	if len(c.Secret) < 12 || len(c.Secret) > 255 {
		return fmt.Errorf("%w: %s.Secret must be 12..255 bytes", ErrConfig, field)
	}
	if (c.MutualUser == "") != (c.MutualSecret == "") {
		return fmt.Errorf("%w: %s.MutualUser and MutualSecret go together", ErrConfig, field)
	}
	if c.MutualSecret != "" {
		if len(c.MutualSecret) < 12 || len(c.MutualSecret) > 255 || len(c.MutualUser) > 255 {
			return fmt.Errorf("%w: %s.MutualSecret must be 12..255 bytes", ErrConfig, field)
		}
		if c.MutualSecret == c.Secret {
			return fmt.Errorf("%w: %s.MutualSecret must differ from Secret", ErrConfig, field)
		}
	}
	return nil
}

// Config tunes a Server. Start from DefaultConfig; NewServer calls
// Validate, which never modifies the Config.
type Config struct {
	// Logger receives connection and session events. nil: discard.
	Logger *slog.Logger

	// MaxSessions caps concurrent sessions (normal and discovery) across
	// all targets; a login beyond it gets status 0x0302 (out of
	// resources). Default 64. Range 1..65000 (TSIH is 16 bits; reinstatement
	// needs a spare value).
	MaxSessions int

	// MaxOutstandingCommands is the CmdSN window per session: how many
	// non-immediate commands an initiator may have queued or executing.
	// MaxCmdSN = ExpCmdSN + (MaxOutstandingCommands - outstanding) - 1.
	// Default 128 (deeper than qemu's 128-entry libiscsi queue needs, and
	// bounded memory). Range 1..1024.
	MaxOutstandingCommands int

	// MaxRecvDataSegmentLength is the largest data segment we accept in
	// one PDU, declared to the initiator; it bounds every read. Bytes.
	// Default 256 KiB: a 1 MiB qemu write takes four Data-Out PDUs
	// rather than 128 at the RFC default of 8 KiB. Range 512..16777215.
	MaxRecvDataSegmentLength uint32

	// MaxBurstLength is our offer for the largest solicited (R2T) or
	// Data-In sequence. Bytes. Default 1 MiB, so a qemu 1 MiB write
	// needs a single R2T. Range 512..16777215.
	MaxBurstLength uint32

	// FirstBurstLength is our offer for unsolicited data (immediate plus
	// unsolicited Data-Out) per write command. Bytes. Default 256 KiB:
	// writes up to 256 KiB complete without an R2T round trip.
	// Range 512..MaxBurstLength.
	FirstBurstLength uint32

	// ImmediateData is our offer for the ImmediateData key (AND): data
	// may ride in the SCSI Command PDU. Default true (saves a PDU per
	// small write).
	ImmediateData bool

	// InitialR2T is our offer for InitialR2T (OR). Default false, so
	// initiators may send unsolicited Data-Out up to FirstBurstLength
	// without waiting for an R2T.
	InitialR2T bool

	// MaxOutstandingR2T is our offer for MaxOutstandingR2T (min): R2Ts in
	// flight per task. Default 4. Range 1..65535.
	MaxOutstandingR2T uint32

	// DefaultTime2Wait (max) and DefaultTime2Retain (min) are our offers,
	// seconds. Defaults 2 and 0: with ErrorRecoveryLevel 0 nothing is
	// retained after a connection is lost. Range 0..3600.
	DefaultTime2Wait, DefaultTime2Retain uint32

	// HeaderDigests and DataDigests are the digests we accept, each
	// "CRC32C" or "None"; the initiator's first listed value that is in
	// here wins. Default both: ["CRC32C", "None"]. ["CRC32C"] requires
	// digests; ["None"] refuses them.
	HeaderDigests, DataDigests []string

	// MaxTransferLength bounds one command's data-out buffer (its
	// Expected Data Transfer Length for writes). Bytes. Larger writes get
	// CHECK CONDITION, ILLEGAL REQUEST. Default scsi.MaxTransferBytes
	// (16 MiB), what the SCSI core advertises in its Block Limits VPD page,
	// so initiators never send more. Range 4096..256 MiB.
	MaxTransferLength uint32

	// MaxSessionWriteBytes bounds the data-out buffers one session may
	// hold at once (commands collecting or executing writes). A write
	// beyond it is answered TASK SET FULL, which initiators retry.
	// Bytes. Default 256 MiB. Must be >= MaxTransferLength.
	MaxSessionWriteBytes int64

	// LoginTimeout bounds the whole login phase of a connection (read
	// deadline). Default 15 s. Must be > 0.
	LoginTimeout time.Duration

	// NopInInterval: after this long without receiving a PDU we send a
	// NOP-In ping. Default 5 s. Zero disables pings.
	NopInInterval time.Duration

	// NopInTimeout: the connection is dropped when a ping is not answered
	// within this time. Default 15 s. Must be > 0 when pings are on.
	NopInTimeout time.Duration

	// ShutdownGrace is how long Shutdown waits for initiators to log out
	// after the "target requests logout" Async Message before dropping
	// them (also sent as Parameter3). Default 5 s.
	ShutdownGrace time.Duration

	// CHAP, when non-nil, requires CHAP for every normal session of every
	// target without its own TargetCHAP entry. nil: no authentication.
	CHAP *CHAPConfig

	// TargetCHAP maps a target IQN to its credentials, overriding CHAP.
	TargetCHAP map[string]CHAPConfig

	// DiscoveryCHAP, when non-nil, requires CHAP for discovery sessions.
	DiscoveryCHAP *CHAPConfig
}

// DefaultConfig returns a Config with every field set to its default.
func DefaultConfig() Config {
	return Config{
		MaxSessions:              64,
		MaxOutstandingCommands:   128,
		MaxRecvDataSegmentLength: 256 << 10,
		MaxBurstLength:           1 << 20,
		FirstBurstLength:         256 << 10,
		ImmediateData:            true,
		InitialR2T:               false,
		MaxOutstandingR2T:        4,
		DefaultTime2Wait:         2,
		DefaultTime2Retain:       0,
		HeaderDigests:            []string{"CRC32C", "None"},
		DataDigests:              []string{"CRC32C", "None"},
		MaxTransferLength:        scsi.MaxTransferBytes,
		MaxSessionWriteBytes:     256 << 20,
		LoginTimeout:             15 * time.Second,
		NopInInterval:            5 * time.Second,
		NopInTimeout:             15 * time.Second,
		ShutdownGrace:            5 * time.Second,
	}
}

// Validate checks every field's range and the cross-field rules.
func (c *Config) Validate() error {
	bad := func(field string, v any, rng string) error {
		return fmt.Errorf("%w: %s = %v, want %s", ErrConfig, field, v, rng)
	}
	switch {
	case c.MaxSessions < 1 || c.MaxSessions > 65000:
		return bad("MaxSessions", c.MaxSessions, "1..65000")
	case c.MaxOutstandingCommands < 1 || c.MaxOutstandingCommands > 1024:
		return bad("MaxOutstandingCommands", c.MaxOutstandingCommands, "1..1024")
	case c.MaxRecvDataSegmentLength < 512 || c.MaxRecvDataSegmentLength > maxNegotiatable:
		return bad("MaxRecvDataSegmentLength", c.MaxRecvDataSegmentLength, "512..16777215")
	case c.MaxBurstLength < 512 || c.MaxBurstLength > maxNegotiatable:
		return bad("MaxBurstLength", c.MaxBurstLength, "512..16777215")
	case c.FirstBurstLength < 512 || c.FirstBurstLength > c.MaxBurstLength:
		return bad("FirstBurstLength", c.FirstBurstLength, "512..MaxBurstLength")
	case c.MaxOutstandingR2T < 1 || c.MaxOutstandingR2T > 65535:
		return bad("MaxOutstandingR2T", c.MaxOutstandingR2T, "1..65535")
	case c.DefaultTime2Wait > 3600:
		return bad("DefaultTime2Wait", c.DefaultTime2Wait, "0..3600")
	case c.DefaultTime2Retain > 3600:
		return bad("DefaultTime2Retain", c.DefaultTime2Retain, "0..3600")
	case c.MaxTransferLength < 4096 || c.MaxTransferLength > 256<<20:
		return bad("MaxTransferLength", c.MaxTransferLength, "4096..268435456")
	case c.MaxSessionWriteBytes < int64(c.MaxTransferLength):
		return bad("MaxSessionWriteBytes", c.MaxSessionWriteBytes, ">= MaxTransferLength")
	case c.LoginTimeout <= 0:
		return bad("LoginTimeout", c.LoginTimeout, "> 0")
	case c.NopInInterval < 0:
		return bad("NopInInterval", c.NopInInterval, ">= 0")
	case c.NopInInterval > 0 && c.NopInTimeout <= 0:
		return bad("NopInTimeout", c.NopInTimeout, "> 0 when NopInInterval is set")
	case c.ShutdownGrace < 0:
		return bad("ShutdownGrace", c.ShutdownGrace, ">= 0")
	}
	for _, f := range []struct {
		name string
		v    []string
	}{{"HeaderDigests", c.HeaderDigests}, {"DataDigests", c.DataDigests}} {
		if len(f.v) == 0 {
			return bad(f.name, f.v, "a non-empty list of CRC32C, None")
		}
		for _, d := range f.v {
			if d != "CRC32C" && d != "None" {
				return bad(f.name, f.v, "values CRC32C or None")
			}
		}
	}
	if c.CHAP != nil {
		if err := c.CHAP.validate("CHAP"); err != nil {
			return err
		}
	}
	if c.DiscoveryCHAP != nil {
		if err := c.DiscoveryCHAP.validate("DiscoveryCHAP"); err != nil {
			return err
		}
	}
	for iqn, cc := range c.TargetCHAP {
		if err := cc.validate("TargetCHAP[" + iqn + "]"); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) offer() Offer {
	return Offer{
		HeaderDigests:      c.HeaderDigests,
		DataDigests:        c.DataDigests,
		MaxRecvDSL:         c.MaxRecvDataSegmentLength,
		MaxBurstLength:     c.MaxBurstLength,
		FirstBurstLength:   c.FirstBurstLength,
		ImmediateData:      c.ImmediateData,
		InitialR2T:         c.InitialR2T,
		MaxOutstandingR2T:  c.MaxOutstandingR2T,
		DefaultTime2Wait:   c.DefaultTime2Wait,
		DefaultTime2Retain: c.DefaultTime2Retain,
	}
}
