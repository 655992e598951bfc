using System.Net;
using System.Net.NetworkInformation;

namespace NetStack.Engine;

/// <summary>
/// Duplicate address detection (RFC 4862 §5.4) found another node on the link using the address
/// the stack was to take, so the stack does not start with it.
/// </summary>
public sealed class DuplicateAddressException : IOException
{
    /// <summary>Makes the exception for <paramref name="address"/>, defended by <paramref name="owner"/>.</summary>
    /// <param name="address">The address in use.</param>
    /// <param name="owner">The link-layer address of the node that answered.</param>
    /// <param name="interfaceName">The interface the stack was starting on.</param>
    public DuplicateAddressException(IPAddress address, PhysicalAddress owner, string interfaceName)
        : base($"Duplicate address detection failed: {address} is already in use on '{interfaceName}' by " +
               $"{FormatMac(owner)} (RFC 4862 §5.4.5). Choose another address.")
    {
        Address = address;
        Owner = owner;
    }

    /// <summary>The address another node uses.</summary>
    public IPAddress Address { get; }

    /// <summary>That node's link-layer address.</summary>
    public PhysicalAddress Owner { get; }

    private static string FormatMac(PhysicalAddress mac) =>
        string.Join(':', mac.GetAddressBytes().Select(b => b.ToString("x2")));
}
