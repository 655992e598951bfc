using System.Diagnostics.Metrics;

namespace NetStack.Diagnostics;

/// <summary>
/// The <see cref="System.Diagnostics.Metrics"/> instruments every <see cref="NetworkStack"/>
/// publishes, for <c>dotnet-counters monitor --counters NetStack</c>, OpenTelemetry
/// (<c>AddMeter("NetStack")</c>) or a <see cref="MeterListener"/>.
/// </summary>
/// <remarks>
/// Each stack owns one <see cref="Meter"/> named <see cref="MeterName"/>, disposed with the stack;
/// every measurement carries the tag <see cref="InterfaceTag"/> with the stack's interface name, so
/// several stacks in one process stay apart. The counters are observable: they are read from the
/// stack's existing statistics only when a listener collects, so the packet path pays nothing
/// beyond the counting it already did. Only the ping RTT histogram records as events happen, and a
/// histogram nobody listens to returns at once.
/// </remarks>
public static class NetStackMetrics
{
    /// <summary>The meter name: "NetStack".</summary>
    public const string MeterName = "NetStack";

    /// <summary>The tag naming the stack's interface on every measurement.</summary>
    public const string InterfaceTag = "netstack.interface";

    /// <summary>Observable counter of IP packets read from (<c>direction=received</c>) and written to (<c>direction=sent</c>) the device.</summary>
    public const string Packets = "netstack.packets";

    /// <summary>Observable counter of the bytes of those packets, by the same <c>direction</c> tag.</summary>
    public const string Bytes = "netstack.bytes";

    /// <summary>
    /// Observable counter of packets dropped, by the tag <c>reason</c>: the statistics counter's name
    /// without its "drop." part ("ipv4.bad-checksum", "not-for-us", "udp.queue-full", "tcp.no-connection", ...).
    /// </summary>
    public const string Drops = "netstack.drops";

    /// <summary>
    /// Observable counter of TCP retransmission timeouts (RFC 6298 §5.4), each of which resends from
    /// SND.UNA. Fast retransmits (RFC 5681 §3.2) are not counted: the engine does not report them.
    /// </summary>
    public const string TcpRetransmissionTimeouts = "netstack.tcp.retransmission_timeouts";

    /// <summary>Observable up-down counter of TCP connections the stack holds (any state but LISTEN).</summary>
    public const string TcpConnections = "netstack.tcp.connections";

    /// <summary>Histogram of ping round-trip times in milliseconds, one per echo reply matched.</summary>
    public const string PingRoundTripTime = "netstack.ping.rtt";

    /// <summary>
    /// Histogram (ms) of TCP round-trip times: each connection's smoothed RTT (RFC 6298 SRTT) when
    /// it reaches ESTABLISHED, if the handshake gave a sample, and again when it is released.
    /// </summary>
    public const string TcpRoundTripTime = "netstack.tcp.rtt";

    /// <summary>The direction tag's name.</summary>
    public const string DirectionTag = "direction";

    /// <summary>The drop reason tag's name.</summary>
    public const string ReasonTag = "reason";
}

/// <summary>One stack's meter and instruments; the stack hands it its counters as callbacks.</summary>
internal sealed class StackMeter : IDisposable
{
    private readonly Meter _meter;
    private readonly KeyValuePair<string, object?> _interface;
    private readonly Histogram<double> _pingRtt;
    private readonly Histogram<double> _tcpRtt;

    public StackMeter(
        string interfaceName,
        NetStackStatistics statistics,
        Func<long> bytesReceived,
        Func<long> bytesSent,
        Func<int> tcpConnections)
    {
        _meter = new Meter(NetStackMetrics.MeterName, typeof(StackMeter).Assembly.GetName().Version?.ToString());
        _interface = new(NetStackMetrics.InterfaceTag, interfaceName);
        var received = new KeyValuePair<string, object?>(NetStackMetrics.DirectionTag, "received");
        var sent = new KeyValuePair<string, object?>(NetStackMetrics.DirectionTag, "sent");

        _meter.CreateObservableCounter(NetStackMetrics.Packets, () => new[]
        {
            new Measurement<long>(statistics["device.read"], _interface, received),
            new Measurement<long>(statistics["device.written"], _interface, sent),
        }, "{packet}", "IP packets read from and written to the device");
        _meter.CreateObservableCounter(NetStackMetrics.Bytes, () => new[]
        {
            new Measurement<long>(bytesReceived(), _interface, received),
            new Measurement<long>(bytesSent(), _interface, sent),
        }, "By", "Bytes of the IP packets read from and written to the device");
        _meter.CreateObservableCounter(NetStackMetrics.Drops, () => Drops(statistics), "{packet}", "Packets dropped, by reason");
        _meter.CreateObservableCounter(NetStackMetrics.TcpRetransmissionTimeouts,
            () => new Measurement<long>(statistics["tcp.retransmission-timeout"], _interface),
            "{timeout}", "TCP retransmission timeouts (RFC 6298 5.4)");
        _meter.CreateObservableUpDownCounter(NetStackMetrics.TcpConnections,
            () => new Measurement<int>(tcpConnections(), _interface),
            "{connection}", "TCP connections the stack holds");
        _pingRtt = _meter.CreateHistogram<double>(NetStackMetrics.PingRoundTripTime, "ms", "Ping round-trip times");
        _tcpRtt = _meter.CreateHistogram<double>(NetStackMetrics.TcpRoundTripTime, "ms", "TCP smoothed round-trip times, at ESTABLISHED and at release");
    }

    // Every statistics counter with a "drop." part is a drop; its reason is the name without it.
    private IEnumerable<Measurement<long>> Drops(NetStackStatistics statistics)
    {
        foreach (var (name, value) in statistics.Snapshot())
        {
            string? reason = name.StartsWith("drop.", StringComparison.Ordinal) ? name["drop.".Length..]
                : name.Contains(".drop.", StringComparison.Ordinal) ? name.Replace(".drop.", ".", StringComparison.Ordinal)
                : null;
            if (reason is not null)
                yield return new Measurement<long>(value, _interface, new(NetStackMetrics.ReasonTag, reason));
        }
    }

    /// <summary>Records one ping round trip (a no-op when nobody listens).</summary>
    public void RecordPingRtt(TimeSpan rtt) => _pingRtt.Record(rtt.TotalMilliseconds, _interface);

    /// <summary>Records a TCP smoothed RTT given in microseconds.</summary>
    public void RecordTcpRtt(long microseconds) => _tcpRtt.Record(microseconds / 1000.0, _interface);

    public void Dispose() => _meter.Dispose();
}
