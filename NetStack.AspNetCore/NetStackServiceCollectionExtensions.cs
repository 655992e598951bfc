using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace NetStack.AspNetCore;

/// <summary>
/// A <see cref="NetworkStack"/> as a service of a .NET host (generic host, worker, web app): one
/// stack per host, started with the host and disposed when it stops.
/// </summary>
/// <remarks>
/// These live in NetStack.AspNetCore, not NetStack.Api: the hosting abstractions come with the
/// ASP.NET Core shared framework this package already references, so NetStack.Api keeps no
/// dependency beyond logging abstractions.
/// </remarks>
public static class NetStackServiceCollectionExtensions
{
    /// <summary>
    /// Registers a <see cref="NetworkStack"/> singleton made from <paramref name="options"/> and a
    /// hosted service that starts it when the host starts, before any hosted service (so a device
    /// error fails the host's start), and disposes it when the host stops, after every hosted
    /// service (Kestrel included) has stopped. Resolving the stack earlier starts it then. One
    /// stack per service collection.
    /// </summary>
    /// <param name="services">The host's services.</param>
    /// <param name="options">The stack's options (<see cref="NetStackOptions"/> has init-only properties: build it whole).</param>
    /// <returns><paramref name="services"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="InvalidOperationException">A stack is registered already.</exception>
    public static IServiceCollection AddNetStack(this IServiceCollection services, NetStackOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return services.AddNetStack(_ => options);
    }

    /// <summary>
    /// Same as <see cref="AddNetStack(IServiceCollection, NetStackOptions)"/>, with the options
    /// made from the host's services when the stack starts (from its configuration, say).
    /// </summary>
    /// <param name="services">The host's services.</param>
    /// <param name="options">Makes the stack's options.</param>
    /// <returns><paramref name="services"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> or <paramref name="options"/> is null.</exception>
    /// <exception cref="InvalidOperationException">A stack is registered already.</exception>
    public static IServiceCollection AddNetStack(this IServiceCollection services, Func<IServiceProvider, NetStackOptions> options)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(options);
        foreach (var descriptor in services)
        {
            if (descriptor.ServiceType == typeof(NetStackHostedService))
                throw new InvalidOperationException("A NetStack stack is registered already (AddNetStack or UseNetStack with options was called before); one stack per host.");
        }
        services.AddSingleton(provider => new NetStackHostedService(() => options(provider)));
        services.AddHostedService(provider => provider.GetRequiredService<NetStackHostedService>());
        services.AddSingleton(provider => provider.GetRequiredService<NetStackHostedService>().GetOrStart());
        return services;
    }
}

/// <summary>
/// Starts the host's stack before any hosted service starts (StartingAsync) and disposes it after
/// all of them have stopped (StoppedAsync), whatever their order of registration: Kestrel's
/// listeners and connections end before the stack does.
/// </summary>
internal sealed class NetStackHostedService(Func<NetStackOptions> options) : IHostedLifecycleService
{
    private readonly Lock _gate = new();
    private NetworkStack? _stack;
    private bool _stopped;

    /// <summary>The stack, started on first use.</summary>
    public NetworkStack GetOrStart()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopped, typeof(NetworkStack));
            return _stack ??= NetworkStack.Start(options());
        }
    }

    public Task StartingAsync(CancellationToken cancellationToken)
    {
        GetOrStart();
        return Task.CompletedTask;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken)
    {
        NetworkStack? stack;
        lock (_gate)
        {
            _stopped = true;
            stack = _stack;
        }
        stack?.Dispose();
        return Task.CompletedTask;
    }
}
