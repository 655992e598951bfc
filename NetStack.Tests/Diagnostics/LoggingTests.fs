/// NetStackOptions.LoggerFactory: what the stack logs, seen by a collecting logger, and that a
/// disabled logger formats nothing. A kernel TCP client inside the test runner's namespace makes
/// the connection; an injected garbage packet makes the drop.
module NetStack.Tests.Diagnostics.LoggingTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Net
open System.Net.Sockets
open System.Threading
open Microsoft.Extensions.Logging
open Expecto
open NetStack

/// A logger factory whose loggers report `enabled` for every level and keep each formatted message
/// with its level and category. Log calls are counted, so a disabled factory can show it never was
/// asked to format anything.
type private Collector(enabled: bool) =
    let messages = ConcurrentQueue<LogLevel * string * string>()
    let mutable logCalls = 0
    let mutable enabledChecks = 0

    member _.Messages = List.ofSeq messages
    member _.LogCalls = Volatile.Read &logCalls
    member _.EnabledChecks = Volatile.Read &enabledChecks

    member _.Texts = messages |> Seq.map (fun (_, _, text) -> text) |> List.ofSeq

    interface ILoggerFactory with
        member _.CreateLogger(category: string) =
            { new ILogger with
                member _.BeginScope<'TState>(_: 'TState) : IDisposable = null

                member _.IsEnabled(_: LogLevel) =
                    Interlocked.Increment &enabledChecks |> ignore
                    enabled

                member _.Log<'TState>
                    (level: LogLevel, _: EventId, state: 'TState, error: exn, formatter: Func<'TState, exn, string>)
                    =
                    Interlocked.Increment &logCalls |> ignore
                    messages.Enqueue(level, category, formatter.Invoke(state, error))
            }

        member _.AddProvider _ = ()
        member _.Dispose() = ()

let private optionsFor (n: int) (factory: ILoggerFactory) =
    NetStackOptions(
        TunName = $"ns97log{n}",
        Address = IPAddress.Parse $"10.97.{10 + n}.2",
        HostAddress = IPAddress.Parse $"10.97.{10 + n}.1",
        Address6 = IPAddress.Parse $"fd97:{10 + n}::2",
        HostAddress6 = IPAddress.Parse $"fd97:{10 + n}::1",
        TcpLinger = TimeSpan.FromSeconds 2.0,
        LoggerFactory = factory
    )

/// Waits up to 10 s for `condition`.
let private eventually (condition: unit -> bool) =
    let clock = Stopwatch.StartNew()

    while not (condition ()) && clock.Elapsed < TimeSpan.FromSeconds 10.0 do
        Thread.Sleep 20

    condition ()

/// Brings a stack up, lets a kernel client connect to a listener and close, injects a truncated
/// IPv4 packet, and disposes the stack.
let private exercise (options: NetStackOptions) =
    let stack = NetworkStack.Start options

    try
        use listener = stack.ListenTcp 7

        use client =
            new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)

        let accepting = listener.AcceptAsync().AsTask()
        client.Connect(IPEndPoint(options.Address, 7))
        Expect.isTrue (accepting.Wait(TimeSpan.FromSeconds 10.0)) "the stack accepted"
        let connection = accepting.Result
        client.Shutdown SocketShutdown.Send
        let read = connection.ReadAsync(Memory(Array.zeroCreate<byte> 16)).AsTask()
        Expect.isTrue (read.Wait(TimeSpan.FromSeconds 10.0)) "the kernel's FIN arrived"
        Expect.equal read.Result 0 "end of stream"
        connection.DisposeAsync().AsTask().Wait(TimeSpan.FromSeconds 5.0) |> ignore
        client.Close()
        Expect.isTrue (eventually (fun () -> stack.Statistics.["tcp.closed"] >= 1L)) "the connection closed"
        // Three bytes of an IPv4 header: dropped as truncated.
        stack.InjectPacket(ReadOnlySpan [| 0x45uy; 0uy; 0uy |])

        Expect.isTrue
            (eventually (fun () -> stack.Statistics.Snapshot().Keys |> Seq.exists (fun k -> k.StartsWith "drop.")))
            "the garbage was dropped"
    finally
        stack.Dispose()

    NetStack.Tests.TestUtil.assertNoExceptions stack

[<Tests>]
let tests =
    testSequenced
    <| testList
        "Logging"
        [
            test "a logger sees the start, a listener, a TCP connection established and closed, a drop and the stop" {
                let collector = new Collector(true)
                exercise (optionsFor 1 collector)
                let texts = collector.Texts

                let has (text: string) =
                    texts |> List.exists (fun t -> t.Contains text)

                let all = String.Join("\n", texts)
                Expect.isTrue (has "NetStack started on ns97log1: IPv4 10.97.11.2, IPv6 fd97:11::2") $"start:\n{all}"
                Expect.isTrue (has "TCP listening on [::]:7") $"listener:\n{all}"
                Expect.isTrue (has "-> 10.97.11.1:") $"a connection names the kernel's end:\n{all}"

                Expect.isTrue
                    (texts
                     |> List.exists (fun t -> t.StartsWith "TCP 10.97.11.2:7 ->" && t.EndsWith "established"))
                    $"established:\n{all}"

                Expect.isTrue
                    (texts
                     |> List.exists (fun t -> t.StartsWith "TCP 10.97.11.2:7 ->" && t.EndsWith "closed"))
                    $"closed:\n{all}"

                Expect.isTrue (has "Dropped a packet: drop.") $"drop:\n{all}"
                Expect.isTrue (has "NetStack on ns97log1 stopped") $"stop:\n{all}"

                for level, category, text in collector.Messages do
                    Expect.equal category "NetStack.NetworkStack" $"category of {text}"

                    Expect.isTrue
                        (level = LogLevel.Information || level = LogLevel.Debug)
                        $"only Information and Debug in a healthy run: {level} {text}"
            }

            test "a disabled logger is asked, and never handed a message to format" {
                let collector = new Collector(false)
                exercise (optionsFor 2 collector)
                Expect.isGreaterThan collector.EnabledChecks 0 "the stack checked IsEnabled"
                Expect.equal collector.LogCalls 0 "no Log call, so nothing was formatted"
            }
        ]
