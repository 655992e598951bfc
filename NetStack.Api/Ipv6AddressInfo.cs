using System.Net;

namespace NetStack;

/// <summary>
/// One of the stack's IPv6 addresses, as <see cref="NetworkStack.Ipv6Addresses"/> reports it: the
/// configured <see cref="NetStackOptions.Address6"/> or an address formed by stateless address
/// autoconfiguration (<see cref="NetStackOptions.Slaac"/>).
/// </summary>
/// <param name="Address">The address.</param>
/// <param name="PrefixLength">Its prefix length (64 for autoconfigured addresses).</param>
/// <param name="Autoconfigured">True for an address formed from a router advertisement's prefix.</param>
/// <param name="State">"Preferred" (usable for new communication), "Deprecated" (still accepted, not chosen as a source) or "Tentative" (duplicate address detection running: not ours yet); the configured address is always "Preferred".</param>
/// <param name="PreferredLifetime">How long until it is deprecated; null: infinite.</param>
/// <param name="ValidLifetime">How long until it is removed; null: infinite.</param>
public sealed record Ipv6AddressInfo(IPAddress Address, int PrefixLength, bool Autoconfigured, string State, TimeSpan? PreferredLifetime, TimeSpan? ValidLifetime);
