using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace NetStack.Device;

/// <summary>
/// What the kernel of this network namespace already does with an address, read before a stack
/// is started on it: whether one of its interfaces owns the address (then the kernel keeps every
/// packet for it, and a stack with that address would never see one), and whether it already
/// routes the address to an interface as a host route (the point-to-point peer of another TUN
/// interface, such as a second NetworkStack started with the same options: the kernel then holds
/// two routes and uses the first, and the second stack silently never receives).
/// </summary>
internal static class KernelAddresses
{
    /// <summary>The kernel interface that has <paramref name="address"/> assigned, or null.</summary>
    public static string? OwnerOf(IPAddress address)
    {
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            foreach (var unicast in nic.GetIPProperties().UnicastAddresses)
            {
                // Link-local IPv6 addresses carry the interface as scope; compare without it.
                var own = unicast.Address;
                if (own.AddressFamily == AddressFamily.InterNetworkV6)
                    own = new IPAddress(own.GetAddressBytes());
                if (own.Equals(address))
                    return nic.Name;
            }
        }
        return null;
    }

    /// <summary>
    /// The interface the kernel routes <paramref name="address"/> to by a host route (/32 for IPv4,
    /// /128 for IPv6, as a point-to-point peer's), from /proc/net/route and /proc/net/ipv6_route;
    /// null when there is none (or the tables cannot be read).
    /// </summary>
    public static string? HostRouteOwner(IPAddress address) =>
        address.AddressFamily == AddressFamily.InterNetwork ? HostRoute4(address) : HostRoute6(address);

    // /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...; Destination and
    // Mask are 32-bit hex numbers in the host's (little-endian) byte order.
    private static string? HostRoute4(IPAddress address)
    {
        var lines = ReadLines("/proc/net/route");
        uint wanted = BitConverter.ToUInt32(address.GetAddressBytes());
        foreach (var line in lines.Skip(1))
        {
            var f = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 8)
                continue;
            if (uint.TryParse(f[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint destination) &&
                uint.TryParse(f[7], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint mask) &&
                mask == uint.MaxValue && destination == wanted)
            {
                return f[0];
            }
        }
        return null;
    }

    // /proc/net/ipv6_route: destination (32 hex digits), its prefix length (hex), source, source
    // length, next hop, metric, refcount, use, flags, device. The local table's entries (the
    // kernel's own addresses) have device "lo" or the owning interface and type "local" (flag
    // RTF_LOCAL 0x80000000): those are OwnerOf's business and are skipped here.
    private static string? HostRoute6(IPAddress address)
    {
        string wanted = Convert.ToHexString(address.GetAddressBytes());
        foreach (var line in ReadLines("/proc/net/ipv6_route"))
        {
            var f = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 10 || f[1] != "80" || !string.Equals(f[0], wanted, StringComparison.OrdinalIgnoreCase))
                continue;
            if (uint.TryParse(f[8], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out uint flags) &&
                (flags & 0x80000000) != 0)
            {
                continue;
            }
            return f[9];
        }
        return null;
    }

    private static string[] ReadLines(string path)
    {
        try
        {
            return File.ReadAllLines(path);
        }
        catch (IOException)
        {
            return [];
        }
        catch (UnauthorizedAccessException)
        {
            return [];
        }
    }
}
