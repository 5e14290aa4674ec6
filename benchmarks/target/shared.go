package main

import benchpkg "github.com/hablock/hablock/benchmarks/internal/bench"

// The workload, process and measurement helpers live in
// benchmarks/internal/bench, shared with benchmarks/replication.
type (
	workload    = benchpkg.Workload
	benchOutput = benchpkg.BenchOutput
	server      = benchpkg.Server
	runRecord   = benchpkg.Run
	cellResult  = benchpkg.Cell
)

var (
	defaultWorkloads = benchpkg.DefaultWorkloads
	parseBenchOutput = benchpkg.ParseBenchOutput
	iops             = benchpkg.IOPS
	mibps            = benchpkg.MiBps
	median           = benchpkg.Median
	ratio            = benchpkg.Ratio
	sizeLabel        = benchpkg.SizeLabel
	num              = benchpkg.Num
	thousands        = benchpkg.Thousands
	shellQuote       = benchpkg.ShellQuote
	lastLine         = benchpkg.LastLine
	firstLine        = benchpkg.FirstLine
	readMemStatus    = benchpkg.ReadMemStatus
	parseMemStatus   = benchpkg.ParseMemStatus
	startRSSSampler  = benchpkg.StartRSSSampler
	startServer      = benchpkg.StartServer
	waitListening    = benchpkg.WaitListening
	freeLoopbackPort = benchpkg.FreeLoopbackPort
	runCmd           = benchpkg.RunCmd
	runQemu          = benchpkg.RunQemu
	iscsiArgv        = benchpkg.IscsiArgv
	prefill          = benchpkg.Prefill
	busy             = benchpkg.Busy
	loadavg          = benchpkg.Loadavg
	cmdOut           = benchpkg.CmdOut
	failSummary      = benchpkg.FailSummary
	fmtCell          = benchpkg.FmtCell
	fmtRatio         = benchpkg.FmtRatio
)
