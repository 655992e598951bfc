using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using NetStack.AspNetCore;

namespace NetStack.Cli;

/// <summary>
/// The HTTP service of <c>netstack serve --http/--h2c</c> and <c>netstack demo</c>: a small ASP.NET Core
/// app (one <see cref="RequestDelegate"/>) that Kestrel serves through the NetStack transport
/// (<see cref="NetStackTransportFactory"/>), so HTTP itself (RFC 9112 message framing, persistence and
/// pipelining, HTTP/1.0 keep-alive, HTTP/2) is Kestrel's, and the command exercises the transport
/// under real clients and load generators.
/// <c>GET /</c> answers a status page, <c>GET /bytes/N</c> N bytes of data (N up to 2^40), anything
/// else 404; methods other than GET and HEAD get 405.
/// </summary>
/// <remarks>
/// Kestrel decides the protocol per endpoint. Without TLS there is no ALPN, so an endpoint that
/// allows HTTP/1.x speaks HTTP/1.x only (Kestrel answers the HTTP/2 preface there with a GOAWAY
/// HTTP_1_1_REQUIRED); an endpoint with <see cref="HttpProtocols.Http2"/> alone speaks cleartext
/// HTTP/2 with prior knowledge (RFC 9113 §3.3). Hence two kinds of ports: <c>--http</c> (HTTP/1.0
/// and 1.1) and <c>--h2c</c> (HTTP/2 only).
/// Start-up is kept short: Kestrel's server by itself (<see cref="KestrelServer"/> with an
/// <see cref="IHttpApplication{TContext}"/> of our own): no generic host, dependency injection,
/// configuration, logging or routing. Measured on serve's start: an empty WebApplication added
/// 60-90 ms of processor time, Kestrel alone about 30 ms. Signals stay with the command.
/// </remarks>
public sealed class HttpServer : IAsyncDisposable
{
    /// <summary>The largest body <c>/bytes/N</c> serves.</summary>
    public const long MaxBytes = 1L << 40;

    /// <summary>One block of the <c>/bytes/N</c> pattern whose length is a multiple of its period, so every block is the same.</summary>
    private static readonly byte[] PatternBlock = MakePatternBlock();

    /// <summary>The stack served through (asked for once it is up), or null on the kernel's sockets.</summary>
    private readonly Func<NetworkStack>? _stack;
    private readonly KestrelServer _server;
    private bool _started;

    private HttpServer(Func<NetworkStack>? stack, KestrelServer server)
    {
        _stack = stack;
        _server = server;
    }

    /// <summary>
    /// Builds the server (without starting it) for a stack that need not be up yet: creating
    /// Kestrel (loading its assemblies) takes about 100 ms, so <c>netstack serve</c> does it while
    /// the stack comes up. <paramref name="stack"/> is called when the server starts and for each
    /// status page. Serves every address of the stack: [::] (both families) when
    /// <paramref name="dualMode"/>, else 0.0.0.0.
    /// </summary>
    /// <param name="stack">Gives the running stack; it must outlive the server.</param>
    /// <param name="dualMode">True when the stack has an IPv6 address.</param>
    /// <param name="httpPorts">Ports for HTTP/1.0 and HTTP/1.1.</param>
    /// <param name="h2cPorts">Ports for cleartext HTTP/2 with prior knowledge.</param>
    /// <returns>The server, to start with <see cref="StartAsync(CancellationToken)"/> and dispose.</returns>
    public static HttpServer ForStack(Func<NetworkStack> stack, bool dualMode, IReadOnlyList<int> httpPorts, IReadOnlyList<int> h2cPorts)
    {
        ArgumentNullException.ThrowIfNull(stack);
        // The transport UseNetStack registers, made when Kestrel first binds (at start), once the
        // stack is up.
        return Build(
            stack,
            new DeferredNetStackTransport(stack),
            dualMode ? IPAddress.IPv6Any : IPAddress.Any,
            httpPorts,
            h2cPorts);
    }

