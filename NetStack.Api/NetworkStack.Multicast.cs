using System.Net.Sockets;
using NetStack.Core.Stack;
using NetStack.Core.Wire;

namespace NetStack;

// Multicast group membership: the sockets' joins and leaves, the IGMP and MLD messages received,
// the reports the core schedules, and the receive filters (IP layer, TAP frame filter). Every
// decision (when to report, which version, what to accept) is the core's (Multicast, IpLayer,
// Interface); this file only moves its answers.
public sealed partial class NetworkStack
{
    // Loop-only: the membership of each family.
    private MulticastState _mcast4 = Multicast.create(false, (ulong)Random.Shared.NextInt64());
    private MulticastState _mcast6 = Multicast.create(true, (ulong)Random.Shared.NextInt64());

    // The earlier of the two families' next deadlines, kept up to date by every change, so
    // that the loop's every pass reads one field (Multicast.nextDeadline walks the groups).
    private long _mcastNext = long.MaxValue;

    private void UpdateMulticastDeadline() =>
        _mcastNext = Math.Min(Multicast.nextDeadline(_mcast4), Multicast.nextDeadline(_mcast6));

    /// <summary>Joins <paramref name="group"/> for a socket (on the loop); the first join makes the stack a member.</summary>
    internal void JoinGroup(IpAddr group)
    {
        OnLoop(() =>
        {
            long now = Now();
            if (group.IsIpv6)
                _mcast6 = Multicast.join(now, group, _mcast6);
            else
                _mcast4 = Multicast.join(now, group, _mcast4);
            _statistics.Increment(group.IsIpv6 ? "mld.joined" : "igmp.joined");
            SyncGroups();
            UpdateMulticastDeadline();
            return true;
        });
    }

    /// <summary>Leaves <paramref name="group"/> for a socket (on the loop); the last leave ends the membership.</summary>
    internal void LeaveGroup(IpAddr group)
    {
        try
        {
            OnLoop(() =>
            {
                long now = Now();
                if (group.IsIpv6)
                    _mcast6 = Multicast.leave(now, group, _mcast6);
                else
                    _mcast4 = Multicast.leave(now, group, _mcast4);
                _statistics.Increment(group.IsIpv6 ? "mld.left" : "igmp.left");
                SyncGroups();
                UpdateMulticastDeadline();
                return true;
            });
        }
        catch (ObjectDisposedException)
        {
            // The stack is gone, and its memberships with it.
        }
    }

    // The IP layer and the TAP frame filter take the groups joined now.
    private void SyncGroups()
    {
        var groups4 = Multicast.members(_mcast4);
        var groups6 = Multicast.members(_mcast6);
        _ip = IpLayer.withGroups([.. groups4, .. groups6], _ip);
        _ethernet?.SetMulticastGroups(_ip.Groups4, _ip.Groups6);
    }

    /// <summary>
    /// True when <paramref name="address"/> is a broadcast address of the stack's IPv4 link (the
    /// limited broadcast, or the subnet broadcast of <see cref="NetStackOptions.PrefixLength"/>).
    /// </summary>
    internal bool IsBroadcast(IpAddr address) => !address.IsIpv6 && IpLayer.isBroadcast4(address.ipv4, Volatile.Read(ref _ip));

    private void OnGroupMessage(ReadOnlySpan<byte> packet, Received r, long now)
    {
        var body = IpLayer.slice(packet, r.Payload);
        bool v6 = r.Source.IsIpv6;
        string family = v6 ? "mld" : "igmp";
        var parsed = v6 ? Mld.parse(r.Source.ipv6, r.Destination.ipv6, body) : Igmp.parse(body);
        if (parsed.IsError)
        {
            _statistics.Increment(family + ".drop.malformed");
            return;
        }
        var message = parsed.ResultValue;
        _statistics.Increment(message.Kind switch
        {
            GroupMessageKind.Query => message.Version switch
            {
                GroupProtocolVersion.V1 => family + ".query.v1.received",
                GroupProtocolVersion.V2 => family + ".query.v2.received",
                _ => family + ".query.v3.received",
            },
            GroupMessageKind.Report => family + ".report.heard",
            GroupMessageKind.Leave => family + ".leave.heard",
            _ => family + ".report3.heard",
        });
        if (v6)
            _mcast6 = Multicast.receive(now, message, _mcast6);
        else
            _mcast4 = Multicast.receive(now, message, _mcast4);
        UpdateMulticastDeadline();
    }

    private long NextMulticastDeadline() => _mcastNext;

    private void RunMulticastTimers(long now)
    {
        if (_mcastNext > now)
            return;
        if (Multicast.nextDeadline(_mcast4) <= now)
        {
            var (state, reports) = Multicast.tick(now, _mcast4);
            _mcast4 = state;
            SendReports(reports, _address4, now);
        }
        if (Multicast.nextDeadline(_mcast6) <= now)
        {
            var (state, reports) = Multicast.tick(now, _mcast6);
            _mcast6 = state;
            SendReports(reports, MldSource(), now);
        }
        UpdateMulticastDeadline();
    }

    // RFC 3810 §5.2.13: MLD reports come from a link-local address, or from :: while none is
    // valid (a TUN link has none; Linux drops reports from any other source).
    private IpAddr? MldSource()
    {
        var linkLocal = _autoconfiguring is { } link
            ? Core.Link.Slaac.linkLocalIn(link.AutoconfiguredAddresses)
            : Microsoft.FSharp.Core.FSharpValueOption<Ipv6Address>.ValueNone;
        return IpAddr.NewV6(linkLocal.IsSome ? linkLocal.Value : Ipv6Address.Any);
    }

    private void SendReports(Microsoft.FSharp.Collections.FSharpList<GroupReport> reports, IpAddr? source, long now)
    {
        foreach (var report in reports)
        {
            string family = report.Ipv6 ? "mld" : "igmp";
            if (source is null)
            {
                _statistics.Increment(family + ".drop.no-address");
                continue;
            }
            int length = Multicast.write(source.Value, report, _packetBuffer);
            SendPacket(length, report.Destination, now);
            _statistics.Increment(report.Leave
                ? $"{family}.leave.sent"
                : $"{family}.report.v{(int)report.Version}.sent");
        }
    }

    // A socket's group and family checked as System.Net.Sockets checks them.
    internal static IpAddr CheckGroup(System.Net.IPAddress group, bool ipv4, bool ipv6)
    {
        ArgumentNullException.ThrowIfNull(group);
        if (group.IsIPv4MappedToIPv6)
            group = group.MapToIPv4();
        bool v6 = group.AddressFamily == AddressFamily.InterNetworkV6;
        if ((v6 && !ipv6) || (!v6 && !ipv4))
            throw new ArgumentException($"The socket is not bound to the family of {group}.", nameof(group));
        var address = IpAddr.OfIPAddress(group);
        if (!Multicast.isMulticast(address))
            throw new SocketException((int)SocketError.InvalidArgument);
        return address;
    }
}
