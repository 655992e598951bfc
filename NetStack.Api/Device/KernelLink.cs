using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using NetStack.Interop;

namespace NetStack.Device;

/// <summary>
/// Configures the kernel's side of one network interface over rtnetlink (RFC 3549; rtnetlink(7)):
/// link up/down, MTU, addresses with a point-to-point peer, and routes through the interface.
/// </summary>
/// <remarks>
/// <para>
/// For a TUN device serving a userspace stack, the kernel side gets the host address and the stack
/// is its peer: <c>AddAddress(host, stack)</c> assigns <c>host</c> to the interface and makes the
/// kernel route <c>stack</c> (a /32 or /128) through it, exactly like
/// <c>ip addr add HOST peer STACK dev NAME</c>. Wider prefixes behind the stack take
/// <see cref="AddRoute(IPAddress, int, IPAddress?)"/>.
/// </para>
/// <para>
/// Every request asks for an acknowledgement (NLM_F_ACK) and waits for it, so a method returns only
/// once the kernel has applied the change, and a refusal becomes a <see cref="TunDeviceException"/>
/// carrying the errno and the kernel's own explanation (extended ACK) when it gives one.
/// </para>
/// <para>
/// <see cref="Dispose"/> removes the addresses and routes this object added, best effort (deleting
/// the interface, e.g. disposing a <see cref="TunDevice"/> it created, removes them anyway); it
/// leaves the MTU and the up/down state as they are. Methods may be called from any thread; they
/// are serialized. Needs CAP_NET_ADMIN in the interface's network namespace.
/// </para>
/// </remarks>
public sealed unsafe class KernelLink : IDisposable
{
    // linux/netlink.h: message header, flags and the control message types.
    private const int NETLINK_ROUTE = 0;
    private const int NlMsgHeaderLength = 16;
    private const ushort NLMSG_ERROR = 2;
    private const ushort NLMSG_MIN_TYPE = 0x10; // types below are netlink's own control messages
    private const ushort NLM_F_REQUEST = 0x1;
    private const ushort NLM_F_ACK = 0x4;
    private const ushort NLM_F_EXCL = 0x200;
    private const ushort NLM_F_CREATE = 0x400;

    // Flags on an NLMSG_ERROR reply: the echoed request was cut to its header (we ask for that with
    // NETLINK_CAP_ACK), and extended-ACK attributes follow it.
    private const ushort NLM_F_CAPPED = 0x100;
    private const ushort NLM_F_ACK_TLVS = 0x200;
    private const ushort NLMSGERR_ATTR_MSG = 1;

    // Socket options at SOL_NETLINK: keep error replies small, and have the kernel explain refusals.
    private const int SOL_NETLINK = 270;
    private const int NETLINK_CAP_ACK = 10;
    private const int NETLINK_EXT_ACK = 11;

    // linux/rtnetlink.h message types.
    private const ushort RTM_NEWLINK = 16;
    private const ushort RTM_NEWADDR = 20;
    private const ushort RTM_DELADDR = 21;
    private const ushort RTM_NEWROUTE = 24;
    private const ushort RTM_DELROUTE = 25;
    private const ushort RTM_GETROUTE = 26;

    // linux/if_link.h, linux/if.h: attributes and flags of struct ifinfomsg.
    private const ushort IFLA_MTU = 4;
    private const uint IFF_UP = 0x1;

    // linux/if_addr.h: attributes and flags of struct ifaddrmsg.
    private const ushort IFA_ADDRESS = 1;
    private const ushort IFA_LOCAL = 2;
    private const byte IFA_F_NODAD = 0x02; // usable at once: no tentative phase (RFC 4862 §5.4)

    // linux/rtnetlink.h: attributes and values of struct rtmsg.
    private const ushort RTA_DST = 1;
    private const ushort RTA_OIF = 4;
    private const ushort RTA_GATEWAY = 5;
    private const byte RT_TABLE_MAIN = 254;
    private const byte RTPROT_STATIC = 4; // "added by an administrator", as `ip route add` does
    private const byte RT_SCOPE_UNIVERSE = 0;
    private const byte RT_SCOPE_LINK = 253;
    private const byte RTN_UNICAST = 1;
    private const byte RTN_LOCAL = 2;

