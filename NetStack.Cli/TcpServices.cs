using System.Globalization;
using System.Net.Sockets;
using System.Text;

namespace NetStack.Cli;

/// <summary>
/// The TCP services <c>netstack serve</c> offers: echo (RFC 862), discard (RFC 863) and a small
/// HTTP/1.1 server. Each accepts connections until cancelled and serves each one on its own task,
/// so one slow client never holds up the others.
/// </summary>
public static class TcpServices
{
    /// <summary>Accepts connections and runs <paramref name="serve"/> on each until cancelled.</summary>
    public static async Task AcceptLoopAsync(TcpListener listener, string service, Func<TcpConnection, CancellationToken, Task> serve, CancellationToken cancellationToken)
    {
        var running = new List<Task>();
        while (!cancellationToken.IsCancellationRequested)
        {
            TcpConnection connection;
            try
            {
                connection = await listener.AcceptAsync(cancellationToken);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException
                                        || e is SocketException { SocketErrorCode: SocketError.OperationAborted })
            {
                break;
            }
            running.RemoveAll(t => t.IsCompleted);
            running.Add(ServeOneAsync(connection, service, serve, cancellationToken));
        }
        await Task.WhenAll(running);
    }

    private static async Task ServeOneAsync(TcpConnection connection, string service, Func<TcpConnection, CancellationToken, Task> serve, CancellationToken cancellationToken)
    {
        // Leave the accept loop's thread at once.
        await Task.Yield();
        try
        {
            await using (connection)
                await serve(connection, cancellationToken);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // One connection's trouble (reset by the peer, shutdown) is not the service's.
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"{service}: connection failed: {e.Message}");
        }
    }

    /// <summary>Echo (RFC 862): every byte goes back; at the peer's FIN, finish sending and close.</summary>
    public static async Task EchoAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await connection.ReadAsync(buffer, cancellationToken)) > 0)
            await connection.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
        connection.ShutdownWrite();
    }

    /// <summary>Discard (RFC 863): read to the end, then close.</summary>
    public static async Task DiscardAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var buffer = new byte[64 * 1024];
        while (await connection.ReadAsync(buffer, cancellationToken) > 0)
        {
        }
    }
}

/// <summary>
/// A small HTTP/1.1 server (RFC 9112) for <c>netstack serve --http</c>: <c>GET /</c> answers a
/// status page, <c>GET /bytes/N</c> answers N bytes of data (N up to 2^40), anything else 404.
/// Keeps connections alive unless the client says <c>Connection: close</c> or speaks HTTP/1.0.
/// </summary>
public sealed class HttpService
{
    /// <summary>The longest request head (request line and headers) the server reads.</summary>
    public const int MaxHeadBytes = 16 * 1024;

    /// <summary>The largest body <c>/bytes/N</c> serves.</summary>
    public const long MaxBytes = 1L << 40;

    private readonly NetworkStack _stack;

    /// <summary>Creates the service for <paramref name="stack"/> (its status page shows the stack's counters).</summary>
    public HttpService(NetworkStack stack) => _stack = stack;

    /// <summary>Serves requests on one connection until it closes.</summary>
    public async Task ServeAsync(TcpConnection connection, CancellationToken cancellationToken)
    {
        var reader = new HeadReader(connection);
        while (true)
        {
            var head = await reader.ReadHeadAsync(cancellationToken);
            if (head is null)
                return; // the client closed between requests
            var request = Request.Parse(head);
            if (request is null)
            {
                await RespondAsync(connection, 400, "Bad Request", "text/plain", "bad request\n"u8.ToArray(), close: true, head: false, cancellationToken);
                return;
            }
            var keepAlive = request.KeepAlive;
            await HandleAsync(connection, request, keepAlive, cancellationToken);
            if (!keepAlive)
            {
                connection.ShutdownWrite();
                return;
            }
        }
    }

