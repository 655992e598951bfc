using System.Buffers;

namespace NetStack.Engine;

/// <summary>
/// What the engine needs from a device: whole IP packets in and out, a wait that other threads can
/// cut short, and the link MTU. <see cref="NetStack.Device.TunDevice"/> is adapted to it by
/// <see cref="TunPacketDevice"/>; <see cref="MemoryPacketDevice"/> serves the unit tests.
/// </summary>
public interface IPacketDevice : IDisposable
{
    /// <summary>The link MTU: the largest packet the device carries, in bytes.</summary>
    int Mtu { get; }

    /// <summary>
    /// Reads one whole packet if one arrives within <paramref name="millisecondsTimeout"/>
    /// (0: only check; -1: no limit). Returns false when the time ran out or <see cref="Wake"/> was called.
    /// </summary>
    /// <param name="buffer">Where the packet goes (at least <see cref="Mtu"/> bytes).</param>
    /// <param name="millisecondsTimeout">How long to wait.</param>
    /// <param name="length">The packet's length, or 0 when none was read.</param>
    bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length);

    /// <summary>Writes one whole packet. Safe from any thread.</summary>
    /// <param name="packet">An IPv4 or IPv6 packet, starting at its version nibble.</param>
    void Write(ReadOnlySpan<byte> packet);

    /// <summary>
    /// Writes one whole packet given in three consecutive pieces, as if they were one span: the
    /// headers from a small buffer, then the payload straight from where it lives (a connection's
    /// send ring, which may wrap: hence two payload pieces, either of which may be empty). A
    /// device that can hand the pieces to the kernel as they are (writev(2), see
    /// <see cref="TunPacketDevice"/>) saves a copy of the payload; this default joins them in a
    /// pooled buffer and calls <see cref="Write(ReadOnlySpan{byte})"/>, so every device accepts it
    /// and sees the same bytes. Safe from any thread.
    /// </summary>
    /// <param name="head">The packet's first bytes (IP and transport headers).</param>
    /// <param name="payload">The bytes that follow <paramref name="head"/>.</param>
    /// <param name="payloadTail">The bytes that follow <paramref name="payload"/>.</param>
    void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail)
    {
        int length = head.Length + payload.Length + payloadTail.Length;
        byte[] joined = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
        try
        {
            PacketPieces.Join(head, payload, payloadTail, joined);
            Write(joined.AsSpan(0, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(joined);
        }
    }

    /// <summary>Ends the current (or next) <see cref="TryRead"/> wait early. Safe from any thread.</summary>
    void Wake();
}

/// <summary>Helpers for packets written in pieces.</summary>
internal static class PacketPieces
{
    /// <summary>Copies the three pieces of a gathered packet one after another into <paramref name="destination"/>.</summary>
    /// <param name="head">The first piece.</param>
    /// <param name="payload">The second piece.</param>
    /// <param name="payloadTail">The third piece.</param>
    /// <param name="destination">At least as long as the three together.</param>
    /// <returns>The packet's length.</returns>
    internal static int Join(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, Span<byte> destination)
    {
        head.CopyTo(destination);
        payload.CopyTo(destination[head.Length..]);
        payloadTail.CopyTo(destination[(head.Length + payload.Length)..]);
        return head.Length + payload.Length + payloadTail.Length;
    }
}
