using System.Net;
using System.Net.Sockets;
using Microsoft.FSharp.Core;
using NetStack.Core.Link;
using NetStack.Core.Stack;
using NetStack.Core.Wire;
using NetStack.Engine;

namespace NetStack;

/// <summary>
/// Tap mode with <see cref="NetStackOptions.Dhcp"/>: the IPv4 address comes from the DHCP client
/// of the link interface (<see cref="Core.Link.Dhcp"/>, pure, in NetStack.Core). The loop copies
/// each new lease the adapter publishes into the IP layer, as it copies autoconfigured IPv6
/// addresses; an address that goes away takes its TCP connections with it.
/// </summary>
public sealed partial class NetworkStack
{
    // The adapter whose DHCP lease the loop follows (null: no DHCP).
    private readonly EthernetPacketDevice? _dhcpLink;

    // The lease the loop last copied into the IP layer (a reference compare notices a new one).
    private DhcpLease? _dhcpSeen;

    // Completed with the first bound lease (Start waits for it, DhcpStartTimeout).
    private readonly TaskCompletionSource _firstLease = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // While true, TCP segments are not sent: the connections of an address that went away are
    // aborted without a RST from an address no longer ours.
    private bool _silentTcp;

    /// <summary>
    /// Raised (on a thread-pool thread, not the stack's loop) whenever the DHCP lease changes: a
    /// lease bound or renewed (<see cref="DhcpLeaseChangedEventArgs.Lease"/>), or the address lost
    /// at expiry or on a NAK (Lease null).
    /// </summary>
    public event EventHandler<DhcpLeaseChangedEventArgs>? DhcpLeaseChanged;

    /// <summary>
    /// The DHCP lease in force (<see cref="NetStackOptions.Dhcp"/>), with the client's state
    /// (Bound, Renewing, Rebinding); null while the stack has none (or without DHCP). A snapshot.
    /// </summary>
    public DhcpLeaseInfo? DhcpLease
    {
        get
        {
            if (_dhcpLink?.DhcpClient is not { } client || client.Lease.IsNone)
                return null;
            return Info(client.Lease.Value, client.State, _dhcpLink.Clock);
        }
    }

    /// <summary>The DHCP client's RFC 2131 state (Init, Selecting, Requesting, Probing, Bound, ...), or null without DHCP.</summary>
    public string? DhcpState => _dhcpLink?.DhcpClient?.State.ToString();

    private static DhcpLeaseInfo Info(DhcpLease lease, Core.Link.DhcpState state, long now)
    {
        static TimeSpan Span(long from, long to) =>
            to == long.MaxValue ? Timeout.InfiniteTimeSpan : TimeSpan.FromMicroseconds(Math.Max(0, to - from));
        return new DhcpLeaseInfo(
            lease.Address.ToIPAddress(),
            lease.PrefixLength,
            [.. lease.Routers.Select(r => r.ToIPAddress())],
            [.. lease.DnsServers.Select(r => r.ToIPAddress())],
            [.. lease.ClasslessRoutes.Select(r => (r.Destination.ToIPAddress(), r.PrefixLength, r.Router.ToIPAddress()))],
            lease.Mtu.IsSome ? lease.Mtu.Value : null,
            lease.ServerId.ToIPAddress(),
            Span(lease.Start, lease.ExpiresAt),
            Span(lease.Start, lease.RenewAt),
            Span(lease.Start, lease.RebindAt),
            Span(now, lease.ExpiresAt),
            state.ToString());
    }

    private static void ValidateDhcp(NetStackOptions options)
    {
        if (!options.Dhcp)
            return;
        if (options.Mode != NetStackMode.Tap)
            throw new ArgumentException("Dhcp needs Mode = Tap (DHCP runs over Ethernet).", nameof(options));
        if (options.Address is not null)
            throw new ArgumentException("Dhcp and Address exclude each other: set Address = null to take the IPv4 address from DHCP.", nameof(options));
        if (options.DhcpPreviousAddress is not null && options.DhcpPreviousAddress.AddressFamily != AddressFamily.InterNetwork)
            throw new ArgumentException($"DhcpPreviousAddress {options.DhcpPreviousAddress} is not an IPv4 address.", nameof(options));
        if (options.DhcpStartTimeout < TimeSpan.Zero)
            throw new ArgumentException("DhcpStartTimeout cannot be negative.", nameof(options));
    }

    // Loop: copies a new lease into the IP layer; the connections of an address that went away
    // are aborted (their reads and writes fail with OperationAborted), as the kernel's sockets on a
    // deleted address fail; then the event.
    private void SyncDhcp()
    {
        var lease = _dhcpLink!.CurrentLease;
        if (ReferenceEquals(lease, _dhcpSeen))
            return;
        _dhcpSeen = lease;
        var before = _address4;
        IpAddr? after = lease is null ? null : IpAddr.NewV4(lease.Address);
        if (!Nullable.Equals(before, after))
        {
            _ip = IpLayer.withAddress4(
                lease is null ? FSharpValueOption<Ipv4Address>.ValueNone : FSharpValueOption<Ipv4Address>.NewValueSome(lease.Address),
                lease?.PrefixLength ?? 0, _ip);
            _address4 = after;
            if (before is { } gone)
                AbortConnectionsOn(gone);
        }

        if (lease is not null)
            _firstLease.TrySetResult();
        var info = lease is null ? null : Info(lease, Core.Link.DhcpState.Bound, Now());
        if (DhcpLeaseChanged is { } handler)
        {
            var args = new DhcpLeaseChangedEventArgs(info, before?.ToIPAddress());
            ThreadPool.QueueUserWorkItem(_ => handler(this, args));
        }
    }

    private void AbortConnectionsOn(IpAddr gone)
    {
        long now = Now();
        var victims = _tcpTable.Connections.Where(e => e.Key.Local.Equals(gone)).ToList();
        _silentTcp = true;
        try
        {
            foreach (var endpoint in victims)
            {
                var output = TcpOutput();
                _tcpTable.Abort(output, now, endpoint);
                ExecuteOutput(output, default, now);
                _statistics.Increment("dhcp.tcp.aborted");
            }
        }
        finally
        {
            _silentTcp = false;
        }
    }

    // Start in DHCP mode: waits up to DhcpStartTimeout for the first lease.
    private static NetworkStack AwaitLease(NetworkStack stack)
    {
        var limit = stack.Options.DhcpStartTimeout;
        if (stack._dhcpLink is null || limit == TimeSpan.Zero)
            return stack;
        if (!stack._firstLease.Task.Wait(limit))
        {
            stack.Dispose();
            throw new TimeoutException($"No DHCP lease on '{stack.InterfaceName}' within {limit} (state {stack.DhcpState ?? "none"}).");
        }

        return stack;
    }
}
