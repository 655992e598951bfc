module NetStack.Bench.ChecksumBench

open System
open BenchmarkDotNet.Attributes
open NetStack.Core.Wire

/// Anchors the assembly for the benchmark switcher.
type Marker = class end

/// The vectorized `Checksum.sum` against the naive word-at-a-time loop, on a small packet, a
/// full Ethernet frame and a 64 KiB GSO/TSO segment. Throughput in GB/s is Size / Mean (in ns).
/// The data starts one byte into its array, so the loads are unaligned as they are for a
/// payload behind a 14-byte Ethernet or odd-length header.
[<MemoryDiagnoser>]
type ChecksumSum() =
    let mutable data: byte[] = [||]

    /// Bytes summed per call.
    [<Params(64, 1500, 65536)>]
    member val Size = 0 with get, set

    /// Fills the input with seeded random bytes.
    [<GlobalSetup>]
    member this.Setup() =
        data <- Array.zeroCreate (this.Size + 1)
        Random(42).NextBytes data

    /// The reference loop: one big-endian 16-bit word per add.
    [<Benchmark(Baseline = true)>]
    member this.Naive() =
        Checksum.fold (Checksum.sumNaive 0UL (ReadOnlySpan(data, 1, this.Size)))

    /// The production sum.
    [<Benchmark>]
    member this.Vectorized() =
        Checksum.fold (Checksum.sum 0UL (ReadOnlySpan(data, 1, this.Size)))