    /// <summary>The MTU range the kernel accepts on a TUN device: IPv4's minimum datagram size
    /// (RFC 791: 68) up to the largest IP packet. IPv6 needs at least 1280 (RFC 8200 §5); below
    /// that the kernel disables IPv6 on the interface.</summary>
    public const int MinMtu = 68;

    /// <summary>The largest MTU a TUN device takes: 65535, the largest IPv4 total length.</summary>
    public const int MaxMtu = 65535;

    /// <summary>How long to wait for the kernel's acknowledgement; rtnetlink answers synchronously,
    /// so only a broken kernel or socket gets near this.</summary>
    private const int ReplyTimeoutMilliseconds = 5000;

    /// <summary>How long AddAddress waits for the kernel to finish setting up an IPv6 address;
    /// it normally takes well under a millisecond.</summary>
    private const int Ipv6SettleMilliseconds = 2000;

    private readonly FileDescriptorHandle _socket;
    private readonly byte[] _reply = new byte[8192];
    private readonly Lock _lock = new();
    private readonly List<(IPAddress Local, IPAddress Peer, int PrefixLength)> _addresses = [];
    private readonly List<(IPAddress Destination, int PrefixLength, IPAddress? Gateway)> _routes = [];
    private uint _sequence;
    private bool _disposed;

    /// <summary>Opens a configurator for the kernel side of <paramref name="device"/>.</summary>
    /// <exception cref="TunDeviceException">The rtnetlink socket could not be opened.</exception>
    public KernelLink(TunDevice device)
        : this(CheckDevice(device).Name, device.InterfaceIndex)
    {
    }

    private KernelLink(string name, int index)
    {
        InterfaceName = name;
        InterfaceIndex = index;
        _socket = OpenSocket();
    }

    /// <summary>The interface's name as given when this object was opened.</summary>
    public string InterfaceName { get; }

    /// <summary>The interface's index (ifindex), which every request names it by.</summary>
    public int InterfaceIndex { get; }

    /// <summary>Opens a configurator for the existing interface named <paramref name="interfaceName"/>.</summary>
    /// <exception cref="ArgumentException">The name is empty.</exception>
    /// <exception cref="TunDeviceException">No such interface (ENODEV), or the socket could not be opened.</exception>
    public static KernelLink Open(string interfaceName)
    {
        ArgumentException.ThrowIfNullOrEmpty(interfaceName);
        uint index = LibC.IfNameToIndex(interfaceName);
        if (index == 0)
        {
            throw new TunDeviceException(
                "if_nametoindex", LibC.ENODEV,
                $"No interface named '{interfaceName}' exists in this network namespace (ENODEV).");
        }

        return new KernelLink(interfaceName, (int)index);
    }

    private static TunDevice CheckDevice(TunDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        return device;
    }

