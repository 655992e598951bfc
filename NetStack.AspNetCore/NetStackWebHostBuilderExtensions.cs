using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace NetStack.AspNetCore;

/// <summary>Serving an ASP.NET Core app through NetStack.</summary>
public static class NetStackWebHostBuilderExtensions
{
    /// <summary>
    /// Adds the NetStack transport to Kestrel: endpoints on <paramref name="stack"/>'s addresses (and,
    /// by default, unspecified addresses) are served through the stack; other endpoints stay with
    /// Kestrel's socket transport. Call it after <c>UseKestrel</c> (WebApplication builders already
    /// have), then listen as usual, e.g. <c>app.Urls.Add("http://10.77.0.2:8080")</c> or
    /// <c>options.Listen(stack.Options.Address, 8080)</c>. The stack must outlive the app.
    /// </summary>
    /// <param name="builder">The web host builder (<c>WebApplicationBuilder.WebHost</c>).</param>
    /// <param name="stack">The running stack.</param>
    /// <param name="configure">Adjusts the transport's options; null for the defaults.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="stack"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is not positive.</exception>
    public static IWebHostBuilder UseNetStack(this IWebHostBuilder builder, NetworkStack stack, Action<NetStackTransportOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(stack);
        var options = new NetStackTransportOptions();
        configure?.Invoke(options);
        var factory = new NetStackTransportFactory(stack, options);
        // Kestrel tries transports from the last registered to the first, asking each selector
        // whether it can bind the endpoint: added last, this one is asked first.
        return builder.ConfigureServices(services => services.AddSingleton<IConnectionListenerFactory>(factory));
    }

    /// <summary>
    /// Serves the app through a NetStack stack of its own: registers the stack
    /// (<see cref="NetStackServiceCollectionExtensions.AddNetStack(IServiceCollection, NetStackOptions)"/>:
    /// started with the host, disposed when it stops, injectable as <see cref="NetworkStack"/>) and
    /// the transport over it, as <see cref="UseNetStack(IWebHostBuilder, NetworkStack, Action{NetStackTransportOptions}?)"/>
    /// does for a running stack. Listen as usual, e.g. <c>app.Urls.Add("http://10.77.0.2:8080")</c>.
    /// </summary>
    /// <param name="builder">The web host builder (<c>WebApplicationBuilder.WebHost</c>).</param>
    /// <param name="options">The stack's options (device, addresses, buffers).</param>
    /// <param name="configure">Adjusts the transport's options; null for the defaults.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A transport option is not positive.</exception>
    /// <exception cref="InvalidOperationException">A stack is registered already.</exception>
    public static IWebHostBuilder UseNetStack(this IWebHostBuilder builder, NetStackOptions options, Action<NetStackTransportOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(options);
        var transport = new NetStackTransportOptions();
        configure?.Invoke(transport);
        ArgumentOutOfRangeException.ThrowIfLessThan(transport.Backlog, 1, nameof(transport.Backlog));
        return builder.ConfigureServices(services =>
        {
            services.AddNetStack(options);
            // Kestrel resolves its transports when it starts; the stack is started by then (or then).
            services.AddSingleton<IConnectionListenerFactory>(provider =>
                new NetStackTransportFactory(provider.GetRequiredService<NetworkStack>(), transport));
        });
    }
}
