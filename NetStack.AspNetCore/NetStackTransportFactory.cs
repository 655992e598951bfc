using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;

namespace NetStack.AspNetCore;

/// <summary>
/// Kestrel's transport over a <see cref="NetworkStack"/>: binds endpoints on the stack's addresses
/// as NetStack <see cref="TcpConnectionListener"/>s, and hands each accepted <see cref="TcpConnection"/> to
/// Kestrel as a <see cref="ConnectionContext"/>. Register it with
/// <see cref="NetStackWebHostBuilderExtensions.UseNetStack(Microsoft.AspNetCore.Hosting.IWebHostBuilder, NetworkStack, Action{NetStackTransportOptions}?)"/>.
/// </summary>
/// <remarks>
/// It serves an <see cref="IPEndPoint"/> with one of the stack's addresses, or (unless
/// <see cref="NetStackTransportOptions.BindUnspecifiedAddresses"/> is false) an unspecified address.
/// Any other IP endpoint (<c>localhost</c>, the kernel's own addresses) fails the app's start with a
/// message naming it, unless <see cref="NetStackTransportOptions.OtherAddressesToKernel"/> leaves
/// such endpoints to the transports registered before it (then one app can listen on the kernel's
/// sockets and on the stack at once). Unix sockets and named pipes always go to the other
/// transports. The factory does not own the stack: dispose the stack after the app has stopped.
/// </remarks>
public sealed class NetStackTransportFactory : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    private readonly NetworkStack _stack;
    private readonly NetStackTransportOptions _options;

    /// <summary>A transport over <paramref name="stack"/>.</summary>
    /// <param name="stack">The running stack whose addresses the endpoints use.</param>
    /// <param name="options">Buffer sizes and the backlog; null for the defaults.</param>
    /// <exception cref="ArgumentNullException"><paramref name="stack"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is not positive.</exception>
    public NetStackTransportFactory(NetworkStack stack, NetStackTransportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stack);
        options ??= new NetStackTransportOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Backlog, 1, nameof(options.Backlog));
        _stack = stack;
        _options = options;
    }

    /// <summary>
    /// True for an <see cref="IPEndPoint"/> on the stack's addresses, and for an unspecified one
    /// when <see cref="NetStackTransportOptions.BindUnspecifiedAddresses"/> is set: those are
    /// served. True as well for any other IP endpoint, so that <see cref="BindAsync"/> fails with a
    /// message naming the address and the stack's addresses instead of Kestrel's socket transport
    /// silently listening on the kernel; with <see cref="NetStackTransportOptions.OtherAddressesToKernel"/>
    /// set, false for those (Kestrel's sockets take them).
    /// </summary>
    /// <param name="endpoint">The endpoint Kestrel wants to bind.</param>
    public bool CanBind(EndPoint endpoint)
    {
        if (endpoint is not IPEndPoint ip)
            return false;
        if (ip.Address.Equals(IPAddress.Any) || ip.Address.Equals(IPAddress.IPv6Any))
            return IsStackEndPoint(ip);
        return IsStackEndPoint(ip) || !_options.OtherAddressesToKernel;
    }

    // An endpoint this transport serves: one of the stack's addresses, or an unspecified one.
    private bool IsStackEndPoint(IPEndPoint ip)
    {
        var address = ip.Address;
        if (address.Equals(IPAddress.Any))
            return _options.BindUnspecifiedAddresses && _stack.Options.Address is not null;
        if (address.Equals(IPAddress.IPv6Any))
            return _options.BindUnspecifiedAddresses;
        return StackAddresses().Contains(address);
    }

    private List<IPAddress> StackAddresses()
    {
        var addresses = new List<IPAddress>();
        if (_stack.Options.Address is { } v4)
            addresses.Add(v4);
        if (_stack.DhcpLease?.Address is { } leased && !addresses.Contains(leased))
            addresses.Add(leased);
        foreach (var info in _stack.Ipv6Addresses)
            addresses.Add(info.Address);
        return addresses;
    }

    /// <summary>
    /// Listens on <paramref name="endpoint"/> through the stack (port 0 picks a free port, which the
    /// listener's <see cref="IConnectionListener.EndPoint"/> then carries).
    /// </summary>
    /// <param name="endpoint">An <see cref="IPEndPoint"/> that <see cref="CanBind"/> accepts.</param>
    /// <param name="cancellationToken">Checked before binding.</param>
    /// <returns>The listener Kestrel accepts connections from.</returns>
    /// <exception cref="AddressInUseException">The port is taken on the stack (Kestrel reports it as a bind failure).</exception>
    /// <exception cref="ArgumentException">The endpoint is not an <see cref="IPEndPoint"/>.</exception>
    /// <exception cref="InvalidOperationException">The address is not one of the stack's (nor an unspecified one it takes); the message names it and the stack's addresses.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        cancellationToken.ThrowIfCancellationRequested();
        if (endpoint is not IPEndPoint ip)
            throw new ArgumentException($"NetStack serves IP endpoints only, not {endpoint}.", nameof(endpoint));
        if (!IsStackEndPoint(ip))
        {
            var own = string.Join(", ", StackAddresses());
            throw new InvalidOperationException(
                $"Kestrel was asked to listen on {ip} (a URL or Listen call), which is not an address of the NetStack stack on {_stack.InterfaceName} "
                + $"(its addresses: {(own.Length == 0 ? "none" : own)}{(_options.BindUnspecifiedAddresses ? "; unspecified addresses such as http://*:PORT mean all of them" : "")}). "
                + "Listen on one of those, or set NetStackTransportOptions.OtherAddressesToKernel to leave other addresses to Kestrel's socket transport.");
        }
        TcpConnectionListener listener;
        try
        {
            listener = _stack.ListenTcp(ip, _options.Backlog);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new AddressInUseException($"{ip} is already in use on {_stack.InterfaceName}.", e);
        }
        return ValueTask.FromResult<IConnectionListener>(new NetStackConnectionListener(listener));
    }
}
