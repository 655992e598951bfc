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

    /// <inheritdoc/>
    public void Wake() => _device.Wake();

    /// <summary>Disposes the TUN device (a created interface disappears with it).</summary>
    public void Dispose() => _device.Dispose();
}