    private static FileDescriptorHandle OpenSocket()
    {
        int fd = LibC.Socket(LibC.AF_NETLINK, LibC.SOCK_RAW | LibC.SOCK_CLOEXEC, NETLINK_ROUTE);
        if (fd < 0)
            throw TunDeviceException.For("socket(AF_NETLINK, NETLINK_ROUTE)", Marshal.GetLastPInvokeError());
        var handle = new FileDescriptorHandle(fd);

        // Both options are optional refinements (Linux 4.2+ / 4.12+): ignore a kernel without them.
        int on = 1;
        LibC.SetSockOpt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &on, sizeof(int));
        LibC.SetSockOpt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &on, sizeof(int));

        // struct sockaddr_nl { u16 family; u16 pad; u32 pid; u32 groups; }: port 0 lets the
        // kernel pick our port id; no multicast groups, we only want replies.
        Span<byte> address = stackalloc byte[12];
        address.Clear();
        MemoryMarshal.Write(address, (ushort)LibC.AF_NETLINK);
        fixed (byte* p = address)
        {
            if (LibC.Bind(fd, p, (uint)address.Length) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                handle.Dispose();
                throw TunDeviceException.For("bind(AF_NETLINK)", errno);
            }
        }

        return handle;
    }

    /// <summary>
    /// Sets the interface up (administratively), like <c>ip link set NAME up</c>. Do it before
    /// adding IPv6 addresses: on a down link the kernel finishes setting them up (local and peer
    /// routes) only some time after the link comes up, while AddAddress on an up link returns
    /// once they are usable.
    /// </summary>
    /// <exception cref="TunDeviceException">The kernel refused (see its message).</exception>
    public void SetUp() => SetFlags(IFF_UP, IFF_UP, "set up");

    /// <summary>Sets the interface down, like <c>ip link set NAME down</c>.</summary>
    /// <exception cref="TunDeviceException">The kernel refused (see its message).</exception>
    public void SetDown() => SetFlags(0, IFF_UP, "set down");

    private void SetFlags(uint flags, uint change, string what)
    {
        var message = new MessageWriter(stackalloc byte[64], RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        WriteLinkHeader(ref message, flags, change);
        Request(ref message, $"RTM_NEWLINK ({what} '{InterfaceName}')");
    }

    /// <summary>Sets the interface's MTU, like <c>ip link set NAME mtu N</c>.</summary>
    /// <param name="mtu">The MTU in bytes, <see cref="MinMtu"/> to <see cref="MaxMtu"/>; at least
    /// 1280 if the interface is to carry IPv6.</param>
    /// <exception cref="ArgumentOutOfRangeException">The MTU is outside that range.</exception>
    /// <exception cref="TunDeviceException">The kernel refused (see its message).</exception>
    public void SetMtu(int mtu)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(mtu, MinMtu);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(mtu, MaxMtu);
        var message = new MessageWriter(stackalloc byte[64], RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        WriteLinkHeader(ref message, 0, 0);
        message.AttributeUInt32(IFLA_MTU, (uint)mtu);
        Request(ref message, $"RTM_NEWLINK (mtu {mtu} on '{InterfaceName}')");
    }

    private void WriteLinkHeader(ref MessageWriter message, uint flags, uint change)
    {
        // struct ifinfomsg { u8 family; u8 pad; u16 type; i32 index; u32 flags; u32 change; }
        Span<byte> header = message.Reserve(16);
        header[0] = 0; // AF_UNSPEC
        MemoryMarshal.Write(header[4..], InterfaceIndex);
        MemoryMarshal.Write(header[8..], flags);
        MemoryMarshal.Write(header[12..], change);
    }

    /// <summary>
    /// Assigns <paramref name="local"/> to the interface with <paramref name="peer"/> as the
    /// point-to-point address on the other end (prefix /32 or /128), like
    /// <c>ip addr add LOCAL peer PEER dev NAME</c>. The kernel then routes <paramref name="peer"/>
    /// through the interface. For a TUN device, <paramref name="local"/> is the host's address and
    /// <paramref name="peer"/> the userspace stack's. Set the link up first: then the address and
    /// the route to the peer are usable as soon as this method returns, for IPv6 too (see
    /// <see cref="SetUp"/>).
    /// </summary>
    /// <exception cref="ArgumentException">
    /// An address is null, unspecified, multicast, broadcast, loopback or IPv4-mapped, the two differ
    /// in family, or they are equal.
    /// </exception>
    /// <exception cref="TunDeviceException">
    /// The address is already assigned (EEXIST), IPv6 is disabled on the interface (EINVAL or EACCES;
    /// for instance its MTU is below 1280), or the kernel refused otherwise (see its message).
    /// </exception>
    public void AddAddress(IPAddress local, IPAddress peer)
    {
        CheckUnicast(local, nameof(local));
        CheckUnicast(peer, nameof(peer));
        if (local.AddressFamily != peer.AddressFamily)
            throw new ArgumentException($"Local address {local} and peer {peer} are of different families.", nameof(peer));
        if (local.Equals(peer))
            throw new ArgumentException($"The peer address must differ from the local address {local}.", nameof(peer));
        int prefixLength = local.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        lock (_lock)
        {
            ChangeAddress(RTM_NEWADDR, local, peer, prefixLength);
            _addresses.Add((local, peer, prefixLength));
            if (prefixLength == 128)
                WaitUntilIpv6Usable(local, peer);
        }
    }

    /// <summary>Why the kernel may refuse IPv6 addresses on this interface, checked where possible.</summary>
    private string? Ipv6DisabledAdvice()
    {
        // RFC 8200 §5: IPv6 needs links with an MTU of at least 1280; below it the kernel drops
        // the interface's IPv6 state entirely.
        if (InterfaceRequest.Query(InterfaceName, InterfaceRequest.SIOCGIFMTU, out int mtu) == 0 && mtu < 1280)
        {
            return $"The MTU of '{InterfaceName}' is {mtu}, below IPv6's minimum of 1280, so the kernel has " +
                   "disabled IPv6 on it: raise the MTU first (SetMtu).";
        }

        return $"IPv6 may be disabled on '{InterfaceName}' (sysctl net.ipv6.conf.{InterfaceName}.disable_ipv6).";
    }

    /// <summary>
    /// IPv4 installs an address's local and peer routes while it adds the address, but IPv6 does it
    /// later, from the work item that ends duplicate address detection (even with IFA_F_NODAD), so
    /// right after RTM_NEWADDR the address can neither receive (no local route) nor reach its peer
    /// (ENETUNREACH). Waits, briefly, until route lookups find both, so that an address is usable
    /// when AddAddress returns. On an interface that is not up and running the kernel defers all
    /// of it to link-up, and there is nothing to wait for.
    /// </summary>
    private void WaitUntilIpv6Usable(IPAddress local, IPAddress? peer)
    {
        if (InterfaceRequest.Query(InterfaceName, InterfaceRequest.SIOCGIFFLAGS, out int flags) != 0 ||
            (flags & (InterfaceRequest.IFF_UP | InterfaceRequest.IFF_RUNNING)) !=
            (InterfaceRequest.IFF_UP | InterfaceRequest.IFF_RUNNING))
        {
            return;
        }

        long deadline = Environment.TickCount64 + Ipv6SettleMilliseconds;
        while (!(RoutesTo(local, RTN_LOCAL) && (peer is null || RoutesTo(peer, RTN_UNICAST))))
        {
            if (Environment.TickCount64 > deadline)
                return; // best effort: the kernel is slow, not wrong; the caller may retry its send
            Thread.Sleep(1);
        }
    }

    /// <summary>True when the kernel's route lookup for <paramref name="destination"/> (RTM_GETROUTE,
    /// like <c>ip route get</c>) finds a route of <paramref name="routeType"/>, through this
    /// interface for a unicast route.</summary>
    private bool RoutesTo(IPAddress destination, byte routeType)
    {
        bool v6 = destination.AddressFamily == AddressFamily.InterNetworkV6;
        var message = new MessageWriter(stackalloc byte[64], RTM_GETROUTE, NLM_F_REQUEST);
        Span<byte> header = message.Reserve(12);
        header.Clear();
        header[0] = (byte)(v6 ? LibC.AF_INET6 : LibC.AF_INET);
        header[1] = (byte)(v6 ? 128 : 32);
        message.AttributeAddress(RTA_DST, destination);
        if (Exchange(ref message, out _, out Range reply) != 0 || reply.Equals(default(Range)))
            return false;

        // The answer is an RTM_NEWROUTE message: nlmsghdr, rtmsg (type at byte 7), attributes.
        ReadOnlySpan<byte> answer = _reply.AsSpan(reply);
        if (answer.Length < NlMsgHeaderLength + 12 || answer[NlMsgHeaderLength + 7] != routeType)
            return false;
        if (routeType != RTN_UNICAST)
            return true;
        ReadOnlySpan<byte> attributes = answer[(NlMsgHeaderLength + 12)..];
        while (attributes.Length >= 4)
        {
            int length = MemoryMarshal.Read<ushort>(attributes);
            if (length < 4 || length > attributes.Length)
                return false;
            if (MemoryMarshal.Read<ushort>(attributes[2..]) == RTA_OIF && length >= 8)
                return MemoryMarshal.Read<int>(attributes[4..]) == InterfaceIndex;
            attributes = attributes[Math.Min(Align(length), attributes.Length)..];
        }

        return false;
    }

    /// <summary>
    /// Assigns <paramref name="local"/> with a subnet prefix, like <c>ip addr add LOCAL/LEN dev NAME</c>;
    /// the kernel routes the whole prefix through the interface.
    /// </summary>
    /// <param name="local">The interface's address.</param>
    /// <param name="prefixLength">0–32 for IPv4, 0–128 for IPv6.</param>
    /// <exception cref="ArgumentException">The address is not a usable unicast address, or the prefix is out of range.</exception>
    /// <exception cref="TunDeviceException">The address is already assigned (EEXIST) or the kernel refused (see its message).</exception>
    public void AddAddress(IPAddress local, int prefixLength)
    {
        CheckUnicast(local, nameof(local));
        CheckPrefixLength(local, prefixLength);
        lock (_lock)
        {
            ChangeAddress(RTM_NEWADDR, local, local, prefixLength);
            _addresses.Add((local, local, prefixLength));
            if (local.AddressFamily == AddressFamily.InterNetworkV6)
                WaitUntilIpv6Usable(local, null);
        }
    }

    private void ChangeAddress(ushort type, IPAddress local, IPAddress peer, int prefixLength)
    {
        ushort flags = type == RTM_NEWADDR
            ? (ushort)(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            : (ushort)(NLM_F_REQUEST | NLM_F_ACK);
        bool v6 = local.AddressFamily == AddressFamily.InterNetworkV6;
        var message = new MessageWriter(stackalloc byte[128], type, flags);

        // struct ifaddrmsg { u8 family; u8 prefixlen; u8 flags; u8 scope; u32 index; }
        Span<byte> header = message.Reserve(8);
        header[0] = (byte)(v6 ? LibC.AF_INET6 : LibC.AF_INET);
        header[1] = (byte)prefixLength;
        header[2] = v6 ? IFA_F_NODAD : (byte)0;
        header[3] = RT_SCOPE_UNIVERSE;
        MemoryMarshal.Write(header[4..], InterfaceIndex);

        // IFA_LOCAL is the interface's own address, IFA_ADDRESS the far end of a point-to-point
        // link (the same address when there is no peer).
        message.AttributeAddress(IFA_LOCAL, local);
        message.AttributeAddress(IFA_ADDRESS, peer);

        string name = type == RTM_NEWADDR ? "RTM_NEWADDR" : "RTM_DELADDR";
        string shown = peer.Equals(local) ? $"{local}/{prefixLength}" : $"{local} peer {peer}";
        Request(ref message, $"{name} ({shown} on '{InterfaceName}')", errno => errno switch
        {
            LibC.EEXIST => $"Address {local} is already assigned to '{InterfaceName}'.",
            LibC.EACCES or LibC.EINVAL when v6 => Ipv6DisabledAdvice(),
            _ => null,
        });
    }

    /// <summary>
    /// Routes <paramref name="destination"/>/<paramref name="prefixLength"/> through the interface
    /// (main table, no gateway), like <c>ip route add DEST/LEN dev NAME</c>: for example a whole
    /// prefix served by the stack behind a TUN device.
    /// </summary>
    /// <param name="destination">The network address; its bits past the prefix must be zero.</param>
    /// <param name="prefixLength">0–32 for IPv4, 0–128 for IPv6.</param>
    /// <exception cref="ArgumentException">The destination is null, not IPv4/IPv6, or has host bits set, or the prefix is out of range.</exception>
    /// <exception cref="TunDeviceException">
    /// The same route exists already (EEXIST; a peer address installs one for the peer), the
    /// interface is down (ENETDOWN), or the kernel refused otherwise (see its message).
    /// </exception>
    public void AddRoute(IPAddress destination, int prefixLength) => AddRoute(destination, prefixLength, null);

    /// <summary>
    /// Routes <paramref name="destination"/>/<paramref name="prefixLength"/> through the interface
    /// via <paramref name="gateway"/>, like <c>ip route add DEST/LEN via GATEWAY dev NAME</c>: for
    /// example a default route (0.0.0.0/0 or ::/0) via the stack's address. The gateway must be
    /// reachable on the link (inside a prefix of an address of the interface); null means no
    /// gateway, as <see cref="AddRoute(IPAddress, int)"/>.
    /// </summary>
    /// <param name="destination">The network address; its bits past the prefix must be zero.</param>
    /// <param name="prefixLength">0–32 for IPv4, 0–128 for IPv6.</param>
    /// <param name="gateway">The next hop, of the destination's family, or null.</param>
    /// <exception cref="ArgumentException">As for <see cref="AddRoute(IPAddress, int)"/>, or the gateway is of another family.</exception>
    /// <exception cref="TunDeviceException">
    /// As for <see cref="AddRoute(IPAddress, int)"/>; ENETUNREACH when the gateway is not on the link.
    /// </exception>
    public void AddRoute(IPAddress destination, int prefixLength, IPAddress? gateway)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (gateway is not null && gateway.AddressFamily != destination.AddressFamily)
            throw new ArgumentException($"Gateway {gateway} is not of the family of {destination}.", nameof(gateway));
        CheckFamily(destination, nameof(destination));
        CheckPrefixLength(destination, prefixLength);
        byte[] bytes = destination.GetAddressBytes();
        for (int bit = prefixLength; bit < bytes.Length * 8; bit++)
        {
            if ((bytes[bit / 8] & (0x80 >> (bit % 8))) != 0)
            {
                throw new ArgumentException(
                    $"Route destination {destination}/{prefixLength} has bits set past the prefix; " +
                    "give the network address.", nameof(destination));
            }
        }

        ChangeRoute(RTM_NEWROUTE, destination, prefixLength, gateway);
        lock (_lock)
            _routes.Add((destination, prefixLength, gateway));
    }

    private void ChangeRoute(ushort type, IPAddress destination, int prefixLength, IPAddress? gateway)
    {
        ushort flags = type == RTM_NEWROUTE
            ? (ushort)(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            : (ushort)(NLM_F_REQUEST | NLM_F_ACK);
        bool v6 = destination.AddressFamily == AddressFamily.InterNetworkV6;
        var message = new MessageWriter(stackalloc byte[128], type, flags);

        // struct rtmsg { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags; }
        Span<byte> header = message.Reserve(12);
        header.Clear();
        header[0] = (byte)(v6 ? LibC.AF_INET6 : LibC.AF_INET);
        header[1] = (byte)prefixLength;
        header[4] = RT_TABLE_MAIN;
        header[5] = RTPROT_STATIC;
        // A route with no gateway reaches hosts on the link itself (IPv6 ignores the scope); one
        // via a gateway reaches beyond it.
        header[6] = v6 || gateway is not null ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
        header[7] = RTN_UNICAST;

        if (prefixLength > 0)
            message.AttributeAddress(RTA_DST, destination);
        message.AttributeUInt32(RTA_OIF, (uint)InterfaceIndex);
        if (gateway is not null)
            message.AttributeAddress(RTA_GATEWAY, gateway);

        string name = type == RTM_NEWROUTE ? "RTM_NEWROUTE" : "RTM_DELROUTE";
        string via = gateway is null ? "" : $" via {gateway}";
        Request(ref message, $"{name} ({destination}/{prefixLength}{via} dev '{InterfaceName}')", errno => errno switch
        {
            LibC.EEXIST => $"A route to {destination}/{prefixLength} exists already.",
            LibC.ENETDOWN => $"Interface '{InterfaceName}' is down: call SetUp first.",
            _ => null,
        });
    }

    private static void CheckFamily(IPAddress address, string parameter)
    {
        if (address.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
            throw new ArgumentException($"{address} is neither an IPv4 nor an IPv6 address.", parameter);
    }

    private static void CheckUnicast(IPAddress address, string parameter)
    {
        ArgumentNullException.ThrowIfNull(address, parameter);
        CheckFamily(address, parameter);
        bool bad = address.AddressFamily == AddressFamily.InterNetwork
            ? address.Equals(IPAddress.Any) || address.Equals(IPAddress.Broadcast) ||
              IPAddress.IsLoopback(address) || (address.GetAddressBytes()[0] & 0xF0) == 0xE0
            : address.Equals(IPAddress.IPv6Any) || address.IsIPv6Multicast || IPAddress.IsLoopback(address) ||
              address.IsIPv4MappedToIPv6;
        if (bad)
        {
            throw new ArgumentException(
                $"{address} cannot be an interface address: it is unspecified, broadcast, multicast, " +
                "loopback or IPv4-mapped.", parameter);
        }
    }

    private static void CheckPrefixLength(IPAddress address, int prefixLength)
    {
        int max = address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        ArgumentOutOfRangeException.ThrowIfNegative(prefixLength);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(prefixLength, max);
    }

    /// <summary>
    /// Sends one request and waits for its acknowledgement; a negative errno in the reply becomes a
    /// <see cref="TunDeviceException"/> with the kernel's extended-ACK text, if any.
    /// </summary>
    private void Request(ref MessageWriter message, string operation, Func<int, string?>? advice = null)
    {
        int errno = Exchange(ref message, out string? kernelText, out _);
        if (errno != 0)
            throw TunDeviceException.For(operation, errno, advice?.Invoke(errno), kernelText);
    }

    /// <summary>
    /// Sends one request and returns the errno of its NLMSG_ERROR reply (0 = ACK), or 0 and the
    /// place in <see cref="_reply"/> of the first other message answering it (a GET request's answer).
    /// </summary>
    private int Exchange(ref MessageWriter message, out string? kernelText, out Range reply)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            uint sequence = ++_sequence;
            ReadOnlySpan<byte> request = message.Finish(sequence);
            bool added = false;
            try
            {
                _socket.DangerousAddRef(ref added);
                return Exchange(_socket.Fd, request, sequence, out kernelText, out reply);
            }
            finally
            {
                if (added)
                    _socket.DangerousRelease();
            }
        }
    }

    private int Exchange(int fd, ReadOnlySpan<byte> request, uint sequence, out string? kernelText, out Range reply)
    {
        kernelText = null;
        reply = default;
        fixed (byte* p = request)
        {
            while (LibC.Send(fd, p, (nuint)request.Length, 0) < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != LibC.EINTR)
                    throw TunDeviceException.For("send(AF_NETLINK)", errno);
            }
        }

        while (true)
        {
            var pollFd = new LibC.PollFd { Fd = fd, Events = LibC.POLLIN };
            int ready = LibC.Poll(&pollFd, 1, ReplyTimeoutMilliseconds);
            if (ready == 0)
            {
                throw new TunDeviceException(
                    "recv(AF_NETLINK)", LibC.ETIMEDOUT, "The kernel did not answer an rtnetlink request within 5 s.");
            }

            if (ready < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == LibC.EINTR)
                    continue;
                throw TunDeviceException.For("poll(AF_NETLINK)", errno);
            }

            nint received;
            fixed (byte* p = _reply)
                received = LibC.Recv(fd, p, (nuint)_reply.Length, 0);
            if (received < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno is LibC.EINTR or LibC.EAGAIN)
                    continue;
                throw TunDeviceException.For("recv(AF_NETLINK)", errno);
            }

            // One datagram may hold several messages, each aligned to 4 bytes (NLMSG_ALIGN).
            // Replies to an earlier request (one that timed out) carry another sequence number.
            int offset = 0;
            while (received - offset >= NlMsgHeaderLength)
            {
                ReadOnlySpan<byte> data = _reply.AsSpan(offset, (int)received - offset);
                int length = (int)MemoryMarshal.Read<uint>(data);
                if (length < NlMsgHeaderLength || length > data.Length)
                    break;
                ushort type = MemoryMarshal.Read<ushort>(data[4..]);
                ushort flags = MemoryMarshal.Read<ushort>(data[6..]);
                uint seq = MemoryMarshal.Read<uint>(data[8..]);
                if (seq == sequence && type == NLMSG_ERROR && length >= NlMsgHeaderLength + 4)
                {
                    ReadOnlySpan<byte> body = data[NlMsgHeaderLength..length];
                    int error = MemoryMarshal.Read<int>(body); // 0 or a negative errno
                    if (error != 0)
                        kernelText = ExtendedAckText(body, flags);
                    return -error;
                }

                if (seq == sequence && type >= NLMSG_MIN_TYPE)
                {
                    reply = offset..(offset + length);
                    return 0;
                }

                offset += Align(length);
            }
        }
    }

    /// <summary>
    /// The NLMSGERR_ATTR_MSG string of an error reply (struct nlmsgerr: the errno, then the
    /// request's header, cut to 16 bytes or followed by its body, then the attributes), or null.
    /// </summary>
    private static string? ExtendedAckText(ReadOnlySpan<byte> body, ushort flags)
    {
        if ((flags & NLM_F_ACK_TLVS) == 0 || body.Length < 4 + NlMsgHeaderLength)
            return null;
        int echoed = (flags & NLM_F_CAPPED) != 0
            ? NlMsgHeaderLength
            : Align((int)MemoryMarshal.Read<uint>(body[4..]));
        if (4 + echoed > body.Length)
            return null;
        ReadOnlySpan<byte> attributes = body[(4 + echoed)..];
        while (attributes.Length >= 4)
        {
            int length = MemoryMarshal.Read<ushort>(attributes);
            ushort type = MemoryMarshal.Read<ushort>(attributes[2..]);
            if (length < 4 || length > attributes.Length)
                return null;
            if (type == NLMSGERR_ATTR_MSG)
            {
                ReadOnlySpan<byte> text = attributes[4..length];
                int nul = text.IndexOf((byte)0);
                return Encoding.UTF8.GetString(nul >= 0 ? text[..nul] : text);
            }

            attributes = attributes[Math.Min(Align(length), attributes.Length)..];
        }

        return null;
    }

    private static int Align(int length) => (length + 3) & ~3;

    /// <summary>
    /// Removes the routes and then the addresses this object added, newest first, and closes the
    /// rtnetlink socket. Best effort: what is already gone (the interface was deleted) is skipped
    /// and other failures are ignored, since Dispose must not throw. Idempotent.
    /// </summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            for (int i = _routes.Count - 1; i >= 0; i--)
                BestEffort(() => ChangeRoute(RTM_DELROUTE, _routes[i].Destination, _routes[i].PrefixLength, _routes[i].Gateway));
            for (int i = _addresses.Count - 1; i >= 0; i--)
            {
                var (local, peer, prefixLength) = _addresses[i];
                BestEffort(() => ChangeAddress(RTM_DELADDR, local, peer, prefixLength));
            }

            _routes.Clear();
            _addresses.Clear();
            _disposed = true;
            _socket.Dispose();
        }
    }

    private static void BestEffort(Action action)
    {
        try
        {
            action();
        }
        catch (TunDeviceException)
        {
        }
    }

    /// <summary>The interface name.</summary>
    public override string ToString() => InterfaceName;

    /// <summary>
    /// Builds one netlink message in place: the 16-byte nlmsghdr, a family header, then
    /// attributes (struct rtattr { u16 len; u16 type; } + value, each padded to 4 bytes).
    /// All fields are in host byte order except the addresses, which are in network order.
    /// </summary>
    private ref struct MessageWriter
    {
        private readonly Span<byte> _buffer;
        private int _length;

        internal MessageWriter(Span<byte> buffer, ushort type, ushort flags)
        {
            _buffer = buffer;
            _buffer.Clear();
            MemoryMarshal.Write(_buffer[4..], type);
            MemoryMarshal.Write(_buffer[6..], flags);
            _length = NlMsgHeaderLength;
        }

        internal Span<byte> Reserve(int length)
        {
            Span<byte> part = _buffer.Slice(_length, length);
            _length += Align(length);
            return part;
        }

        internal void AttributeUInt32(ushort type, uint value)
        {
            Span<byte> attribute = Reserve(8);
            MemoryMarshal.Write(attribute, (ushort)8);
            MemoryMarshal.Write(attribute[2..], type);
            MemoryMarshal.Write(attribute[4..], value);
        }

        internal void AttributeAddress(ushort type, IPAddress address)
        {
            int size = address.AddressFamily == AddressFamily.InterNetwork ? 4 : 16;
            Span<byte> attribute = Reserve(4 + size);
            MemoryMarshal.Write(attribute, (ushort)(4 + size));
            MemoryMarshal.Write(attribute[2..], type);
            address.TryWriteBytes(attribute[4..], out _);
        }

        /// <summary>Fills in the total length and sequence number; the port id stays 0 (the kernel
        /// fills in ours).</summary>
        internal readonly ReadOnlySpan<byte> Finish(uint sequence)
        {
            MemoryMarshal.Write(_buffer, (uint)_length);
            MemoryMarshal.Write(_buffer[8..], sequence);
            return _buffer[.._length];
        }
    }
}
