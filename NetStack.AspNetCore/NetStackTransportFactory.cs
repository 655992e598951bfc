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
/// As an <see cref="IConnectionListenerFactorySelector"/> it takes only endpoints it can serve: an
/// <see cref="IPEndPoint"/> with one of the stack's addresses, or (unless
/// <see cref="NetStackTransportOptions.BindUnspecifiedAddresses"/> is false) an unspecified address.
/// Kestrel offers other endpoints (<c>localhost</c>, the kernel's own addresses, Unix sockets) to
/// the transports registered before it, so one app can listen on the kernel's sockets and on the
/// stack at once. The factory does not own the stack: dispose the stack after the app has stopped.
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
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxReadBufferSize, 1, nameof(options.MaxReadBufferSize));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxWriteBufferSize, 1, nameof(options.MaxWriteBufferSize));
        _stack = stack;
        _options = options;
    }

    /// <summary>
    /// True for an <see cref="IPEndPoint"/> on one of the stack's addresses, or on an unspecified
    /// address when <see cref="NetStackTransportOptions.BindUnspecifiedAddresses"/> is set.
    /// </summary>
    /// <param name="endpoint">The endpoint Kestrel wants to bind.</param>
    public bool CanBind(EndPoint endpoint)
    {
        if (endpoint is not IPEndPoint ip)
            return false;
        var address = ip.Address;
        if (address.Equals(IPAddress.Any))
            return _options.BindUnspecifiedAddresses && _stack.Options.Address is not null;
        if (address.Equals(IPAddress.IPv6Any))
            return _options.BindUnspecifiedAddresses;
        return address.Equals(_stack.Options.Address) || address.Equals(_stack.Options.Address6);
    }

    /// <summary>
    /// Listens on <paramref name="endpoint"/> through the stack (port 0 picks a free port, which the
    /// listener's <see cref="IConnectionListener.EndPoint"/> then carries).
    /// </summary>
    /// <param name="endpoint">An <see cref="IPEndPoint"/> that <see cref="CanBind"/> accepts.</param>
    /// <param name="cancellationToken">Checked before binding.</param>
    /// <returns>The listener Kestrel accepts connections from.</returns>
    /// <exception cref="AddressInUseException">The port is taken on the stack (Kestrel reports it as a bind failure).</exception>
    /// <exception cref="ArgumentException">The endpoint is not an <see cref="IPEndPoint"/> this stack has.</exception>
    /// <exception cref="SocketException">AddressNotAvailable for an address that is not the stack's.</exception>
    /// <exception cref="ObjectDisposedException">The stack is disposed.</exception>
    public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        cancellationToken.ThrowIfCancellationRequested();
        if (endpoint is not IPEndPoint ip)
            throw new ArgumentException($"NetStack serves IP endpoints only, not {endpoint}.", nameof(endpoint));
        TcpConnectionListener listener;
        try
        {
            listener = _stack.ListenTcp(ip, _options.Backlog);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            throw new AddressInUseException($"{ip} is already in use on {_stack.InterfaceName}.", e);
        }
        return ValueTask.FromResult<IConnectionListener>(new NetStackConnectionListener(listener, _options));
    }
}
