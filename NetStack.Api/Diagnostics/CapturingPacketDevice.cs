using NetStack.Engine;

namespace NetStack.Diagnostics;

/// <summary>
/// An <see cref="IPacketDevice"/> decorator that records every packet the stack reads from and
/// writes to the device underneath in a <see cref="PcapWriter"/>, both directions in one file, the
/// bytes exactly as they cross the device.
/// </summary>
/// <remarks>
/// <see cref="NetworkStack"/> puts it outermost when <see cref="NetStackOptions.CapturePath"/> is
/// set, so the capture shows what the stack itself sees: a fault-injecting device underneath drops,
/// corrupts or delays packets before they are captured on the way in and after on the way out.
/// A packet is captured after the inner device has read it, and before it is handed to the inner
/// device for writing (so a write that fails is still in the file). An error writing the capture
/// (a full disk) surfaces as an exception from <see cref="TryRead"/> or <see cref="Write"/>, which
/// the stack counts as a device error.
/// </remarks>
public sealed class CapturingPacketDevice : IPacketDevice
{
    private readonly IPacketDevice _inner;
    private readonly PcapWriter _capture;
    private readonly bool _ownsCapture;

    /// <summary>Wraps <paramref name="inner"/>; the decorator owns it and disposes it.</summary>
    /// <param name="inner">The device that really moves the packets.</param>
    /// <param name="capture">Where the packets are recorded.</param>
    /// <param name="ownsCapture">True to dispose <paramref name="capture"/> (flushing it) after the inner device.</param>
    public CapturingPacketDevice(IPacketDevice inner, PcapWriter capture, bool ownsCapture = true)
    {
        ArgumentNullException.ThrowIfNull(inner);
        ArgumentNullException.ThrowIfNull(capture);
        _inner = inner;
        _capture = capture;
        _ownsCapture = ownsCapture;
    }

    /// <summary>The device underneath.</summary>
    public IPacketDevice Inner => _inner;

    /// <summary>The capture the packets go to.</summary>
    public PcapWriter Capture => _capture;

    /// <inheritdoc/>
    public int Mtu => _inner.Mtu;

    /// <inheritdoc/>
    public bool TryRead(Span<byte> buffer, int millisecondsTimeout, out int length)
    {
        if (!_inner.TryRead(buffer, millisecondsTimeout, out length))
            return false;
        _capture.Write(buffer[..length]);
        return true;
    }

    /// <inheritdoc/>
    public void Write(ReadOnlySpan<byte> packet)
    {
        _capture.Write(packet);
        _inner.Write(packet);
    }

    /// <inheritdoc/>
    public void Wake() => _inner.Wake();

    /// <summary>Disposes the inner device, then the capture when the decorator owns it (flushing the file).</summary>
    public void Dispose()
    {
        try
        {
            _inner.Dispose();
        }
        finally
        {
            if (_ownsCapture)
                _capture.Dispose();
        }
    }
}
