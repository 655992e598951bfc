module NetStack.Bench.ChecksumBench

/// Anchors the assembly for the benchmark switcher.
type Marker = class end
