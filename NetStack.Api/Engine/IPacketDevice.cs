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

    /// <summary>Ends the current (or next) <see cref="TryRead"/> wait early. Safe from any thread.</summary>
    void Wake();
}
