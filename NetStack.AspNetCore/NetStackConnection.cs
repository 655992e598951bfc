using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace NetStack.AspNetCore;

/// <summary>
/// A NetStack <see cref="TcpConnection"/> as Kestrel sees it: a <see cref="ConnectionContext"/>
/// whose <see cref="Transport"/> is the connection's own duplex pipe (<see cref="TcpConnection.Input"/>,
/// <see cref="TcpConnection.Output"/>): Kestrel reads the receive ring and writes into the send
/// ring, with no pipe and no pump of the transport's own in between.
/// </summary>
/// <remarks>
/// Thin adapters give the pipe Kestrel's transport conventions (those of its socket transport): a
/// reset ends a read with a <see cref="ConnectionResetException"/>, an abort or a dispose with a
/// <see cref="ConnectionAbortedException"/>; a flush on a connection that failed returns
/// <see cref="FlushResult.IsCompleted"/> instead of throwing (Kestrel logs a throwing flush as an
/// unexpected error). Completing the output sends our FIN.
/// <see cref="Abort(ConnectionAbortedException)"/> resets the connection (RST).
/// <see cref="DisposeAsync"/> (Kestrel calls it when it is done with the connection) closes the
/// connection gracefully. <see cref="ConnectionClosed"/> fires when the connection failed, was
/// aborted or disposed, or once the peer's FIN came and Kestrel completed its output.
/// </remarks>
internal sealed class NetStackConnection : ConnectionContext,
    IConnectionIdFeature, IConnectionTransportFeature, IConnectionItemsFeature,
    IConnectionLifetimeFeature, IConnectionEndPointFeature
{
    private readonly TcpConnection _connection;
    private readonly CancellationTokenSource _closed = new();
    private readonly FeatureCollection _features = new();
    private IDictionary<object, object?>? _items;
    private int _aborted;
    private int _disposed;

    internal NetStackConnection(TcpConnection connection, string id)
    {
        _connection = connection;
        ConnectionId = id;
        LocalEndPoint = connection.LocalEndPoint;
        RemoteEndPoint = connection.RemoteEndPoint;
        ConnectionClosed = _closed.Token;
        Transport = new DuplexPipe(new TransportReader(connection.Input), new TransportWriter(connection.Output));
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

    /// <summary>Arms <see cref="ConnectionClosed"/>.</summary>
    internal void Start() => _connection.OnEnded(static state => ((NetStackConnection)state!).FireClosed(), this);

    private void FireClosed()
    {
        try
        {
            _closed.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Resets the connection (RST): Kestrel aborts on protocol errors and timeouts.</summary>
    public override void Abort(ConnectionAbortedException abortReason)
    {
        if (Interlocked.Exchange(ref _aborted, 1) != 0)
            return;
        // A pending read then ends with ConnectionAbortedException, a pending flush with IsCompleted.
        _connection.Abort();
    }

    /// <summary>Completes both halves and closes the connection gracefully (FIN, bounded by TcpLinger).</summary>
    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await Transport.Input.CompleteAsync().ConfigureAwait(false);
        // The written bytes go out, then our FIN.
        await Transport.Output.CompleteAsync().ConfigureAwait(false);
        // Waits (up to TcpLinger) for our FIN's ACK.
        await _connection.DisposeAsync().ConfigureAwait(false);
        _closed.Dispose();
    }

    // Kestrel's exception for a failed read, or null to let the original through.
    private static Exception? ForKestrel(Exception e) => e switch
    {
        IOException { InnerException: SocketException { SocketErrorCode: SocketError.ConnectionReset } } =>
            new ConnectionResetException(e.Message, e),
        IOException { InnerException: SocketException { SocketErrorCode: SocketError.OperationAborted } } =>
            new ConnectionAbortedException("The connection was aborted.", e),
        ObjectDisposedException => new ConnectionAbortedException("The connection was closed.", e),
        _ => null,
    };

    /// <summary>The connection's reader with Kestrel's exceptions; nothing is copied.</summary>
    private sealed class TransportReader(PipeReader inner) : PipeReader
    {
        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var read = inner.ReadAsync(cancellationToken);
            return read.IsCompletedSuccessfully ? read : Awaited(read);
        }

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        private static async ValueTask<ReadResult> Awaited(ValueTask<ReadResult> read)
        {
            try
            {
                return await read.ConfigureAwait(false);
            }
            catch (Exception e) when (ForKestrel(e) is { } translated)
            {
                throw translated;
            }
        }

        public override bool TryRead(out ReadResult result)
        {
            try
            {
                return inner.TryRead(out result);
            }
            catch (Exception e) when (ForKestrel(e) is { } translated)
            {
                throw translated;
            }
        }

        public override void AdvanceTo(SequencePosition consumed) => inner.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => inner.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);
    }

    /// <summary>The connection's writer; a failed connection completes the flush instead of throwing.</summary>
    private sealed class TransportWriter(PipeWriter inner) : PipeWriter
    {
        private static readonly FlushResult Over = new(isCanceled: false, isCompleted: true);

        public override Memory<byte> GetMemory(int sizeHint = 0) => inner.GetMemory(sizeHint);

        public override Span<byte> GetSpan(int sizeHint = 0) => inner.GetSpan(sizeHint);

        public override void Advance(int bytes) => inner.Advance(bytes);

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) =>
            Settled(inner.FlushAsync(cancellationToken));

        public override ValueTask<FlushResult> WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default) =>
            Settled(inner.WriteAsync(source, cancellationToken));

        private static ValueTask<FlushResult> Settled(ValueTask<FlushResult> flush) =>
            flush.IsCompletedSuccessfully ? flush : Awaited(flush);

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        private static async ValueTask<FlushResult> Awaited(ValueTask<FlushResult> flush)
        {
            try
            {
                return await flush.ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException)
            {
                return Over; // The connection is over: Kestrel stops writing.
            }
        }

        public override void CancelPendingFlush() => inner.CancelPendingFlush();

        public override bool CanGetUnflushedBytes => inner.CanGetUnflushedBytes;

        public override long UnflushedBytes => inner.UnflushedBytes;

        // Kestrel's output ends: our FIN follows the data, whatever the reason it gives.
        public override void Complete(Exception? exception = null) => inner.Complete();

        public override ValueTask CompleteAsync(Exception? exception = null) => inner.CompleteAsync();
    }
}
