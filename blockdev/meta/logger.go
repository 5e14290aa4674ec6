package meta

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// slogAdapter routes badger's log calls to a *slog.Logger. Badger's Info
// lines are routine (WAL replay, compactions, flushes), so they go out at
// Debug with its Debug lines; warnings and errors keep their level.
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) logf(level slog.Level, format string, args []any) {
	ctx := context.Background()
	if !a.l.Enabled(ctx, level) {
		return // skip the Sprintf
	}
	a.l.Log(ctx, level, strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "badger")
}

func (a slogAdapter) Errorf(f string, args ...any)   { a.logf(slog.LevelError, f, args) }
func (a slogAdapter) Warningf(f string, args ...any) { a.logf(slog.LevelWarn, f, args) }
func (a slogAdapter) Infof(f string, args ...any)    { a.logf(slog.LevelDebug, f, args) }
func (a slogAdapter) Debugf(f string, args ...any)   { a.logf(slog.LevelDebug, f, args) }