    private async Task HandleAsync(TcpConnection connection, Request request, bool keepAlive, CancellationToken cancellationToken)
    {
        var headOnly = request.Method == "HEAD";
        if (request.Method is not ("GET" or "HEAD"))
        {
            await RespondAsync(connection, 405, "Method Not Allowed", "text/plain", "only GET and HEAD\n"u8.ToArray(), !keepAlive, false, cancellationToken, "Allow: GET, HEAD\r\n");
            return;
        }
        if (request.Path == "/")
        {
            var page = Encoding.UTF8.GetBytes(StatusPage(connection));
            await RespondAsync(connection, 200, "OK", "text/plain; charset=utf-8", page, !keepAlive, headOnly, cancellationToken);
            return;
        }
        const string bytesPrefix = "/bytes/";
        if (request.Path.StartsWith(bytesPrefix, StringComparison.Ordinal)
            && long.TryParse(request.Path.AsSpan(bytesPrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out var count)
            && count <= MaxBytes)
        {
            await WriteHeadAsync(connection, 200, "OK", "application/octet-stream", count, !keepAlive, cancellationToken);
            if (!headOnly)
                await WritePatternAsync(connection, count, cancellationToken);
            return;
        }
        await RespondAsync(connection, 404, "Not Found", "text/plain", Encoding.UTF8.GetBytes($"no such path: {request.Path}\n"), !keepAlive, headOnly, cancellationToken);
    }

    private string StatusPage(TcpConnection connection)
    {
        var text = new StringBuilder();
        text.Append("NetStack: a userspace TCP/IP stack, answering from ").Append(_stack.InterfaceName).Append('\n');
        text.Append("you are ").Append(connection.RemoteEndPoint).Append(", I am ").Append(connection.LocalEndPoint).Append('\n');
        text.Append("try GET /bytes/N for N bytes of data\n\ncounters:\n");
        foreach (var (name, value) in _stack.Statistics.Snapshot())
            text.Append("  ").Append(name).Append(' ').Append(value).Append('\n');
        return text.ToString();
    }

    /// <summary>The byte at position <paramref name="i"/> of every <c>/bytes/N</c> body: a repeating, checkable pattern.</summary>
    public static byte PatternByte(long i) => (byte)('a' + (i % 26));

    private static async Task WritePatternAsync(Stream stream, long count, CancellationToken cancellationToken)
    {
        // One 26 KiB block whose length is a multiple of the period, so every block is the same.
        var block = new byte[26 * 1024];
        for (var i = 0; i < block.Length; i++)
            block[i] = PatternByte(i);
        var left = count;
        while (left > 0)
        {
            var n = (int)Math.Min(left, block.Length);
            await stream.WriteAsync(block.AsMemory(0, n), cancellationToken);
            left -= n;
        }
    }

    private static Task WriteHeadAsync(Stream stream, int status, string reason, string contentType, long length, bool close, CancellationToken cancellationToken, string extraHeaders = "")
    {
        var head = $"HTTP/1.1 {status} {reason}\r\nServer: netstack\r\nContent-Type: {contentType}\r\nContent-Length: {length}\r\n{extraHeaders}{(close ? "Connection: close\r\n" : "")}\r\n";
        return stream.WriteAsync(Encoding.ASCII.GetBytes(head), cancellationToken).AsTask();
    }

    private static async Task RespondAsync(Stream stream, int status, string reason, string contentType, byte[] body, bool close, bool head, CancellationToken cancellationToken, string extraHeaders = "")
    {
        await WriteHeadAsync(stream, status, reason, contentType, body.Length, close, cancellationToken, extraHeaders);
        if (!head)
            await stream.WriteAsync(body, cancellationToken);
    }

    /// <summary>A parsed request head.</summary>
    private sealed record Request(string Method, string Path, bool KeepAlive)
    {
        public static Request? Parse(string head)
        {
            var lines = head.Split("\r\n");
            var parts = lines[0].Split(' ');
            if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length == 0 || parts[1][0] != '/')
                return null;
            var keepAlive = parts[2] == "HTTP/1.1";
            foreach (var line in lines.Skip(1))
            {
                var colon = line.IndexOf(':');
                if (colon <= 0)
                    continue;
                if (line.AsSpan(0, colon).Trim().Equals("Connection", StringComparison.OrdinalIgnoreCase))
                {
                    var value = line[(colon + 1)..].Trim();
                    if (value.Equals("close", StringComparison.OrdinalIgnoreCase))
                        keepAlive = false;
                    else if (value.Equals("keep-alive", StringComparison.OrdinalIgnoreCase))
                        keepAlive = true;
                }
            }
            var path = parts[1];
            var query = path.IndexOf('?');
            return new Request(parts[0], query >= 0 ? path[..query] : path, keepAlive);
        }
    }

    /// <summary>Reads request heads (up to the empty line) from a connection, keeping what follows.</summary>
    private sealed class HeadReader(Stream stream)
    {
        private readonly byte[] _buffer = new byte[MaxHeadBytes];
        private int _start;
        private int _end;

        /// <summary>The next head without its final CRLFCRLF, or null at a clean end of stream.</summary>
        public async Task<string?> ReadHeadAsync(CancellationToken cancellationToken)
        {
            while (true)
            {
                var end = _buffer.AsSpan(_start, _end - _start).IndexOf("\r\n\r\n"u8);
                if (end >= 0)
                {
                    var head = Encoding.ASCII.GetString(_buffer, _start, end);
                    _start += end + 4;
                    return head;
                }
                if (_start > 0)
                {
                    Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
                    _end -= _start;
                    _start = 0;
                }
                if (_end == _buffer.Length)
                    throw new IOException($"request head longer than {MaxHeadBytes} bytes");
                var n = await stream.ReadAsync(_buffer.AsMemory(_end), cancellationToken);
                if (n == 0)
                    return _end == 0 ? null : throw new IOException("connection closed in the middle of a request head");
                _end += n;
            }
        }
    }
}
