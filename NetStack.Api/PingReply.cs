using System.Net;
using System.Net.NetworkInformation;

namespace NetStack;

/// <summary>The outcome of <see cref="NetworkStack.PingAsync"/>, like <see cref="System.Net.NetworkInformation.PingReply"/>.</summary>
public sealed class PingReply
{
    internal PingReply(IPStatus status, IPAddress address, TimeSpan roundtripTime, int bufferSize)
    {
        Status = status;
        Address = address;
        RoundtripTime = roundtripTime;
        BufferSize = bufferSize;
    }

    /// <summary>Success, TimedOut, DestinationUnreachable, PacketTooBig, TtlExpired or ParameterProblem.</summary>
    public IPStatus Status { get; }

    /// <summary>Who answered: the pinged host, or the node that sent an ICMP error; the destination on a timeout.</summary>
    public IPAddress Address { get; }

    /// <summary>Time from sending the request to receiving the answer (zero on a timeout).</summary>
    public TimeSpan RoundtripTime { get; }

    /// <summary>Bytes of echo data in the reply (0 unless Success).</summary>
    public int BufferSize { get; }

    /// <summary>A one-line summary.</summary>
    public override string ToString() => $"{Status} from {Address} in {RoundtripTime.TotalMilliseconds:F3} ms ({BufferSize} bytes)";
}
