using NetStack.Device;

namespace NetStack.Engine;

/// <summary>A thin <see cref="IPacketDevice"/> over a <see cref="TunDevice"/>; disposing it disposes the device.</summary>
public sealed class TunPacketDevice : IPacketDevice
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

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length) =>
        _device.TryRead(buffer, millisecondsTimeout, out length);

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet) => _device.Write(packet);

    /// <inheritdoc/>
    public void Wake() => _device.Wake();

    /// <summary>Disposes the TUN device (a created interface disappears with it).</summary>
    public void Dispose() => _device.Dispose();
}
