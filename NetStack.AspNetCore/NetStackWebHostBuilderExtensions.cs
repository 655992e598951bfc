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
}
