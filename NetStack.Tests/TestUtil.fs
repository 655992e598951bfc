/// Helpers shared by the test modules: FsCheck configuration and small byte utilities.
module NetStack.Tests.TestUtil

open System
open System.IO
open System.Security.Cryptography
open Expecto

/// Property configuration for codec properties: many cases, cheap each.
let codecConfig =
    { FsCheckConfig.defaultConfig with
        maxTest = 1000
    }

/// Property configuration for heavier properties (reassembly, simulations).
let heavyConfig =
    { FsCheckConfig.defaultConfig with
        maxTest = 300
    }

/// Parses a hex string ("45 00 00 54 ...", whitespace ignored) into bytes.
let hex (s: string) =
    let clean = s |> String.filter (fun c -> not (Char.IsWhiteSpace c))
    Convert.FromHexString clean

/// Formats bytes as lower-case hex.
let toHex (b: byte[]) =
    Convert.ToHexString(b).ToLowerInvariant()

/// The repository root: the nearest parent folder of the test binary holding NetStack.sln.
let repoRoot =
    lazy
        (let rec up (dir: DirectoryInfo) =
            if isNull dir then
                failwith "NetStack.sln not found above the test binary"
            elif File.Exists(Path.Combine(dir.FullName, "NetStack.sln")) then
                dir.FullName
            else
                up dir.Parent

         up (DirectoryInfo AppContext.BaseDirectory))

/// Streams `total` bytes (a 1 MiB random block from `seed`, repeated) to `stream`; returns
/// their SHA-256 as hex.
let sendPattern (seed: int) (stream: Stream) (total: int64) =
    task {
        let chunk = Array.zeroCreate<byte>(1 <<< 20)
        Random(seed).NextBytes chunk
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable sent = 0L

        while sent < total do
            let n = int (min (int64 chunk.Length) (total - sent))
            hash.AppendData(chunk, 0, n)
            do! stream.WriteAsync(ReadOnlyMemory(chunk, 0, n))
            sent <- sent + int64 n

        return Convert.ToHexString(hash.GetHashAndReset())
    }

/// Reads `stream` to its end (the peer's FIN); returns (bytes, SHA-256 as hex).
let receiveHashed (stream: Stream) =
    task {
        let buffer = Array.zeroCreate<byte>(1 <<< 18)
        use hash = IncrementalHash.CreateHash HashAlgorithmName.SHA256
        let mutable total = 0L
        let mutable n = 1

        while n > 0 do
            let! read = stream.ReadAsync(Memory buffer)
            n <- read
            hash.AppendData(buffer, 0, n)
            total <- total + int64 n

        return total, Convert.ToHexString(hash.GetHashAndReset())
    }

/// The task's result, or a test failure when it has not completed within `timeout`.
let waitWithin (timeout: TimeSpan) (task: Threading.Tasks.Task<'T>) =
    if not (task.Wait timeout) then
        failtest "timed out"

    task.Result

/// Runs `f` on a stack started with `options` (disposed afterwards); a failure carries the
/// stack's counters, which usually say what went wrong on the wire.
let withStackOf (options: NetStack.NetStackOptions) (f: NetStack.NetworkStack -> unit) =
    use stack = NetStack.NetworkStack.Start options

    try
        f stack
    with e ->
        failtestf "%s\nstatistics:\n%O" (e.ToString()) stack.Statistics
