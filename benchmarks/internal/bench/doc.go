// Package bench holds what the benchmark commands under benchmarks/ share:
// qemu-img bench workloads and the parsing of its output, medians and
// ratios, child-process management (start, wait for a listener, stop the
// process group), resident-memory sampling from /proc, pre-filled backing
// files, building the hablock binary and describing the machine.
package bench
