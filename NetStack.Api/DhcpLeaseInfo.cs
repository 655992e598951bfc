using System.Net;

namespace NetStack;

/// <summary>
/// The DHCPv4 lease of a stack started with <see cref="NetStackOptions.Dhcp"/>, as
/// <see cref="NetworkStack.DhcpLease"/> and <see cref="NetworkStack.DhcpLeaseChanged"/> report it
/// (RFC 2131, options of RFC 2132 and RFC 3442).
/// </summary>
/// <param name="Address">The leased address (yiaddr).</param>
/// <param name="PrefixLength">From the subnet mask (option 1).</param>
/// <param name="Routers">The routers (option 3), in the server's order; ignored for routing when <paramref name="ClasslessRoutes"/> is not empty (RFC 3442 §2).</param>
/// <param name="DnsServers">The DNS servers (option 6).</param>
/// <param name="ClasslessRoutes">The classless static routes (option 121): destination, prefix length and router (0.0.0.0: on the link).</param>
/// <param name="Mtu">The interface MTU the server suggests (option 26), or null.</param>
/// <param name="Server">The server identifier (option 54): the server RENEWING talks to.</param>
/// <param name="LeaseTime">The lease's length (option 51); <see cref="Timeout.InfiniteTimeSpan"/> for an infinite lease.</param>
/// <param name="RenewalTime">T1: from the lease's start to RENEWING (option 58 or half the lease).</param>
/// <param name="RebindingTime">T2: from the lease's start to REBINDING (option 59 or 7/8 of the lease).</param>
/// <param name="Remaining">How long the lease has left when the snapshot was taken.</param>
/// <param name="State">The client's RFC 2131 state: "Bound", "Renewing" or "Rebinding".</param>
public sealed record DhcpLeaseInfo(
    IPAddress Address,
    int PrefixLength,
    IReadOnlyList<IPAddress> Routers,
    IReadOnlyList<IPAddress> DnsServers,
    IReadOnlyList<(IPAddress Destination, int PrefixLength, IPAddress Router)> ClasslessRoutes,
    int? Mtu,
    IPAddress Server,
    TimeSpan LeaseTime,
    TimeSpan RenewalTime,
    TimeSpan RebindingTime,
    TimeSpan Remaining,
    string State);

/// <summary>The argument of <see cref="NetworkStack.DhcpLeaseChanged"/>.</summary>
/// <param name="Lease">The new lease (obtained or renewed), or null when the address was lost (expiry, NAK, conflict).</param>
/// <param name="PreviousAddress">The address held before the change, or null.</param>
public sealed class DhcpLeaseChangedEventArgs(DhcpLeaseInfo? Lease, IPAddress? PreviousAddress) : EventArgs
{
    /// <summary>The new lease, or null when the address was lost.</summary>
    public DhcpLeaseInfo? Lease { get; } = Lease;

    /// <summary>The address held before the change, or null.</summary>
    public IPAddress? PreviousAddress { get; } = PreviousAddress;
}
