/// The differential conformance suite's vocabulary: the socket operations a scenario uses, written
/// once against small interfaces that a kernel `Socket` (KernelSubject) and NetStack
/// (NetStackSubject) both implement, and the log of what each call did.
module NetStack.Tests.Conformance.Subject

open System
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Tasks

/// A socket option, as a kernel Socket sets it (SetSocketOption or its property) and NetStack
/// takes it (TcpSocketOptions before connect or listen, the property of the same name after).
type SocketOption =
    /// Socket.Ttl.
    | Ttl of int16
    /// SocketOptionName.TypeOfService (the TOS byte: DSCP in its upper six bits).
    | TypeOfService of int
    /// Socket.DontFragment.
    | DontFragment of bool
    /// Socket.LingerState.
    | Linger of LingerOption
    /// SO_KEEPALIVE on with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT.
    | KeepAlive of time: TimeSpan * interval: TimeSpan * count: int
    /// Socket.NoDelay.
    | NoDelay of bool
    /// SO_REUSEADDR (before the bind).
    | ReuseAddress of bool
    /// Bind before connecting (last in a list, after ReuseAddress).
    | LocalEndPoint of IPEndPoint

/// A TCP connection of a subject: the stream calls (NetworkStream's for the kernel, TcpConnection's
/// for NetStack) and the socket calls.
type ITcp =
    inherit IDisposable
    /// The byte stream (NetworkStream over the kernel's socket; the TcpConnection itself).
    abstract Stream: Stream
    /// Socket.Shutdown(how).
    abstract Shutdown: SocketShutdown -> unit
    /// Closes with a RST: LingerState (true, 0) then Close.
    abstract CloseWithReset: unit -> unit
    /// Socket.Close(), the socket's own call: unlike NetworkStream.Dispose (Dispose here), no
    /// Shutdown(Both) first. NetStack's TcpConnection is socket and stream in one: its Dispose.
    abstract CloseSocket: unit -> unit
    /// Socket.NoDelay.
    abstract NoDelay: bool with get, set
    /// Sets an option on the connected socket.
    abstract Set: SocketOption -> unit
    /// Socket.Available (bytes readable now).
    abstract Available: int

/// A TCP listener of a subject.
type IListener =
    inherit IDisposable
    /// The bound port.
    abstract Port: int
    /// Socket.AcceptAsync(ct).
    abstract AcceptAsync: CancellationToken -> Task<ITcp>

/// A UDP socket of a subject.
type IUdp =
    inherit IDisposable
    /// The bound port.
    abstract Port: int
    /// Socket.Connect(remote).
    abstract Connect: IPEndPoint -> unit
    /// Socket.SendToAsync(datagram, remote, ct): the bytes sent.
    abstract SendToAsync: byte[] * IPEndPoint * CancellationToken -> Task<int>
    /// Socket.SendAsync(datagram, ct) on a connected socket.
    abstract SendAsync: byte[] * CancellationToken -> Task<int>
    /// Socket.ReceiveFromAsync(buffer, ct): the byte count and the sender.
    abstract ReceiveFromAsync: Memory<byte> * CancellationToken -> Task<int * IPEndPoint>
    /// Socket.ReceiveFrom(buffer, ref remote), blocking: the byte count and the sender.
    abstract ReceiveFrom: byte[] -> int * IPEndPoint
    /// Socket.SendTo(datagram, remote), blocking: the bytes sent.
    abstract SendTo: byte[] * IPEndPoint -> int
    /// Socket.ReceiveTimeout (milliseconds, for the blocking receive).
    abstract ReceiveTimeout: int with get, set
    /// Sets an IP option (Ttl, TypeOfService, DontFragment).
    abstract Set: SocketOption -> unit
    /// Socket.Available: for UDP the size of the next datagram (Linux's FIONREAD).
    abstract Available: int

/// The system under test: a kernel socket in its own namespace, or NetStack on a TUN.
type ISubject =
    /// "kernel" or "netstack".
    abstract Name: string
    /// The subject's own IPv4 address.
    abstract Address: IPAddress
    /// Opens a TCP connection (Socket.ConnectAsync).
    abstract ConnectAsync: IPEndPoint * CancellationToken -> Task<ITcp>
    /// Opens a TCP connection with options set before the SYN (a bind among them).
    abstract ConnectWith: IPEndPoint * SocketOption list * CancellationToken -> Task<ITcp>
    /// Binds and listens on the subject's address (port 0: any).
    abstract Listen: port: int -> IListener
    /// Binds and listens with options (inherited by accepted connections).
    abstract ListenWith: port: int * SocketOption list -> IListener
    /// Binds a UDP socket on the subject's address (port 0: any).
    abstract BindUdp: port: int -> IUdp
    /// The subject's interface towards the peer, as the peer's namespace names it (for tcpdump).
    abstract PeerSideDevice: string

/// What a call did, as the log records it: `ok <value>` or the exception, described by its type
/// and SocketError: `SocketException(ConnectionRefused)`, `IOException(SocketException(ConnectionReset))`
/// (as NetworkStream wraps one), `OperationCanceledException` ... A task that has not finished
/// within the step's time is `pending`.
let rec describe (e: exn) =
    match e with
    | :? AggregateException as a when a.InnerExceptions.Count = 1 -> describe a.InnerException
    | :? SocketException as s -> $"SocketException({s.SocketErrorCode})"
    | :? IOException as io when not (isNull io.InnerException) -> $"{io.GetType().Name}({describe io.InnerException})"
    | e -> e.GetType().Name

/// The log of one subject's run of a scenario: one line per step, in order.
type Log(subject: string) =
    let lines = ResizeArray<string>()

    /// Whose log this is.
    member _.Subject = subject

    /// Appends a line.
    member _.Add(line: string) = lock lines (fun () -> lines.Add line)

    /// The lines so far.
    member _.Lines = lock lines (fun () -> List.ofSeq lines)

/// How long a step may take before it counts as `pending` (a call that hangs).
let stepTimeout = TimeSpan.FromSeconds 10.0

/// Waits for `task` (at most `timeout`) and says what it did with `show` for its value.
let outcomeWithin (timeout: TimeSpan) (show: 'T -> string) (task: Task<'T>) =
    try
        if task.Wait timeout then
            "ok " + show task.Result
        else
            "pending"
    with e ->
        describe e

/// Runs `call` and says what it did (a synchronous call: its exception, or `ok`).
let outcomeOf (show: 'T -> string) (call: unit -> 'T) =
    try
        "ok " + show (call ())
    with e ->
        describe e

/// Bytes as text for the log: printable ASCII as is, else their count.
let showBytes (bytes: ReadOnlySpan<byte>) =
    let isText =
        bytes.Length <= 32
        && (let mutable ok = true

            for b in bytes do
                if b < 32uy || b > 126uy then
                    ok <- false

            ok)

    if bytes.IsEmpty then
        "0 bytes"
    elif isText then
        $"\"{Text.Encoding.ASCII.GetString bytes}\""
    else
        $"{bytes.Length} bytes"
