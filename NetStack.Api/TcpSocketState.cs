using System.Net.Sockets;
using NetStack.Core.Tcp;
using Microsoft.FSharp.Core;
using NetStack.Core.Wire;

namespace NetStack;

// The per-socket options of a TCP connection or listener, as the user set them: the part the core
// decides with (TcpSocketSettings: IP header, locked receive buffer, Nagle, keep-alive) and what
// only the API side uses (the send buffer, linger, the keep-alive time while keep-alive is off).
// Validation lives here, once for TcpSocketOptions, TcpConnection and TcpConnectionListener.
// Not thread-safe by itself: its owner locks.
internal sealed class TcpSocketState
{
    // 65535·2^14: the largest window a scaled 16-bit field can offer (RFC 7323 §2.3).
    internal const int MaxBufferBytes = 65535 << 14;

    internal TcpSocketSettings Core;
    internal TimeSpan KeepAliveTime;
    internal int SendBufferSize; // 0: the stack's (auto-tuned)
    internal LingerOption? Linger;

    private TcpSocketState() { }

    internal TcpSocketState Clone() => (TcpSocketState)MemberwiseClone();

    // The stack's defaults (NetStackOptions).
    internal static TcpSocketState Defaults(NetStackOptions options) => new()
    {
        Core = new TcpSocketSettings(
            IpHeaderSettings.Tcp,
            0,
            false,
            options.TcpKeepAlive is { } idle ? Some(idle) : FSharpValueOption<long>.ValueNone,
            Microseconds(options.TcpKeepAliveInterval),
            options.TcpKeepAliveCount),
        KeepAliveTime = options.TcpKeepAlive ?? TimeSpan.FromHours(2),
    };

    // The defaults with `options` applied; throws ArgumentException naming the option.
    internal static TcpSocketState From(NetStackOptions defaults, TcpSocketOptions? options)
    {
        var s = Defaults(defaults);
        if (options is null)
            return s;
        if (options.Ttl is { } ttl)
            s.SetTtl(ttl, nameof(options));
        if (options.TypeOfService is { } tos)
            s.SetTypeOfService(tos, nameof(options));
        if (options.DontFragment is { } df)
            s.SetDontFragment(df);
        if (options.ReceiveBufferSize is { } rcv)
            s.SetReceiveBufferSize(rcv, nameof(options));
        if (options.SendBufferSize is { } snd)
            s.SetSendBufferSize(snd, nameof(options));
        if (options.NoDelay is { } noDelay)
            s.SetNoDelay(noDelay);
        if (options.LingerState is { } linger)
            s.SetLinger(linger, nameof(options));
        if (options.KeepAliveTime is { } time)
            s.SetKeepAliveTime(time, nameof(options));
        if (options.KeepAliveInterval is { } interval)
            s.SetKeepAliveInterval(interval, nameof(options));
        if (options.KeepAliveRetryCount is { } count)
            s.SetKeepAliveRetryCount(count, nameof(options));
        if (options.KeepAlive is { } on)
            s.SetKeepAlive(on);
        return s;
    }

    // The F# record has no setters: a copy with some fields changed.
    internal static TcpSocketSettings With(in TcpSocketSettings s, IpHeaderSettings? ipHeader = null, int? receiveBufferSize = null,
        bool? noDelay = null, FSharpValueOption<long>? keepAliveIdle = null, long? keepAliveInterval = null, int? keepAliveCount = null) =>
        new(ipHeader ?? s.IpHeader, receiveBufferSize ?? s.ReceiveBufferSize, noDelay ?? s.NoDelay,
            keepAliveIdle ?? s.KeepAliveIdle, keepAliveInterval ?? s.KeepAliveInterval, keepAliveCount ?? s.KeepAliveCount);

    internal void SetNoDelay(bool on) => Core = With(Core, noDelay: on);

    internal static long Microseconds(TimeSpan t) => (long)t.TotalMicroseconds;

    private static FSharpValueOption<long> Some(TimeSpan t) => FSharpValueOption<long>.NewValueSome(Microseconds(t));

    internal void SetTtl(int ttl, string parameter)
    {
        if (ttl is < 1 or > 255)
            throw new ArgumentOutOfRangeException(parameter, ttl, "The TTL / hop limit must lie in 1..255.");
        Core = With(Core, ipHeader: Core.IpHeader.WithTtl(ttl));
    }

    internal void SetTypeOfService(int tos, string parameter)
    {
        if (tos is < 0 or > 255)
            throw new ArgumentOutOfRangeException(parameter, tos, "The type of service must lie in 0..255.");
        Core = With(Core, ipHeader: new IpHeaderSettings(Core.IpHeader.Ttl, (byte)tos, Core.IpHeader.DontFragment));
    }

    internal void SetDontFragment(bool on) =>
        Core = With(Core, ipHeader: new IpHeaderSettings(Core.IpHeader.Ttl, Core.IpHeader.TypeOfService, on));

    internal void SetReceiveBufferSize(int bytes, string parameter)
    {
        if (bytes is < 1 or > MaxBufferBytes)
            throw new ArgumentOutOfRangeException(parameter, bytes, $"A buffer size must lie in 1..{MaxBufferBytes}.");
        Core = With(Core, receiveBufferSize: bytes);
    }

    internal void SetSendBufferSize(int bytes, string parameter)
    {
        if (bytes is < 1 or > MaxBufferBytes)
            throw new ArgumentOutOfRangeException(parameter, bytes, $"A buffer size must lie in 1..{MaxBufferBytes}.");
        SendBufferSize = bytes;
    }

    internal void SetLinger(LingerOption? linger, string parameter)
    {
        ArgumentNullException.ThrowIfNull(linger, parameter);
        if (linger.LingerTime < 0)
            throw new ArgumentOutOfRangeException(parameter, linger.LingerTime, "The linger time cannot be negative.");
        // A copy: LingerOption is mutable, and the caller may change theirs later.
        Linger = new LingerOption(linger.Enabled, linger.LingerTime);
    }

    internal bool KeepAlive => Core.KeepAliveIdle.IsSome;

    internal void SetKeepAlive(bool on) =>
        Core = With(Core, keepAliveIdle: on ? Some(KeepAliveTime) : FSharpValueOption<long>.ValueNone);

    internal void SetKeepAliveTime(TimeSpan time, string parameter)
    {
        if (time < TimeSpan.FromSeconds(1) || time > TimeSpan.FromSeconds(32767))
            throw new ArgumentOutOfRangeException(parameter, time, "The keep-alive time must lie in 1..32767 seconds (TCP_KEEPIDLE).");
        KeepAliveTime = time;
        if (KeepAlive)
            Core = With(Core, keepAliveIdle: Some(time));
    }

    internal void SetKeepAliveInterval(TimeSpan interval, string parameter)
    {
        if (interval < TimeSpan.FromSeconds(1) || interval > TimeSpan.FromSeconds(32767))
            throw new ArgumentOutOfRangeException(parameter, interval, "The keep-alive interval must lie in 1..32767 seconds (TCP_KEEPINTVL).");
        Core = With(Core, keepAliveInterval: Microseconds(interval));
    }

    internal void SetKeepAliveRetryCount(int count, string parameter)
    {
        if (count is < 1 or > 127)
            throw new ArgumentOutOfRangeException(parameter, count, "The keep-alive probe count must lie in 1..127 (TCP_KEEPCNT).");
        Core = With(Core, keepAliveCount: count);
    }
}