    /// <summary>
    /// The same app on the kernel's sockets (Kestrel's own socket transport), listening on
    /// <paramref name="address"/>: the kernel-side server <c>netstack bench --cases http</c> compares
    /// the stack with. Built, not started.
    /// </summary>
    /// <param name="address">The kernel address to listen on.</param>
    /// <param name="httpPorts">Ports for HTTP/1.0 and HTTP/1.1.</param>
    /// <param name="h2cPorts">Ports for cleartext HTTP/2 with prior knowledge.</param>
    /// <returns>The server, to start with <see cref="StartAsync(CancellationToken)"/> and dispose.</returns>
    public static HttpServer ForKernel(IPAddress address, IReadOnlyList<int> httpPorts, IReadOnlyList<int> h2cPorts) =>
        Build(null, new SocketTransportFactory(Options.Create(new SocketTransportOptions()), NullLoggerFactory.Instance), address, httpPorts, h2cPorts);

    /// <summary>Builds the app for the running <paramref name="stack"/> and starts it; see <see cref="ForStack"/>.</summary>
    /// <param name="stack">The running stack; it must outlive the server.</param>
    /// <param name="httpPorts">Ports for HTTP/1.0 and HTTP/1.1.</param>
    /// <param name="h2cPorts">Ports for cleartext HTTP/2 with prior knowledge.</param>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The running server.</returns>
    /// <exception cref="IOException">A port could not be bound (Kestrel's "address already in use").</exception>
    public static async Task<HttpServer> StartAsync(NetworkStack stack, IReadOnlyList<int> httpPorts, IReadOnlyList<int> h2cPorts, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stack);
        var server = ForStack(() => stack, stack.Options.Address6 is not null, httpPorts, h2cPorts);
        try
        {
            await server.StartAsync(cancellationToken);
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
        return server;
    }

    private static HttpServer Build(Func<NetworkStack>? stack, IConnectionListenerFactory transport, IPAddress address, IReadOnlyList<int> httpPorts, IReadOnlyList<int> h2cPorts)
    {
        // Kestrel by itself: no host, no configuration, no logging, one request delegate.
        var options = new KestrelServerOptions { AddServerHeader = false, ApplicationServices = NoServices };
        foreach (var port in httpPorts)
            options.Listen(address, port, listen => listen.Protocols = HttpProtocols.Http1);
        foreach (var port in h2cPorts)
            options.Listen(address, port, listen => listen.Protocols = HttpProtocols.Http2);
        return new HttpServer(stack, new KestrelServer(Options.Create(options), transport, NullLoggerFactory.Instance));
    }

