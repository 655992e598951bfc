using System.Globalization;
using System.Net;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using NetStack.AspNetCore;

namespace NetStack.Cli;

/// <summary>
/// The HTTP service of <c>netstack serve --http/--h2c</c> and <c>netstack demo</c>: a small ASP.NET Core
/// app that Kestrel serves through the NetStack transport (<see cref="NetStackWebHostBuilderExtensions.UseNetStack"/>),
/// so HTTP itself (RFC 9112 message framing, persistence and pipelining, HTTP/1.0 keep-alive, HTTP/2)
/// is Kestrel's, and the command exercises the transport under real clients and load generators.
/// <c>GET /</c> answers a status page, <c>GET /bytes/N</c> N bytes of data (N up to 2^40), anything
/// else 404; methods other than GET and HEAD get 405.
/// </summary>
/// <remarks>
/// Kestrel decides the protocol per endpoint. Without TLS there is no ALPN, so an endpoint that
/// allows HTTP/1.x speaks HTTP/1.x only (Kestrel answers the HTTP/2 preface there with a GOAWAY
/// HTTP_1_1_REQUIRED); an endpoint with <see cref="HttpProtocols.Http2"/> alone speaks cleartext
/// HTTP/2 with prior knowledge (RFC 9113 §3.3). Hence two kinds of ports: <c>--http</c> (HTTP/1.0
/// and 1.1) and <c>--h2c</c> (HTTP/2 only).
/// Start-up is kept short: an empty WebApplication builder (no configuration files, no logging, no
/// routing: one request delegate), Kestrel's core without HTTPS, and a host lifetime that leaves
/// SIGINT/SIGTERM to the command.
/// </remarks>
public sealed class HttpServer : IAsyncDisposable
{
    /// <summary>The largest body <c>/bytes/N</c> serves.</summary>
    public const long MaxBytes = 1L << 40;

    /// <summary>One block of the <c>/bytes/N</c> pattern whose length is a multiple of its period, so every block is the same.</summary>
    private static readonly byte[] PatternBlock = MakePatternBlock();

    private readonly NetworkStack _stack;
    private readonly WebApplication _app;

    private HttpServer(NetworkStack stack, WebApplication app)
    {
        _stack = stack;
        _app = app;
    }

    /// <summary>
    /// Builds the app and starts serving on every address of <paramref name="stack"/> (both families when it has both).
    /// </summary>
    /// <param name="stack">The running stack; it must outlive the server.</param>
    /// <param name="httpPorts">Ports for HTTP/1.0 and HTTP/1.1.</param>
    /// <param name="h2cPorts">Ports for cleartext HTTP/2 with prior knowledge.</param>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The running server.</returns>
    /// <exception cref="IOException">A port could not be bound (Kestrel's "address already in use").</exception>
    public static async Task<HttpServer> StartAsync(NetworkStack stack, IReadOnlyList<int> httpPorts, IReadOnlyList<int> h2cPorts, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(stack);
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "netstack", Args = [] });
        builder.WebHost.UseKestrelCore();
        builder.WebHost.UseNetStack(stack);
        // Every address of the stack: [::] takes both families (dual mode), 0.0.0.0 when the stack has no IPv6.
        var any = stack.Options.Address6 is not null ? IPAddress.IPv6Any : IPAddress.Any;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            foreach (var port in httpPorts)
                kestrel.Listen(any, port, listen => listen.Protocols = HttpProtocols.Http1);
            foreach (var port in h2cPorts)
                kestrel.Listen(any, port, listen => listen.Protocols = HttpProtocols.Http2);
        });
        // The command owns SIGINT/SIGTERM (it stops this server, then the stack): no console lifetime.
        builder.Services.AddSingleton<IHostLifetime, CommandLifetime>();
        var app = builder.Build();
        var server = new HttpServer(stack, app);
        app.Run(server.HandleAsync);
        try
        {
            await app.StartAsync(cancellationToken);
        }
        catch
        {
            await app.DisposeAsync();
            throw;
        }
        return server;
    }

    /// <summary>
    /// Stops serving: listeners close at once, idle keep-alive connections are closed, requests in
    /// progress get <paramref name="grace"/> to finish, then their connections are reset.
    /// </summary>
    public async Task StopAsync(TimeSpan grace)
    {
        using var timeout = new CancellationTokenSource(grace);
        await _app.StopAsync(timeout.Token);
    }

    /// <summary>Disposes the app (stopping it first if it still runs, with no grace).</summary>
    public ValueTask DisposeAsync() => _app.DisposeAsync();

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
        text.Append("NetStack: a userspace TCP/IP stack, answering from ").Append(_stack.InterfaceName).Append('\n');
        text.Append("you are ").Append(EndPoint(connection.RemoteIpAddress, connection.RemotePort))
            .Append(", I am ").Append(EndPoint(connection.LocalIpAddress, connection.LocalPort))
            .Append(", over ").Append(context.Request.Protocol).Append(" (Kestrel on the NetStack transport)\n");
        text.Append("try GET /bytes/N for N bytes of data\n\ncounters:\n");
        foreach (var (name, value) in _stack.Statistics.Snapshot())
            text.Append("  ").Append(name).Append(' ').Append(value).Append('\n');
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

    /// <summary>A host lifetime that waits for nothing and handles no signal: the command does.</summary>
    private sealed class CommandLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
