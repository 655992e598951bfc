using System.Net;

namespace NetStack;

/// <summary>A running userspace stack on one TUN device. STUB: the engine replaces this file.</summary>
public sealed class NetworkStack : IAsyncDisposable, IDisposable
{
    private NetworkStack(NetStackOptions options) => Options = options;

    /// <summary>Creates the TUN device, configures the kernel side and starts the loop.</summary>
    public static NetworkStack Start(NetStackOptions options) => throw new NotImplementedException();

    /// <summary>The options the stack was started with.</summary>
    public NetStackOptions Options { get; }

    /// <summary>The interface's actual name.</summary>
    public string InterfaceName => throw new NotImplementedException();

    /// <summary>Counters of everything the stack received, sent and dropped.</summary>
    public NetStackStatistics Statistics => throw new NotImplementedException();

    /// <summary>Binds a UDP socket (port 0 = ephemeral; IPv6Any = both families).</summary>
    public UdpSocket BindUdp(IPEndPoint localEndPoint) => throw new NotImplementedException();

    /// <summary>Sends an ICMP echo request and waits for the reply or the timeout.</summary>
    public Task<PingReply> PingAsync(IPAddress destination, TimeSpan timeout, int dataSize = 56, CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Stops the stack and removes its interface.</summary>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>Stops the stack and removes its interface.</summary>
    public void Dispose() { }
}

/// <summary>The result of a ping.</summary>
public sealed class PingReply
{
    /// <summary>Creates a reply.</summary>
    public PingReply(System.Net.NetworkInformation.IPStatus status, IPAddress address, TimeSpan roundtripTime, int bufferSize)
    {
        Status = status; Address = address; RoundtripTime = roundtripTime; BufferSize = bufferSize;
    }

    /// <summary>Success, TimedOut, DestinationUnreachable, ...</summary>
    public System.Net.NetworkInformation.IPStatus Status { get; }

    /// <summary>Who answered.</summary>
    public IPAddress Address { get; }

    /// <summary>Round-trip time.</summary>
    public TimeSpan RoundtripTime { get; }

    /// <summary>Echo data size.</summary>
    public int BufferSize { get; }
}

/// <summary>Named counters.</summary>
public sealed class NetStackStatistics
{
    /// <summary>A counter by name, 0 when unknown.</summary>
    public long this[string name] => throw new NotImplementedException();

    /// <summary>Every counter by name.</summary>
    public IReadOnlyDictionary<string, long> Snapshot() => throw new NotImplementedException();
}

/// <summary>A UDP socket on the stack.</summary>
public sealed class UdpSocket : IAsyncDisposable, IDisposable
{
    /// <summary>The bound local endpoint.</summary>
    public IPEndPoint LocalEndPoint => throw new NotImplementedException();

    /// <summary>The connected remote, if any.</summary>
    public IPEndPoint? RemoteEndPoint => throw new NotImplementedException();

    /// <summary>Sets the default remote.</summary>
    public void Connect(IPEndPoint remote) => throw new NotImplementedException();

    /// <summary>Sends one datagram.</summary>
    public ValueTask<int> SendToAsync(ReadOnlyMemory<byte> datagram, IPEndPoint remote, CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Sends one datagram to the connected remote.</summary>
    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> datagram, CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Receives one datagram.</summary>
    public ValueTask<System.Net.Sockets.SocketReceiveFromResult> ReceiveFromAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => throw new NotImplementedException();

    /// <summary>Closes the socket.</summary>
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>Closes the socket.</summary>
    public void Dispose() { }
}
