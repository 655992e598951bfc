using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace NetStack.AspNetCore;

/// <summary>
/// A NetStack <see cref="TcpConnection"/> as Kestrel sees it: a <see cref="ConnectionContext"/>
/// whose <see cref="Transport"/> is a duplex pipe, pumped by two loops.
/// </summary>
/// <remarks>
/// The receive loop reads the connection into the input pipe (Kestrel reads it); the peer's FIN
/// completes the input, a reset completes it with a <see cref="ConnectionResetException"/>. The
/// send loop writes what Kestrel puts in the output pipe to the connection; when Kestrel completes
/// the output the loop sends our FIN (<see cref="TcpConnection.ShutdownWrite"/>).
/// <see cref="Abort(ConnectionAbortedException)"/> resets the connection (RST).
/// <see cref="DisposeAsync"/> (Kestrel calls it when it is done with the connection) closes the
/// connection gracefully. <see cref="ConnectionClosed"/> fires once both loops have ended.
/// </remarks>
internal sealed class NetStackConnection : ConnectionContext,
    IConnectionIdFeature, IConnectionTransportFeature, IConnectionItemsFeature,
    IConnectionLifetimeFeature, IConnectionEndPointFeature
{
    // The least free space asked of the input pipe per read: one read takes what the connection
    // has buffered, up to this much or the rest of the pipe's current segment.
    private const int MinimumReadSize = 4096;

    private readonly TcpConnection _connection;
    private readonly Pipe _input;
    private readonly Pipe _output;
    private readonly CancellationTokenSource _closed = new();
    private readonly FeatureCollection _features = new();
    private IDictionary<object, object?>? _items;
    private Task _receiving = Task.CompletedTask;
    private Task _sending = Task.CompletedTask;
    private int _aborted;
    private int _disposed;

    internal NetStackConnection(TcpConnection connection, string id, NetStackTransportOptions options)
    {
        _connection = connection;
        ConnectionId = id;
        LocalEndPoint = connection.LocalEndPoint;
        RemoteEndPoint = connection.RemoteEndPoint;
        ConnectionClosed = _closed.Token;
        // Pipe thresholds are the back-pressure: past them the writer's FlushAsync waits.
        _input = new Pipe(new PipeOptions(
            pauseWriterThreshold: options.MaxReadBufferSize,
            resumeWriterThreshold: options.MaxReadBufferSize / 2,
            useSynchronizationContext: false));
        _output = new Pipe(new PipeOptions(
            pauseWriterThreshold: options.MaxWriteBufferSize,
            resumeWriterThreshold: options.MaxWriteBufferSize / 2,
            useSynchronizationContext: false));
        Transport = new DuplexPipe(_input.Reader, _output.Writer);
        _features.Set<IConnectionIdFeature>(this);
        _features.Set<IConnectionTransportFeature>(this);
        _features.Set<IConnectionItemsFeature>(this);
        _features.Set<IConnectionLifetimeFeature>(this);
        _features.Set<IConnectionEndPointFeature>(this);
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features => _features;

    public override IDictionary<object, object?> Items
    {
        get => _items ??= new Dictionary<object, object?>();
        set => _items = value;
    }

    public override IDuplexPipe Transport { get; set; }

    public override CancellationToken ConnectionClosed { get; set; }

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    /// <summary>Starts both loops; ConnectionClosed fires when both have ended.</summary>
    internal void Start()
    {
        _receiving = ReceiveAsync();
        _sending = SendAsync();
        _ = Task.WhenAll(_receiving, _sending).ContinueWith(static (_, state) =>
        {
            var self = (NetStackConnection)state!;
            try
            {
                self._closed.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }, this, CancellationToken.None, TaskContinuationOptions.RunContinuationsAsynchronously, TaskScheduler.Default);
    }

    private async Task ReceiveAsync()
    {
        Exception? error = null;
        var writer = _input.Writer;
        try
        {
            while (true)
            {
                var memory = writer.GetMemory(MinimumReadSize);
                int n = await _connection.ReadAsync(memory).ConfigureAwait(false);
                if (n == 0)
                    break; // The peer's FIN: the input ends.
                writer.Advance(n);
                var flush = await writer.FlushAsync().ConfigureAwait(false);
                if (flush.IsCompleted || flush.IsCanceled)
                    break; // Kestrel stopped reading.
            }
        }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.ConnectionReset })
        {
            error = new ConnectionResetException(e.Message, e);
        }
        catch (IOException e)
        {
            error = Volatile.Read(ref _aborted) != 0 ? new ConnectionAbortedException("The connection was aborted.", e) : e;
        }
        catch (ObjectDisposedException e)
        {
            error = new ConnectionAbortedException("The connection was closed.", e);
        }
        finally
        {
            await writer.CompleteAsync(error).ConfigureAwait(false);
            // A connection that failed cannot send either: end the send loop.
            if (error is not null)
                _output.Reader.CancelPendingRead();
        }
    }

    private async Task SendAsync()
    {
        var reader = _output.Reader;
        bool finish = false;
        Exception? error = null;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync().ConfigureAwait(false);
                if (result.IsCanceled)
                    break;
                var buffer = result.Buffer;
                foreach (var segment in buffer)
                    await _connection.WriteAsync(segment).ConfigureAwait(false);
                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    finish = true; // Kestrel completed its output: our FIN follows the data.
                    break;
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            error = e;
        }
        finally
        {
            await reader.CompleteAsync(error).ConfigureAwait(false);
            if (finish && Volatile.Read(ref _aborted) == 0)
            {
                try
                {
                    _connection.ShutdownWrite();
                }
                catch (ObjectDisposedException)
                {
                }
            }
        }
    }

    /// <summary>Resets the connection (RST): Kestrel aborts on protocol errors and timeouts.</summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        if (Interlocked.Exchange(ref _aborted, 1) != 0)
            return;
        _connection.Abort();
        _output.Reader.CancelPendingRead();
        _input.Writer.CancelPendingFlush();
    }

    /// <summary>Ends both loops and closes the connection gracefully (FIN, bounded by TcpLinger).</summary>
    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await Transport.Input.CompleteAsync().ConfigureAwait(false);
        await Transport.Output.CompleteAsync().ConfigureAwait(false);
        // The send loop drains what is left and sends the FIN.
        await _sending.ConfigureAwait(false);
        // Disposing wakes a pending read (the receive loop then ends) and waits for our FIN's ACK.
        await _connection.DisposeAsync().ConfigureAwait(false);
        await _receiving.ConfigureAwait(false);
        _closed.Dispose();
    }
}
