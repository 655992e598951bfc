using NetStack.Core.Wire;
using NetStack.Device;

namespace NetStack.Engine;

/// <summary>
/// A thin <see cref="IPacketDevice"/> over a <see cref="TunDevice"/>; disposing it disposes the
/// device. Over a device with a virtio-net header it carries the offload metadata too
/// (<see cref="IOffloadPacketDevice"/>).
/// </summary>
public sealed class TunPacketDevice : IOffloadPacketDevice
{
    private readonly TunDevice _device;

    /// <summary>Adapts <paramref name="device"/>, reading its MTU once (the engine sizes its buffers by it).</summary>
    /// <param name="device">An open TUN device; the adapter takes ownership.</param>
    public TunPacketDevice(TunDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        _device = device;
        Mtu = device.Mtu;
    }

    /// <summary>The TUN device underneath.</summary>
    public TunDevice Device => _device;

    /// <inheritdoc/>
    public int Mtu { get; }

    /// <summary>The offloads set on the TUN device (<see cref="TunDevice.Offloads"/>).</summary>
    public TunOffloads Offloads => _device.Offloads;

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length) =>
        _device.TryRead(buffer, millisecondsTimeout, out length);

    /// <inheritdoc/>
    public bool TryReadWithHeader(Span<byte> buffer, int millisecondsTimeout, out int length, out VirtioNetHeader header) =>
        _device.TryReadWithHeader(buffer, millisecondsTimeout, out length, out header);

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet) => _device.Write(packet);

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet, in VirtioNetHeader header) => _device.Write(packet, header);

    /// <summary>Writes the pieces with one writev(2) (<see cref="TunDevice.WriteGather"/>): no copy of the payload here.</summary>
    /// <param name="head">The packet's first bytes.</param>
    /// <param name="payload">The bytes after them.</param>
    /// <param name="payloadTail">The bytes after those.</param>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail) =>
        _device.WriteGather(head, payload, payloadTail, VirtioNetHeader.None);

    /// <summary>Writes the pieces and their header with one writev(2) (<see cref="TunDevice.WriteGather"/>).</summary>
    /// <param name="head">The packet's first bytes.</param>
    /// <param name="payload">The bytes after them.</param>
    /// <param name="payloadTail">The bytes after those.</param>
    /// <param name="header">The packet's offload metadata.</param>
    public void WriteGather(ReadOnlySpan<byte> head, ReadOnlySpan<byte> payload, ReadOnlySpan<byte> payloadTail, in VirtioNetHeader header) =>
        _device.WriteGather(head, payload, payloadTail, header);

    /// <inheritdoc/>
    public void Wake() => _device.Wake();

    /// <summary>Disposes the TUN device (a created interface disappears with it).</summary>
    public void Dispose() => _device.Dispose();
}
