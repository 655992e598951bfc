using System.Net;
using Microsoft.Extensions.Logging;

namespace NetStack.Diagnostics;

/// <summary>
/// The log messages of a <see cref="NetworkStack"/>, written to <see cref="NetStackOptions.LoggerFactory"/>
/// under the category <c>NetStack.NetworkStack</c>. Source-generated: each method checks
/// <see cref="ILogger.IsEnabled"/> first, so a disabled level costs one call and formats nothing.
/// </summary>
internal static partial class NetStackLog
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "NetStack started on {Interface}: IPv4 {Address}, IPv6 {Address6}, MTU {Mtu}")]
    public static partial void Started(this ILogger logger, string @interface, IPAddress? address, IPAddress? address6, int mtu);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "NetStack on {Interface} stopped")]
    public static partial void Stopped(this ILogger logger, string @interface);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "Device error on {Interface} ({Count} in a row)")]
    public static partial void DeviceError(this ILogger logger, string @interface, int count, Exception error);

    [LoggerMessage(EventId = 6, Level = LogLevel.Warning, Message = "io_uring unavailable on {Interface}, plain reads and writes instead: {Reason}")]
    public static partial void IoUringUnavailable(this ILogger logger, string @interface, string reason);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "TCP listening on {EndPoint}, backlog {Backlog}")]
    public static partial void TcpListening(this ILogger logger, IPEndPoint endPoint, int backlog);

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "UDP socket bound to {EndPoint}")]
    public static partial void UdpBound(this ILogger logger, IPEndPoint endPoint);

    [LoggerMessage(EventId = 10, Level = LogLevel.Debug, Message = "TCP {Local} -> {Remote} established")]
    public static partial void TcpEstablished(this ILogger logger, IPEndPoint local, IPEndPoint remote);

    [LoggerMessage(EventId = 11, Level = LogLevel.Debug, Message = "TCP {Local} -> {Remote} closed")]
    public static partial void TcpClosed(this ILogger logger, IPEndPoint local, IPEndPoint remote);

    [LoggerMessage(EventId = 12, Level = LogLevel.Debug, Message = "TCP {Local} -> {Remote} reset by the peer")]
    public static partial void TcpReset(this ILogger logger, IPEndPoint local, IPEndPoint remote);

    [LoggerMessage(EventId = 13, Level = LogLevel.Debug, Message = "TCP {Local} -> {Remote} timed out")]
    public static partial void TcpTimedOut(this ILogger logger, IPEndPoint local, IPEndPoint remote);

    [LoggerMessage(EventId = 14, Level = LogLevel.Debug, Message = "TCP {Local} -> {Remote} refused")]
    public static partial void TcpRefused(this ILogger logger, IPEndPoint local, IPEndPoint remote);

    [LoggerMessage(EventId = 20, Level = LogLevel.Debug,
        Message = "Dropped a packet: {Reason} ({Suppressed} more drops not logged before it)")]
    public static partial void PacketDropped(this ILogger logger, string reason, long suppressed);

    [LoggerMessage(EventId = 21, Level = LogLevel.Error, Message = "A continuation run on the engine thread of {Interface} threw")]
    public static partial void InlineCompletionFailed(this ILogger logger, string @interface, Exception exception);
}

/// <summary>
/// Keeps drop messages to at most <see cref="PerSecond"/> a second (a flood of bad packets must not
/// become a flood of log lines), counting the ones it holds back. Loop thread only.
/// </summary>
internal sealed class DropLogLimiter
{
    /// <summary>Drop messages per second at most.</summary>
    public const int PerSecond = 20;

    private long _windowStart = long.MinValue;
    private int _inWindow;
    private long _suppressed;

    /// <summary>Logs the drop unless this second's budget is spent (<paramref name="now"/> in µs).</summary>
    public void Dropped(ILogger logger, string reason, long now)
    {
        if (!logger.IsEnabled(LogLevel.Debug))
            return;
        if (now - _windowStart >= 1_000_000)
        {
            _windowStart = now;
            _inWindow = 0;
        }
        if (_inWindow >= PerSecond)
        {
            _suppressed++;
            return;
        }
        _inWindow++;
        logger.PacketDropped(reason, _suppressed);
        _suppressed = 0;
    }
}
