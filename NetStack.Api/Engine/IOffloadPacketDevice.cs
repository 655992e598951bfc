using System.Buffers;
using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack.Engine;

/// <summary>
/// A device that can carry offload metadata with each packet: a <see cref="VirtioNetHeader"/>
/// saying whether the transport checksum is partial or already verified, and whether the packet
/// is a TCP super-segment (read: one the kernel did not cut; written: one the kernel is to cut).
/// Optional: the engine looks for it and otherwise uses the plain <see cref="IPacketDevice"/>
/// calls. <see cref="TunPacketDevice"/> over a TUN device with a virtio-net header implements
/// it, and <see cref="Diagnostics.CapturingPacketDevice"/> passes it through.
/// </summary>
public interface IOffloadPacketDevice : IPacketDevice
{
    /// <summary>
    /// The offloads in force: what packets read may carry (partial checksums, super-segments).
    /// <see cref="TunOffloads.None"/> when none are; the engine then ignores this interface.
    /// </summary>
    TunOffloads Offloads { get; }

    /// <summary>
    /// <see cref="IPacketDevice.TryRead"/> that also returns the packet's header
    /// (<see cref="VirtioNetHeader.None"/> for an ordinary packet).
    /// </summary>
    /// <param name="buffer">Where the packet goes: 65535 + 64 bytes, since a super-segment is longer than the MTU.</param>
    /// <param name="millisecondsTimeout">How long to wait (0: only check; -1: no limit).</param>
    /// <param name="length">The packet's length, or 0 when none was read.</param>
    /// <param name="header">What the device says about the packet's checksum and segmentation.</param>
    bool TryReadWithHeader(Span<byte> buffer, int millisecondsTimeout, out int length, out VirtioNetHeader header);

    /// <summary>
    /// Writes one packet with its header: a super-segment (gso TCPV4/TCPV6, NEEDS_CSUM, the
    /// pseudo-header sum in the checksum field) or an ordinary packet (<see cref="VirtioNetHeader.None"/>).
    /// Safe from any thread.
    /// </summary>
    /// <param name="packet">An IPv4 or IPv6 packet, starting at its version nibble.</param>
    /// <param name="header">Its offload metadata.</param>
    void Write(ReadOnlySpan<byte> packet, in VirtioNetHeader header);

    /// <summary>
    /// <see cref="Write(ReadOnlySpan{byte}, in VirtioNetHeader)"/> for a packet given in three
    /// consecutive pieces (see <see cref="IPacketDevice.WriteGather"/>): with a partial checksum
    /// (NEEDS_CSUM) the payload is neither copied nor summed on the way out. This default joins
    /// the pieces in a pooled buffer. Safe from any thread.
    /// </summary>
    /// <param name="head">The packet's first bytes (IP and transport headers).</param>
    /// <param name="payload">The bytes that follow <paramref name="head"/>.</param>
    /// <param name="payloadTail">The bytes that follow <paramref name="payload"/>.</param>
    /// <param name="header">The packet's offload metadata.</param>
    void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, in VirtioNetHeader header)
    {
        int length = head.Length + payload.Length + payloadTail.Length;
        byte[] joined = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
        try
        {
            PacketPieces.Join(head, payload, payloadTail, joined);
            Write(joined.AsSpan(0, length), header);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(joined);
        }
    }
}
