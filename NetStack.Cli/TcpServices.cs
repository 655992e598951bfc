using System.Net.Sockets;

namespace NetStack.Cli;

/// <summary>
/// The plain TCP services <c>netstack serve</c> offers: echo (RFC 862) and discard (RFC 863); HTTP
/// is <see cref="HttpServer"/>. Each accepts connections until cancelled and serves each one on its
/// own task, so one slow client never holds up the others.
/// </summary>
public static class TcpServices
{
    /// <summary>Accepts connections and runs <paramref name="serve"/> on each until cancelled.</summary>
    public static async Task AcceptLoopAsync(TcpConnectionListener listener, string service, Func<TcpConnection, CancellationToken, Task> serve, CancellationToken cancellationToken)
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
        // Leave the accept loop's thread at once, so that it accepts the next connection while
        // this one is served. Not on the engine's thread (--unsafe-inline-completions: the loop
        // ran the accept's continuation): there the service runs until its first read waits,
        // which a new connection's read does, and the loop goes on.
        if (Thread.CurrentThread.IsThreadPoolThread)
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
