/// Helpers shared by the test modules: FsCheck configuration and small byte utilities.
module NetStack.Tests.TestUtil

open System
open System.IO
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