    /// <summary>Binds the ports and starts serving.</summary>
    /// <exception cref="IOException">A port could not be bound (Kestrel's "address already in use").</exception>
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _started = true;
        await _server.StartAsync(new Application(HandleAsync), cancellationToken);
    }

    /// <summary>
    /// Stops serving: listeners close at once, idle keep-alive connections are closed, requests in
    /// progress get <paramref name="grace"/> to finish, then their connections are reset.
    /// </summary>
    public async Task StopAsync(TimeSpan grace)
    {
        if (!_started)
            return;
        using var timeout = new CancellationTokenSource(grace);
        await _server.StopAsync(timeout.Token);
    }

    /// <summary>Disposes the server (stopping it first if it still runs, with no grace).</summary>
    public ValueTask DisposeAsync()
    {
        _server.Dispose();
        return ValueTask.CompletedTask;
    }

    private Task HandleAsync(HttpContext context)
    {
        var request = context.Request;
        var response = context.Response;
        response.Headers.Server = "netstack";
        var head = HttpMethods.IsHead(request.Method);
        if (!head && !HttpMethods.IsGet(request.Method))
        {
            response.Headers.Allow = "GET, HEAD";
            return RespondAsync(context, StatusCodes.Status405MethodNotAllowed, "text/plain", "only GET and HEAD\n"u8.ToArray(), head);
        }
        var path = request.Path.Value ?? "";
        if (path == "/")
            return RespondAsync(context, StatusCodes.Status200OK, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(StatusPage(context)), head);
        const string bytesPrefix = "/bytes/";
        if (path.StartsWith(bytesPrefix, StringComparison.Ordinal)
            && long.TryParse(path.AsSpan(bytesPrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var count)
            && count <= MaxBytes)
        {
            response.ContentType = "application/octet-stream";
            response.ContentLength = count;
            return head ? Task.CompletedTask : WritePatternAsync(response, count, context.RequestAborted);
        }
        return RespondAsync(context, StatusCodes.Status404NotFound, "text/plain", Encoding.UTF8.GetBytes($"no such path: {path}\n"), head);
    }

    private static Task RespondAsync(HttpContext context, int status, string contentType, byte[] body, bool head)
    {
        var response = context.Response;
        response.StatusCode = status;
        response.ContentType = contentType;
        response.ContentLength = body.Length;
        return head ? Task.CompletedTask : response.Body.WriteAsync(body, context.RequestAborted).AsTask();
    }

    private string StatusPage(HttpContext context)
    {
        var connection = context.Connection;
        var text = new StringBuilder();
        var stack = _stack?.Invoke();
        if (stack is not null)
            text.Append("NetStack: a userspace TCP/IP stack, answering from ").Append(stack.InterfaceName).Append('\n');
        else
            text.Append("NetStack's HTTP app on the kernel's sockets (the benchmark's baseline)\n");
        text.Append("you are ").Append(EndPoint(connection.RemoteIpAddress, connection.RemotePort))
            .Append(", I am ").Append(EndPoint(connection.LocalIpAddress, connection.LocalPort))
            .Append(", over ").Append(context.Request.Protocol)
            .Append(stack is not null ? " (Kestrel on the NetStack transport)\n" : " (Kestrel on its socket transport)\n");
        text.Append("try GET /bytes/N for N bytes of data\n");
        if (stack is not null)
        {
            text.Append("\ncounters:\n");
            foreach (var (name, value) in stack.Statistics.Snapshot())
                text.Append("  ").Append(name).Append(' ').Append(value).Append('\n');
        }
        return text.ToString();
    }

    private static string EndPoint(IPAddress? address, int port) =>
        address is null ? "?" : new IPEndPoint(address, port).ToString();

    /// <summary>The byte at position <paramref name="i"/> of every <c>/bytes/N</c> body: a repeating, checkable pattern.</summary>
    public static byte PatternByte(long i) => (byte)('a' + (i % 26));

    private static byte[] MakePatternBlock()
    {
        var block = new byte[26 * 1024];
        for (var i = 0; i < block.Length; i++)
            block[i] = PatternByte(i);
        return block;
    }

    private static async Task WritePatternAsync(HttpResponse response, long count, CancellationToken cancellationToken)
    {
        var writer = response.BodyWriter;
        var left = count;
        while (left > 0)
        {
            var n = (int)Math.Min(left, PatternBlock.Length);
            var flushed = await writer.WriteAsync(PatternBlock.AsMemory(0, n), cancellationToken);
            left -= n;
            if (flushed.IsCompleted || flushed.IsCanceled)
                return; // the connection is gone
        }
    }

    /// <summary>
    /// The NetStack transport (<see cref="NetStackTransportFactory"/>) for a stack that comes up
    /// after the app is built: made from <c>stack()</c> when Kestrel first asks which endpoints it
    /// takes, at start.
    /// </summary>
    private sealed class DeferredNetStackTransport(Func<NetworkStack> stack) : IConnectionListenerFactory, IConnectionListenerFactorySelector
    {
        private readonly Lazy<NetStackTransportFactory> _factory = new(() => new NetStackTransportFactory(stack()));

        public bool CanBind(EndPoint endpoint) => _factory.Value.CanBind(endpoint);

        public ValueTask<IConnectionListener> BindAsync(EndPoint endpoint, CancellationToken cancellationToken = default) =>
            _factory.Value.BindAsync(endpoint, cancellationToken);
    }

    /// <summary>Kestrel's application: an <see cref="HttpContext"/> over each request's features, handled by one delegate.</summary>
    private sealed class Application(RequestDelegate handle) : IHttpApplication<HttpContext>
    {
        public HttpContext CreateContext(IFeatureCollection contextFeatures) => new DefaultHttpContext(contextFeatures);

        public Task ProcessRequestAsync(HttpContext context) => handle(context);

        public void DisposeContext(HttpContext context, Exception? exception)
        {
        }
    }

    /// <summary>The empty service provider Kestrel's options want (nothing here asks it for a service).</summary>
    private static readonly IServiceProvider NoServices = new ServiceCollection().BuildServiceProvider();

}
